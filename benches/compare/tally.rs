//! Tally's side: a real cluster of `tally server` processes on 127.0.0.1 — a one-member etcd
//! (the harness of `tally-epochstore`, Debian's etcd) and three nodes that each run both roles
//! (sequencer and storage), as the three NATS servers each do everything — plus log creation
//! over one long-lived admin connection (the scale run creates 100,000 logs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tally_client::{Client, ClientConfig};
use tally_common::LogId;
use tally_common::meta::{Durability, LogAttributes};
use tally_common::transport::{ClientProtocol, Connector, TlsIdentity, TransportConfig};
use tally_common::wire::ErrorCode;
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_epochstore::harness::EtcdCluster;
use tokio::task::JoinSet;

use crate::procs::{self, Proc};

/// Nodes of the benchmark cluster (every one sequencer + storage).
pub const NODES: u32 = 3;
/// Copies of every record.
pub const REPLICATION: u8 = 3;
const CLUSTER: &str = "bench";
const START_LIMIT: Duration = Duration::from_secs(120);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Log creations in flight during the scale run.
const CREATE_IN_FLIGHT: usize = 64;

/// The running cluster. Dropping it kills the nodes, then etcd.
#[derive(Debug)]
pub struct TallyCluster {
    nodes: Vec<Proc>,
    /// Client seeds: every node's address.
    pub seeds: Vec<String>,
    /// Certificates (`ca.pem`, `client.pem`, `client.key`).
    pub certs: PathBuf,
    dir: PathBuf,
    etcd: EtcdCluster,
}

impl TallyCluster {
    /// Starts etcd and the nodes under `dir` (data, configs, certificates, node logs) with
    /// the `tally` binary at `tally`, and waits until every node sees every other.
    pub async fn start(tally: &Path, dir: &Path) -> anyhow::Result<TallyCluster> {
        std::fs::create_dir_all(dir)?;
        let etcd = EtcdCluster::start(1).await.context("start etcd")?;
        let certs = dir.join("certs");
        tally_common::transport::generate_cluster_certs(
            &certs,
            CLUSTER,
            &["127.0.0.1".to_owned()],
        )?;
        let mut cluster = TallyCluster {
            nodes: Vec::new(),
            seeds: Vec::new(),
            certs,
            dir: dir.to_owned(),
            etcd,
        };
        for id in 1..=NODES {
            let config = dir.join(format!("node{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "cluster = {CLUSTER:?}\nnode_id = {id}\nlisten = \"127.0.0.1:0\"\n\
                     data_dir = {:?}\ncerts_dir = {:?}\nroles = [\"sequencer\", \"storage\"]\n\n\
                     [epoch_store]\netcd = [{:?}]\n",
                    dir.join(format!("data{id}")),
                    cluster.certs,
                    cluster.etcd.client_url(0),
                ),
            )?;
            let mut command = Command::new(tally);
            for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TALLY_")) {
                command.env_remove(key);
            }
            command
                .args(["server", "--config"])
                .arg(&config)
                .env("NO_COLOR", "1");
            let mut node = Proc::spawn(
                &format!("tally node {id}"),
                command,
                &dir.join(format!("node{id}.log")),
            )?;
            let prefix = format!("tally server: node {id} ready on ");
            let line = node.wait_for_line(&prefix, START_LIMIT)?;
            let addr = line[prefix.len()..]
                .split_whitespace()
                .next()
                .context("ready line without an address")?
                .to_owned();
            cluster.seeds.push(addr);
            cluster.nodes.push(node);
        }
        cluster.wait_for_view().await?;
        Ok(cluster)
    }

    /// Waits until every node's cluster state lists every node (membership travels through
    /// etcd watches; nothing announces it, so the state is asked again every 20 ms).
    async fn wait_for_view(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        for seed in &self.seeds {
            let probe = Client::connect(ClientConfig::new(vec![seed.clone()], &self.certs))
                .await
                .with_context(|| format!("connect to {seed}"))?;
            while probe.cluster().nodes().len() < NODES as usize {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{seed} never saw {NODES} nodes"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                probe.refresh_cluster().await?;
            }
            probe.close().await;
        }
        Ok(())
    }

    /// Process ids of the nodes.
    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Proc::pid).collect()
    }

    /// Process ids of the nodes and etcd (what Tally's CPU is counted over).
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids = self.node_pids();
        pids.extend(self.etcd.pid(0));
        pids
    }

    /// Fails when a node has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.check_alive()?;
        }
        Ok(())
    }

    /// Bytes on disk under the nodes' data directories.
    pub fn data_bytes(&self) -> u64 {
        (1..=NODES)
            .map(|id| procs::dir_bytes(&self.dir.join(format!("data{id}"))))
            .sum()
    }

    /// A client of the cluster.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(ClientConfig::new(self.seeds.clone(), &self.certs))
            .await
            .context("connect a client to the Tally cluster")
    }

    /// Creates `logs` (R = 3, `durability`) over one admin connection, `CREATE_IN_FLIGHT` at
    /// a time; logs that exist already are accepted as they are.
    pub async fn create_logs(&self, logs: &[LogId], durability: Durability) -> anyhow::Result<()> {
        let identity = TlsIdentity::load(&self.certs, "client")?;
        let connector: Connector<ClientProtocol> =
            Connector::new(&identity, TransportConfig::default())?;
        let addrs: Vec<SocketAddr> = self
            .seeds
            .iter()
            .map(|s| s.parse().with_context(|| format!("node address {s}")))
            .collect::<anyhow::Result<_>>()?;
        let attributes = LogAttributes {
            replication: REPLICATION,
            durability,
            ..LogAttributes::default()
        };
        let connector = Arc::new(connector);
        let mut tasks = JoinSet::new();
        for (i, &log) in logs.iter().enumerate() {
            if tasks.len() >= CREATE_IN_FLIGHT {
                tasks.join_next().await.context("create task")???;
            }
            let (connector, attributes) = (connector.clone(), attributes.clone());
            let addr = addrs[i % addrs.len()];
            tasks.spawn(async move {
                let req = ClientRequest::CreateLog { log, attributes };
                match connector.call(addr, &req, ADMIN_TIMEOUT).await {
                    Ok(ClientResponse::LogCreated) => Ok(()),
                    Ok(ClientResponse::Error(e)) if e.code == ErrorCode::AlreadyExists => Ok(()),
                    Ok(other) => anyhow::bail!("create log {log}: {other:?}"),
                    Err(e) => anyhow::bail!("create log {log}: {e}"),
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.context("create task")??;
        }
        connector.close().await;
        Ok(())
    }

    /// Stops the nodes (SIGTERM, a few seconds' grace), then etcd; the caller deletes `dir`.
    pub fn stop(mut self) {
        for n in self.nodes.drain(..) {
            n.stop(Duration::from_secs(10));
        }
    }
}
