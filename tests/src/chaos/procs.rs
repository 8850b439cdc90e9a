//! The chaos run's processes: a 3-member etcd ([`EtcdCluster`]) and Tally nodes, each its own
//! OS process — the chaos binary re-executed as `chaos node --config FILE`, which runs exactly
//! what `tally server` runs (`tally::server::main`) — or any binary given as `exe`. Nodes keep their UDP port across restarts
//! (so the nemesis can name links), log to `<dir>/node<id>.log`, and read their network cuts
//! from `<dir>/faults/<id>` (see `common/src/transport/endpoint.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tally_common::NodeId;
use tally_common::transport::FAULTS_FILE_ENV;
use tally_epochstore::harness::EtcdCluster;
use tokio::time::Instant;

/// How long a node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A node's role in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Storage,
    Sequencer,
}

/// A Tally node process (running, stopped or paused).
#[derive(Debug)]
pub struct NodeProc {
    pub id: NodeId,
    pub role: Role,
    pub addr: SocketAddr,
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
    faults: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (`STOP`, `CONT`) with the `kill` command (the workspace
    /// denies `unsafe`, so no direct syscall).
    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("not running")?;
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.paused {
            let _ = self.signal("CONT");
            self.paused = false;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, frozen (its peers see a silent node).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`NodeProc::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.paused {
            self.signal("CONT")?;
            self.paused = false;
        }
        Ok(())
    }

    /// Starts the process and waits for its ready line.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "node {} already runs", self.id);
        let log = File::options().create(true).append(true).open(&self.log)?;
        let offset = log.metadata()?.len();
        let child = Command::new(&self.exe)
            .arg("node")
            .arg("--config")
            .arg(&self.config)
            .env(FAULTS_FILE_ENV, &self.faults)
            .env(
                "RUST_LOG",
                std::env::var("TALLY_CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn a node")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let fresh = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]);
            if fresh.contains(" ready on ") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                anyhow::bail!(
                    "node {} exited with {status} while starting:\n{}",
                    self.id,
                    tail(&fresh, 20)
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} not ready within {READY_TIMEOUT:?}:\n{}",
                self.id,
                tail(&fresh, 20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces the set of addresses this node must not send to.
    pub fn set_cuts(&self, blocked: &[SocketAddr]) -> anyhow::Result<()> {
        let text: String = blocked.iter().map(|a| format!("{a}\n")).collect();
        let tmp = self.faults.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.faults)?;
        Ok(())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free UDP port on loopback (bound and released: the node binds it right after).
fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Extra lines for every node's config (negative controls, small timeouts).
#[derive(Clone, Debug, Default)]
pub struct NodeExtras {
    /// Appended verbatim to the `[storage]` section of storage nodes.
    pub storage_section: String,
}

/// Every process of the run.
#[derive(Debug)]
pub struct Procs {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub etcd: EtcdCluster,
    pub nodes: BTreeMap<NodeId, NodeProc>,
}

/// The cluster name of chaos runs.
pub const CLUSTER: &str = "chaos";

impl Procs {
    /// Starts a 3-member etcd, then `storage` storage nodes (ids 1..) and `sequencers`
    /// sequencer nodes (ids 101..).
    pub async fn start(
        dir: &Path,
        exe: &Path,
        storage: u32,
        sequencers: u32,
        extras: &NodeExtras,
    ) -> anyhow::Result<Procs> {
        std::fs::create_dir_all(dir.join("faults"))?;
        let certs = dir.join("certs");
        tally_common::transport::generate_cluster_certs(
            &certs,
            CLUSTER,
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
        )?;
        let etcd = EtcdCluster::start(3).await.context("start etcd")?;
        let mut procs = Procs {
            dir: dir.to_owned(),
            certs,
            etcd,
            nodes: BTreeMap::new(),
        };
        let ids = (1..=storage)
            .map(|i| (i, Role::Storage))
            .chain((101..101 + sequencers).map(|i| (i, Role::Sequencer)));
        for (id, role) in ids {
            let node = procs.make_node(exe, NodeId(id), role, extras)?;
            procs.nodes.insert(NodeId(id), node);
        }
        for node in procs.nodes.values_mut() {
            node.start().await?;
        }
        Ok(procs)
    }

    fn make_node(
        &self,
        exe: &Path,
        id: NodeId,
        role: Role,
        extras: &NodeExtras,
    ) -> anyhow::Result<NodeProc> {
        let port = free_udp_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = self.dir.join(format!("node{}.toml", id.0));
        let roles = match role {
            Role::Storage => "storage",
            Role::Sequencer => "sequencer",
        };
        let etcd: Vec<String> = self
            .etcd
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let mut text = format!(
            "cluster = {CLUSTER:?}\nnode_id = {}\nlisten = \"{addr}\"\ndata_dir = {:?}\n\
             certs_dir = {:?}\nroles = [{roles:?}]\n\n[epoch_store]\netcd = [{}]\n",
            id.0,
            self.dir.join(format!("data{}", id.0)),
            self.certs,
            etcd.join(", "),
        );
        if role == Role::Storage && !extras.storage_section.is_empty() {
            text.push_str(&format!("\n[storage]\n{}\n", extras.storage_section));
        }
        std::fs::write(&config, text)?;
        Ok(NodeProc {
            id,
            role,
            addr,
            exe: exe.to_owned(),
            config,
            log: self.dir.join(format!("node{}.log", id.0)),
            faults: self.dir.join(format!("faults/{}", id.0)),
            child: None,
            paused: false,
        })
    }

    pub fn ids(&self, role: Role) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.role == role)
            .map(|n| n.id)
            .collect()
    }

    /// Every node's address: client seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.to_string()).collect()
    }

    pub fn node(&mut self, id: NodeId) -> &mut NodeProc {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// Cuts the links between `a` and `b` in both directions.
    pub fn cut(&self, a: NodeId, b: &[NodeId]) -> anyhow::Result<()> {
        let addr = |id: &NodeId| self.nodes[id].addr;
        let b_addrs: Vec<SocketAddr> = b.iter().map(addr).collect();
        self.nodes[&a].set_cuts(&b_addrs)?;
        for id in b {
            self.nodes[id].set_cuts(&[addr(&a)])?;
        }
        Ok(())
    }

    /// Heals every cut.
    pub fn heal_cuts(&self) -> anyhow::Result<()> {
        for node in self.nodes.values() {
            node.set_cuts(&[])?;
        }
        Ok(())
    }

    /// Brings everything back: resumes paused nodes, restarts dead ones and etcd members,
    /// heals cuts.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_cuts()?;
        for i in 0..self.etcd.size() {
            if !self.etcd.is_running(i) {
                self.etcd.restart(i).await?;
            }
        }
        for node in self.nodes.values_mut() {
            node.resume()?;
            if !node.is_running() {
                node.start().await?;
            }
        }
        Ok(())
    }
}
