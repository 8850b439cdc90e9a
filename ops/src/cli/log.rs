//! `tally log create|show|list|update`: admin calls through a node
//! (`ClientRequest::CreateLog` to a sequencer node found through the cluster state,
//! `GetLogMetadata` to any node, `ListLogs` and `UpdateLog` to a storage node through the
//! client). `tally log trim` is `tally trim` (`super::read`).
//!
//! `log update` changes only the attributes given as flags (the others keep their values),
//! validates the result before sending it, and writes it through the epoch store's
//! compare-and-swap update path. Attributes apply from the log's next activation: the
//! running epoch keeps the node set and replication it was activated with.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tally_common::LogId;
use tally_common::meta::{Durability, LogAttributes, LogMetadata};
use tally_common::transport::{ClientProtocol, Connector, TlsIdentity, TransportConfig, resolve};
use tally_common::wire::client::{ClientRequest, ClientResponse};

use super::ConnectArgs;
use crate::config::parse_duration;

/// Durability modes as flags.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledge after fsync (group commit).
    Durable,
    /// Acknowledge before fsync.
    Fast,
}

/// `tally log create` arguments.
#[derive(Debug, clap::Args)]
pub struct LogCreateArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub log: LogId,
    /// Copies of every record (R).
    #[arg(long, default_value_t = LogAttributes::default().replication)]
    pub replication: u8,
    /// Storage nodes in the log's node set (0: every storage node).
    #[arg(long, default_value_t = LogAttributes::default().node_set_size)]
    pub node_set_size: u8,
    #[arg(long, value_enum, default_value = "durable")]
    pub durability: DurabilityArg,
    /// The sequencer's window: LSNs granted but not yet completed.
    #[arg(long, default_value_t = LogAttributes::default().max_in_flight)]
    pub window: u32,
    /// Time-based retention, e.g. `7d`, `12h`, `90m` (0: keep until trimmed).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub backlog: Duration,
}

/// `tally log show` arguments.
#[derive(Debug, clap::Args)]
pub struct LogShowArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub log: LogId,
    /// Print the metadata as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tally log list` arguments.
#[derive(Debug, clap::Args)]
pub struct LogListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print a JSON array of `{"log": N, "metadata": {…}}` (the metadata as `log show --json`).
    #[arg(long)]
    pub json: bool,
}

/// `tally log update` arguments: only the attributes given change.
#[derive(Debug, clap::Args)]
pub struct LogUpdateArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub log: LogId,
    /// Copies of every record (R).
    #[arg(long)]
    pub replication: Option<u8>,
    /// Storage nodes in the log's node set (0: every storage node).
    #[arg(long)]
    pub node_set_size: Option<u8>,
    #[arg(long, value_enum)]
    pub durability: Option<DurabilityArg>,
    /// The sequencer's window: LSNs granted but not yet completed.
    #[arg(long)]
    pub window: Option<u32>,
    /// Time-based retention, e.g. `7d`, `12h`, `90m` (0: keep until trimmed).
    #[arg(long, value_parser = parse_duration)]
    pub backlog: Option<Duration>,
    /// Print the metadata as JSON.
    #[arg(long)]
    pub json: bool,
}

impl LogUpdateArgs {
    /// `current` with the given flags applied; an error names a flag-less call.
    pub fn apply(&self, current: &LogAttributes) -> anyhow::Result<LogAttributes> {
        let mut a = current.clone();
        let mut changed = false;
        if let Some(r) = self.replication {
            a.replication = r;
            changed = true;
        }
        if let Some(n) = self.node_set_size {
            a.node_set_size = n;
            changed = true;
        }
        if let Some(d) = self.durability {
            a.durability = match d {
                DurabilityArg::Durable => Durability::Durable,
                DurabilityArg::Fast => Durability::Fast,
            };
            changed = true;
        }
        if let Some(w) = self.window {
            a.max_in_flight = w;
            changed = true;
        }
        if let Some(b) = self.backlog {
            a.backlog_secs = b.as_secs();
            changed = true;
        }
        if !changed {
            bail!(
                "nothing to update: give --replication, --node-set-size, --durability,                  --window or --backlog"
            );
        }
        a.validate()
            .with_context(|| format!("log {}: invalid attributes", self.log))?;
        Ok(a)
    }
}

/// Deadline of one admin call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A connector for admin calls and the seed addresses.
async fn admin(
    seeds: &[String],
    certs: &Path,
) -> anyhow::Result<(Connector<ClientProtocol>, Vec<SocketAddr>)> {
    let identity = TlsIdentity::load(certs, "client").with_context(|| {
        format!(
            "cannot load the client certificate from {} (see --certs)",
            certs.display()
        )
    })?;
    let connector = Connector::new(&identity, TransportConfig::default())?;
    let mut addrs = Vec::new();
    for seed in seeds {
        addrs.push(
            resolve(seed, ADMIN_TIMEOUT)
                .await
                .with_context(|| format!("seed {seed:?} is not a host:port that resolves"))?,
        );
    }
    anyhow::ensure!(!addrs.is_empty(), "no seed address (see --seed)");
    Ok((connector, addrs))
}

fn remote(resp: ClientResponse, what: &str) -> anyhow::Error {
    match resp {
        ClientResponse::Error(e) => anyhow::anyhow!("{what}: {:?}: {}", e.code, e.message),
        other => anyhow::anyhow!("{what}: unexpected answer {other:?}"),
    }
}

/// Sends `req` to the first node that answers; `sequencer_only` asks only sequencer nodes
/// (found through the cluster state of the seeds).
pub(crate) async fn call_cluster(
    seeds: &[String],
    certs: &Path,
    req: &ClientRequest,
    sequencer_only: bool,
) -> anyhow::Result<ClientResponse> {
    let (connector, seeds) = admin(seeds, certs).await?;
    let mut targets = seeds.clone();
    let mut errors = Vec::new();
    if sequencer_only {
        targets.clear();
        for seed in &seeds {
            match connector
                .call(*seed, &ClientRequest::GetClusterState, ADMIN_TIMEOUT)
                .await
            {
                Ok(ClientResponse::ClusterState { nodes, .. }) => {
                    for node in nodes.iter().filter(|n| n.roles.sequencer) {
                        if let Some(addr) = resolve(&node.address, ADMIN_TIMEOUT).await {
                            targets.push(addr);
                        }
                    }
                    break;
                }
                Ok(other) => errors.push(format!("{seed}: {}", remote(other, "cluster state"))),
                Err(e) => errors.push(format!("{seed}: {e}")),
            }
        }
        if targets.is_empty() && errors.is_empty() {
            errors.push("the cluster has no sequencer node".into());
        }
    }
    for addr in targets {
        match connector.call(addr, req, ADMIN_TIMEOUT).await {
            Ok(resp) => {
                connector.close().await;
                return Ok(resp);
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    connector.close().await;
    bail!("no node answered: {}", errors.join("; "))
}

pub async fn create(args: LogCreateArgs) -> anyhow::Result<()> {
    let attributes = LogAttributes {
        replication: args.replication,
        node_set_size: args.node_set_size,
        backlog_secs: args.backlog.as_secs(),
        durability: match args.durability {
            DurabilityArg::Durable => Durability::Durable,
            DurabilityArg::Fast => Durability::Fast,
        },
        max_in_flight: args.window,
    };
    attributes
        .validate()
        .with_context(|| format!("log {}: invalid attributes", args.log))?;
    let req = ClientRequest::CreateLog {
        log: args.log,
        attributes,
    };
    match call_cluster(&args.connect.seed, &args.connect.certs_dir(), &req, true).await? {
        ClientResponse::LogCreated => {
            println!("log {} created", args.log);
            Ok(())
        }
        other => Err(remote(other, &format!("cannot create log {}", args.log))),
    }
}

pub async fn show(args: LogShowArgs) -> anyhow::Result<()> {
    let req = ClientRequest::GetLogMetadata { log: args.log };
    let meta =
        match call_cluster(&args.connect.seed, &args.connect.certs_dir(), &req, false).await? {
            ClientResponse::LogMetadata(meta) => meta,
            other => return Err(remote(other, &format!("cannot show log {}", args.log))),
        };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&meta)?);
    } else {
        print!("{}", describe(args.log, &meta));
    }
    Ok(())
}

pub async fn list(args: LogListArgs) -> anyhow::Result<()> {
    let client = args.connect.client().await?;
    let logs = client.list_logs().await;
    client.close().await;
    let logs = logs.context("cannot list the logs")?;
    if args.json {
        let array: Vec<serde_json::Value> = logs
            .iter()
            .map(|(log, meta)| {
                Ok(serde_json::json!({"log": log.0, "metadata": serde_json::to_value(meta)?}))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        println!("{}", serde_json::to_string_pretty(&array)?);
        return Ok(());
    }
    println!("log\tR\tnode set\tdurability\twindow\tbacklog\tepoch");
    for (log, meta) in &logs {
        let a = &meta.attributes;
        let node_set = if a.node_set_size == 0 {
            "all".to_owned()
        } else {
            a.node_set_size.to_string()
        };
        let durability = match a.durability {
            Durability::Durable => "durable",
            Durability::Fast => "fast",
        };
        let backlog = if a.backlog_secs == 0 {
            "-".to_owned()
        } else {
            crate::config::format_duration(Duration::from_secs(a.backlog_secs))
        };
        let epoch = meta.current_epoch();
        let epoch = if epoch.0 == 0 {
            "-".to_owned()
        } else {
            format!("e{}", epoch.0)
        };
        println!(
            "{log}\t{}\t{node_set}\t{durability}\t{}\t{backlog}\t{epoch}",
            a.replication, a.max_in_flight
        );
    }
    Ok(())
}

pub async fn update(args: LogUpdateArgs) -> anyhow::Result<()> {
    let client = args.connect.client().await?;
    let result = async {
        let current = client
            .log_metadata(args.log)
            .await
            .with_context(|| format!("cannot read log {}", args.log))?;
        let attributes = args.apply(&current.attributes)?;
        client
            .update_log(args.log, attributes)
            .await
            .with_context(|| format!("cannot update log {}", args.log))
    }
    .await;
    client.close().await;
    let meta = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&meta)?);
    } else {
        print!("{}", describe(args.log, &meta));
        println!("  (attributes apply from the log's next epoch)");
    }
    Ok(())
}

/// A human-readable description of a log's metadata.
pub fn describe(log: LogId, meta: &LogMetadata) -> String {
    use std::fmt::Write as _;
    let a = &meta.attributes;
    let mut out = String::new();
    let _ = writeln!(out, "log {log}");
    let _ = writeln!(out, "  replication:    {}", a.replication);
    let node_set = if a.node_set_size == 0 {
        "every storage node".to_owned()
    } else {
        a.node_set_size.to_string()
    };
    let _ = writeln!(out, "  node set size:  {node_set}");
    let durability = match a.durability {
        Durability::Durable => "durable",
        Durability::Fast => "fast",
    };
    let _ = writeln!(out, "  durability:     {durability}");
    let _ = writeln!(out, "  window:         {}", a.max_in_flight);
    let backlog = if a.backlog_secs == 0 {
        "keep until trimmed".to_owned()
    } else {
        crate::config::format_duration(Duration::from_secs(a.backlog_secs))
    };
    let _ = writeln!(out, "  backlog:        {backlog}");
    let epoch = meta.current_epoch();
    let running = if epoch.0 == 0 {
        "never activated".to_owned()
    } else {
        format!("e{}", epoch.0)
    };
    let _ = writeln!(out, "  epoch:          {running}");
    let _ = writeln!(
        out,
        "  last clean:     e{} (tail {})",
        meta.last_clean_epoch.0, meta.last_clean_tail
    );
    for entry in &meta.history {
        let nodes: Vec<String> = entry
            .node_set
            .nodes()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let _ = writeln!(
            out,
            "  node set since e{}: [{}] R={}",
            entry.since.0,
            nodes.join(", "),
            entry.replication
        );
    }
    out
}
