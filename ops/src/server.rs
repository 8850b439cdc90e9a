//! `tally server`: one node of a real cluster (DESIGN §11). [`ServerArgs`] are the flags that
//! override the config file and `TALLY_*` variables; [`run`] opens the epoch store the config
//! names (etcd, or a file store for a single-node cluster), starts the node's roles behind one
//! endpoint, registers it, and runs until `shutdown` (SIGINT / SIGTERM in `main`), then drains
//! the endpoint, stops the roles and revokes the membership lease.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tally_epochstore::{EpochStore, EtcdConfig, EtcdStore, FileEpochStore};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, NodeConfig, Overrides, list, parse_roles};
use crate::node;

/// `tally server` flags: each overrides the config file and the environment.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// TOML config file (see ops/examples/tally.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Roles to run, comma-separated: sequencer, storage.
    #[arg(long)]
    pub roles: Option<String>,
    /// etcd endpoints, comma-separated (http://host:2379).
    #[arg(long)]
    pub etcd: Option<String>,
    /// A file epoch store directory instead of etcd (single-node clusters only).
    #[arg(long)]
    pub epoch_store_dir: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// UDP address of the node's endpoint.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address registered for others to reach this node.
    #[arg(long)]
    pub advertise: Option<String>,
    /// TCP address of the admin HTTP port (metrics, health, status page): ip:port, `auto`
    /// (listen port + 1000) or `disabled`.
    #[arg(long)]
    pub admin_listen: Option<String>,
    #[arg(long)]
    pub node_id: Option<u32>,
    #[arg(long)]
    pub cluster: Option<String>,
    /// Directory with ca.pem, node.pem and node.key.
    #[arg(long)]
    pub certs_dir: Option<PathBuf>,
    #[arg(long)]
    pub location: Option<String>,
    #[arg(long)]
    pub weight: Option<u32>,
}

impl ServerArgs {
    /// The flags as overrides; a bad `--roles` names the flag.
    pub fn overrides(&self) -> Result<Overrides, ConfigError> {
        let roles = match &self.roles {
            Some(r) => Some(parse_roles(r).map_err(|reason| ConfigError {
                field: "--roles".to_owned(),
                reason,
            })?),
            None => None,
        };
        Ok(Overrides {
            cluster: self.cluster.clone(),
            node_id: self.node_id,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            admin_listen: self.admin_listen.clone(),
            data_dir: self.data_dir.clone(),
            roles,
            etcd: self.etcd.as_deref().map(list),
            epoch_store_dir: self.epoch_store_dir.clone(),
            certs_dir: self.certs_dir.clone(),
            location: self.location.clone(),
            weight: self.weight,
        })
    }
}

/// Loads the layered configuration (file → `TALLY_*` → flags).
pub fn load_config(args: &ServerArgs) -> anyhow::Result<NodeConfig> {
    let env = Overrides::from_env(|k| std::env::var(k).ok())?;
    let flags = args.overrides()?;
    Ok(NodeConfig::load(args.config.as_deref(), &env, &flags)?)
}

/// What `tally server` needs from outside: the epoch store.
#[derive(Debug, Clone)]
pub struct ServerDeps {
    pub store: Arc<dyn EpochStore>,
}

/// Opens the epoch store `config` names.
pub async fn open_store(config: &NodeConfig) -> anyhow::Result<ServerDeps> {
    let es = &config.epoch_store;
    let store: Arc<dyn EpochStore> = match &es.file {
        Some(dir) => {
            let mut store = FileEpochStore::open(dir)
                .with_context(|| format!("cannot open the epoch store in {}", dir.display()))?;
            if let Some(t) = es.call_timeout {
                store = store.with_call_timeout(t);
            }
            Arc::new(store)
        }
        None => {
            let mut etcd = EtcdConfig::new(es.etcd.clone(), config.cluster.clone());
            if let Some(t) = es.call_timeout {
                etcd.call_timeout = t;
            }
            Arc::new(
                EtcdStore::connect(etcd)
                    .await
                    .with_context(|| format!("cannot connect to etcd at {}", es.etcd.join(",")))?,
            )
        }
    };
    Ok(ServerDeps { store })
}

/// Runs one node until `shutdown` is cancelled, then stops it gracefully. `ready` is called
/// with the started node (its bound address) once it is registered.
pub async fn run(
    config: NodeConfig,
    deps: ServerDeps,
    shutdown: CancellationToken,
    ready: impl FnOnce(&node::RunningNode),
) -> anyhow::Result<()> {
    let spec = config.spec()?;
    let running = node::start(spec, deps.store, shutdown.clone()).await?;
    // Requests are placed on the membership view: answer them once it holds this node.
    node::wait_for_members(&running, &[running.id]).await;
    ready(&running);
    shutdown.cancelled().await;
    running.shutdown().await
}

/// `tally server`: loads the layered config, runs the node until SIGINT / SIGTERM and prints
/// a line when it is ready (`tally server: node N ready on ADDR …`) and when it stopped.
pub fn main(args: ServerArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let deps = open_store(&config).await?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::signals::wait_for_stop().await {
                eprintln!("tally server: {e:#}");
            }
            stop.cancel();
        });
        let id = config.node_id;
        run(config, deps, shutdown, |node| {
            let roles = node.info.roles;
            let roles = match (roles.sequencer, roles.storage) {
                (true, true) => "sequencer,storage",
                (true, false) => "sequencer",
                _ => "storage",
            };
            println!(
                "tally server: node {id} ready on {} (roles {roles}, advertised as {})",
                node.addr, node.info.address
            );
            if let Some(admin) = node.admin_addr {
                println!("tally server: node {id} status page http://{admin}/ (metrics: /metrics)");
            }
        })
        .await?;
        println!("tally server: node {id} stopped");
        Ok(())
    })
}
