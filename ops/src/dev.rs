//! `tally dev`: a whole cluster in one process on loopback, the zero-setup main job (DESIGN
//! §11). One [`FileEpochStore`] shared by every node (its membership lives in this process),
//! one sequencer node and N storage nodes, certificates generated on first run, the default
//! logs created if missing, then it prints how to connect and runs until Ctrl-C / SIGTERM.
//!
//! Directory layout (`--dir`, default `$TALLY_DEV_DIR` or `./.tally-dev`):
//!
//! ```text
//! certs/          cluster CA, node and client certificates (cluster "dev")
//! epochstore/     the file epoch store (one JSON file per log)
//! nodes/<id>/     LogsDB of storage node <id>
//! ```
//!
//! Ports (UDP, 127.0.0.1): the sequencer node (id 1) on `--base-port` (default 4500, the
//! CLI's default seed), storage node `i` (id `i + 1`) on `base + i`. `--base-port 0` gives
//! every node an ephemeral port (tests run several at once); the seed is printed. Each node
//! also has an admin HTTP port (TCP; status page, `/metrics`, `/health`, `/ready`):
//! `--admin-base-port` (default base + 1000, so 5500 is the sequencer's status page) + the
//! same offsets, ephemeral with `--base-port 0`; the URLs are printed. A restart
//! on the same directory reuses data, certificates and logs; appends continue in a new epoch.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tally_common::meta::{LogAttributes, Roles};
use tally_common::transport::{TransportConfig, generate_cluster_certs};
use tally_common::{LogId, NodeId};
use tally_epochstore::{EpochStore, FileEpochStore};
use tally_sequencer::runtime::SequencerConfig;
use tally_storage_node::logsdb::LogsDbConfig;
use tally_storage_node::server::StorageConfig;
use tokio_util::sync::CancellationToken;

use crate::node::{self, AdminListen, NodeSpec};

/// The cluster name of every dev cluster (checked against each node's data directory).
pub const DEV_CLUSTER: &str = "dev";
/// The sequencer node's port, the CLI's default seed.
pub const DEFAULT_BASE_PORT: u16 = 4500;
/// The CLI's default seed: the dev sequencer node on the default port.
pub const DEFAULT_SEED: &str = "127.0.0.1:4500";
/// The dev directory when neither `--dir` nor `$TALLY_DEV_DIR` is given.
pub const DEFAULT_DEV_DIR: &str = ".tally-dev";

/// `tally dev` arguments.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory for data, certificates and the epoch store.
    #[arg(long, env = "TALLY_DEV_DIR", default_value = DEFAULT_DEV_DIR)]
    pub dir: PathBuf,
    /// Storage nodes to run (besides the one sequencer node).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub storage_nodes: u32,
    /// Replication factor of the default logs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub replication: u8,
    /// The default logs, created if missing: `A..=B`, `A..B` or `A`.
    #[arg(long, default_value = "1..=16", value_parser = parse_log_range)]
    pub logs: RangeInclusive<u64>,
    /// UDP port of the sequencer node; storage nodes take the next ones. 0: ephemeral ports.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    pub base_port: u16,
    /// TCP port of the sequencer node's admin HTTP port (status page, /metrics); storage
    /// nodes take the next ones [default: --base-port + 1000, or an ephemeral port where that
    /// is taken; ephemeral with --base-port 0].
    #[arg(long)]
    pub admin_base_port: Option<u16>,
}

/// Parses `A..=B`, `A..B` or `A` into an inclusive range of user log ids.
pub fn parse_log_range(s: &str) -> Result<RangeInclusive<u64>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<LogId>()
            .map(|l| l.0)
            .map_err(|_| format!("{t:?} is not a user log id (1 ..= 2^62-1)"))
    };
    let range = if let Some((a, b)) = s.split_once("..=") {
        num(a)?..=num(b)?
    } else if let Some((a, b)) = s.split_once("..") {
        let end = num(b)?;
        if end <= 1 {
            return Err(format!("{s:?} is an empty range"));
        }
        num(a)?..=end - 1
    } else {
        let one = num(s)?;
        one..=one
    };
    if range.is_empty() {
        return Err(format!("{s:?} is an empty range"));
    }
    if range.end() - range.start() >= 100_000 {
        return Err(format!("{s:?} names more than 100000 logs"));
    }
    Ok(range)
}

fn port(base: u16, offset: u32) -> anyhow::Result<u16> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(u32::from(base) + offset)
        .with_context(|| format!("--base-port {base}: port {base} + {offset} is above 65535"))
}

/// Dev-sized LogsDB buffers: several nodes share one machine.
fn dev_logsdb() -> LogsDbConfig {
    LogsDbConfig {
        memtable_bytes: 8 << 20,
        total_memtable_bytes: 64 << 20,
        max_wal_bytes: 256 << 20,
        block_cache_bytes: 32 << 20,
        ..LogsDbConfig::default()
    }
}

/// The spec of dev node `id` with its data in `dir/nodes/<id>` and certificates in
/// `dir/certs` (also used by `tally bench write` for its in-process cluster).
pub fn node_spec(dir: &Path, id: u32, roles: Roles, listen: SocketAddr) -> NodeSpec {
    let mut storage = StorageConfig::new(NodeId(id), DEV_CLUSTER, dir.join(format!("nodes/{id}")));
    storage.logsdb = dev_logsdb();
    NodeSpec {
        id: NodeId(id),
        roles,
        listen,
        advertise: None,
        certs_dir: dir.join("certs"),
        transport: TransportConfig::default(),
        storage,
        sequencer: SequencerConfig::new(NodeId(id)),
        lease_ttl: Duration::from_secs(10),
        admin: None,
    }
}

/// Generates the dev cluster's certificates unless they exist.
pub fn ensure_certs(certs: &Path) -> anyhow::Result<()> {
    if certs.join("ca.pem").exists() {
        for file in ["node.pem", "node.key", "client.pem", "client.key"] {
            anyhow::ensure!(
                certs.join(file).exists(),
                "{} has a CA but no {file}; delete the directory to start afresh",
                certs.display()
            );
        }
        return Ok(());
    }
    generate_cluster_certs(
        certs,
        DEV_CLUSTER,
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
    )
    .with_context(|| format!("cannot create certificates in {}", certs.display()))
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        u32::from(args.replication) <= args.storage_nodes,
        "--replication {} needs at least that many storage nodes (--storage-nodes {})",
        args.replication,
        args.storage_nodes
    );
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let certs = dir.join("certs");
    ensure_certs(&certs)?;
    let store: Arc<dyn EpochStore> = Arc::new(
        FileEpochStore::open(dir.join("epochstore")).with_context(|| {
            format!(
                "cannot open the epoch store in {} (is another `tally dev` running on it?)",
                dir.display()
            )
        })?,
    );

    let shutdown = CancellationToken::new();
    let loopback = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    // Named admin ports are strict; the default ones fall back to ephemeral ports if taken.
    let (admin_base, fallback) = match args.admin_base_port {
        Some(p) => (p, false),
        None if args.base_port == 0 => (0, true),
        None => (
            args.base_port
                .checked_add(crate::config::ADMIN_PORT_OFFSET)
                .unwrap_or(0),
            true,
        ),
    };
    let spec = |id: u32, roles: Roles, listen: SocketAddr| -> anyhow::Result<NodeSpec> {
        let mut spec = node_spec(&dir, id, roles, listen);
        // Node id 1 (the sequencer) takes the base port, storage node `i` (id `i + 1`) base + i.
        spec.admin = Some(AdminListen {
            addr: loopback(port(admin_base, id - 1)?),
            fallback,
        });
        Ok(spec)
    };

    // Start-up on stderr (only on a terminal): nodes, then logs, then the membership views.
    let steps = u64::from(args.storage_nodes) + 3;
    let progress = crate::cli::progress::Progress::bar(steps, "tally dev: starting", "steps");
    let mut nodes = Vec::new();
    let started = async {
        for i in 1..=args.storage_nodes {
            progress.set_message(format!("storage node {}", i + 1));
            let roles = Roles {
                sequencer: false,
                storage: true,
            };
            let listen = loopback(port(args.base_port, i)?);
            nodes.push(
                node::start(spec(i + 1, roles, listen)?, store.clone(), shutdown.clone()).await?,
            );
            progress.inc(1);
        }
        let roles = Roles {
            sequencer: true,
            storage: false,
        };
        let listen = loopback(port(args.base_port, 0)?);
        progress.set_message("sequencer node 1");
        nodes.push(node::start(spec(1, roles, listen)?, store.clone(), shutdown.clone()).await?);
        progress.inc(1);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = started {
        progress.finish();
        stop(nodes).await;
        return Err(e);
    }
    let seed = nodes.last().expect("the sequencer node").addr;

    let created = match create_logs(&*store, args.logs.clone(), args.replication).await {
        Ok(n) => n,
        Err(e) => {
            progress.finish();
            stop(nodes).await;
            return Err(e);
        }
    };
    progress.inc(1);
    progress.set_message("membership");
    // Every node's view must hold the whole cluster before a client may ask any of them.
    let members: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    for node in &nodes {
        node::wait_for_members(node, &members).await;
    }
    progress.inc(1);
    progress.finish();

    println!(
        "tally dev: ready: 1 sequencer + {} storage nodes on 127.0.0.1 (cluster {DEV_CLUSTER:?})",
        args.storage_nodes
    );
    println!("  seed:  {seed}");
    if let Some(admin) = nodes.last().and_then(|n| n.admin_addr) {
        println!("  status page: http://{admin}/   (metrics: http://{admin}/metrics)");
    }
    println!("  certs: {}", certs.display());
    println!("  data:  {}", dir.display());
    println!(
        "  logs:  {}..={} (replication {}; {created} created now)",
        args.logs.start(),
        args.logs.end(),
        args.replication
    );
    for node in &nodes {
        let role = if node.info.roles.sequencer {
            "sequencer"
        } else {
            "storage"
        };
        match node.admin_addr {
            Some(admin) => println!(
                "  node {} ({role}): {}  admin http://{admin}/",
                node.id.0, node.addr
            ),
            None => println!("  node {} ({role}): {}", node.id.0, node.addr),
        }
    }
    // The commands need flags only when the CLI's defaults do not lead here.
    let default_certs = default_certs_dir().canonicalize().ok();
    let flags = if seed == loopback(DEFAULT_BASE_PORT) && default_certs.as_ref() == Some(&certs) {
        String::new()
    } else {
        format!(" --seed {seed} --certs {}", certs.display())
    };
    println!("From another shell:");
    println!("  tally append{flags} --log 1 hello");
    println!("  tally append{flags} --log 1 < lines.txt        # one record per line");
    println!("  tally log create{flags} --log 100 --replication 2");
    println!("  tally log show{flags} --log 1");
    println!("  tally status{flags}");
    println!("  (from the source tree: cargo run -p tally -- append{flags} --log 1 hello)");
    println!(
        "Ctrl-C stops the cluster; running it again on {} keeps its data.",
        dir.display()
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;

    crate::signals::wait_for_stop().await?;
    println!("tally dev: stopping");
    shutdown.cancel();
    let ok = stop(nodes).await;
    anyhow::ensure!(ok, "some nodes did not stop cleanly (see the log above)");
    println!("tally dev: stopped");
    Ok(())
}

/// Where the CLI looks for certificates by default: `$TALLY_DEV_DIR/certs`, else
/// `./.tally-dev/certs`.
pub fn default_certs_dir() -> PathBuf {
    std::env::var_os("TALLY_DEV_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_DEV_DIR), PathBuf::from)
        .join("certs")
}

/// Creates the logs of `range` that do not exist yet; returns how many it created.
async fn create_logs(
    store: &dyn EpochStore,
    range: RangeInclusive<u64>,
    replication: u8,
) -> anyhow::Result<usize> {
    let existing = store.list_logs().await.context("cannot list logs")?;
    let attributes = LogAttributes {
        replication,
        ..LogAttributes::default()
    };
    let mut created = 0;
    for id in range {
        let log = LogId(id);
        if existing.contains_key(&log) {
            continue;
        }
        store
            .create_log(log, attributes.clone())
            .await
            .with_context(|| format!("cannot create log {log}"))?;
        created += 1;
    }
    Ok(created)
}

/// Stops nodes, sequencer first (it stops granting before the storage nodes go away).
/// Returns whether every node stopped cleanly.
pub(crate) async fn stop(mut nodes: Vec<node::RunningNode>) -> bool {
    let mut ok = true;
    while let Some(node) = nodes.pop() {
        let id = node.id;
        if let Err(e) = node.shutdown().await {
            eprintln!("tally dev: node {id}: {e:#}");
            ok = false;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ranges_parse() {
        assert_eq!(parse_log_range("1..=16").unwrap(), 1..=16);
        assert_eq!(parse_log_range("1..17").unwrap(), 1..=16);
        assert_eq!(parse_log_range("7").unwrap(), 7..=7);
        assert!(parse_log_range("0..=3").is_err());
        assert!(parse_log_range("5..=3").is_err());
        assert!(parse_log_range("x").is_err());
    }
}
