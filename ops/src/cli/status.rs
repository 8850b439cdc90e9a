//! `tally status`: the cluster at a glance, as tables (or `--json`): every member with its
//! roles, membership state, health and rates, then every log with its epoch, sequencer, release
//! point and release lag. Gathered over the client protocol from the seed
//! ([`crate::admin::cluster::gather_remote`]): the cluster state, each member's
//! `GetNodeStatus`, the log list from a storage node. Exits non-zero when a member is
//! unreachable or unhealthy, so scripts can use it as a check.

use std::sync::Arc;

use anyhow::Context as _;
use tally_common::transport::{ClientProtocol, Connector, TlsIdentity, TransportConfig};

use super::ConnectArgs;
use crate::admin::cluster::{ClusterStatus, gather_remote};
use crate::admin::page::{bytes, duration, rate};

/// `tally status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the status as JSON (the shape of an admin port's `/status.json`).
    #[arg(long)]
    pub json: bool,
    /// Most log rows to print (`--json` prints every log).
    #[arg(long, default_value_t = 50)]
    pub max_logs: usize,
}

/// Gathers and prints the status. Fails (after printing) if a member is unreachable or not
/// healthy.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let certs = args.connect.certs_dir();
    let identity = TlsIdentity::load(&certs, "client").with_context(|| {
        format!(
            "cannot load the client certificate from {} (see --certs)",
            certs.display()
        )
    })?;
    let connector = Arc::new(Connector::<ClientProtocol>::new(
        &identity,
        TransportConfig::default(),
    )?);
    let status = gather_remote(connector, &args.connect.seed)
        .await
        .with_context(|| {
            format!(
                "cannot reach the cluster at {} (is `tally dev` running? see --seed and --certs)",
                args.connect.seed.join(",")
            )
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, args.max_logs));
    }
    let bad: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| !(n.reachable && n.healthy))
        .map(|n| n.id.to_string())
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "node(s) {} unreachable or unhealthy",
        bad.join(", ")
    );
    Ok(())
}

/// Lays out rows as columns; `right[i]` right-aligns column `i`.
fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i] - cell.chars().count();
            if i > 0 {
                out.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i + 1 < cells.len() {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// The status as text: a summary line, the nodes table, problems, the logs table.
pub fn render(status: &ClusterStatus, max_logs: usize) -> String {
    let healthy = status
        .nodes
        .iter()
        .filter(|n| n.reachable && n.healthy && n.ready)
        .count();
    let running = status.logs.iter().filter(|l| l.sequencer.is_some()).count();
    let mut out = format!(
        "cluster: {healthy}/{} nodes healthy, {} logs ({running} running), appends {}, copies stored {}\n\n",
        status.nodes.len(),
        status.logs.len(),
        rate(status.append_rate),
        rate(status.store_rate),
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            let health = if !n.reachable {
                "unreachable"
            } else if !n.healthy {
                "unhealthy"
            } else if !n.ready {
                "not-ready"
            } else {
                "ok"
            };
            vec![
                n.id.to_string(),
                n.address.clone(),
                n.roles.clone(),
                n.membership_state.clone(),
                health.to_owned(),
                if n.reachable {
                    duration(n.uptime_secs)
                } else {
                    "-".to_owned()
                },
                opt(n.append_rate, rate),
                opt(n.logs_running, |v| v.to_string()),
                opt(n.store_rate, rate),
                opt(n.stores_in_flight, |v| v.to_string()),
                opt(n.read_streams_open, |v| v.to_string()),
                opt(n.partitions, |v| v.to_string()),
                opt(n.free_disk_bytes, bytes),
                n.admin.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE", "ADDRESS", "ROLES", "STATE", "HEALTH", "UPTIME", "APPENDS", "LOGS", "STORES",
            "QUEUE", "READERS", "PARTS", "FREE", "ADMIN",
        ],
        &rows,
        &[
            true, false, false, false, false, true, true, true, true, true, true, true, true, false,
        ],
    ));
    for n in &status.nodes {
        for p in n.problems.iter().chain(n.error.iter()) {
            out.push_str(&format!("  node {}: {p}\n", n.id));
        }
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = status
        .logs
        .iter()
        .take(max_logs)
        .map(|l| {
            let state = if l.preempted {
                "preempted"
            } else if l.recovering {
                "recovering"
            } else if l.sequencer.is_some() {
                "running"
            } else {
                "idle"
            };
            vec![
                l.log.to_string(),
                state.to_owned(),
                if l.epoch == 0 {
                    "-".to_owned()
                } else {
                    l.epoch.to_string()
                },
                opt(l.sequencer, |v| v.to_string()),
                l.replication.to_string(),
                l.node_set
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                l.last_released.clone().unwrap_or_else(|| "-".to_owned()),
                opt(l.unreleased, |v| v.to_string()),
                rate(l.append_rate),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "LOG",
            "STATE",
            "EPOCH",
            "SEQUENCER",
            "R",
            "NODE SET",
            "RELEASED",
            "LAG",
            "APPENDS",
        ],
        &rows,
        &[true, false, true, true, true, false, true, true, true],
    ));
    if status.logs.len() > max_logs {
        out.push_str(&format!(
            "… and {} more logs (--max-logs, --json)\n",
            status.logs.len() - max_logs
        ));
    }
    if let Some(e) = &status.logs_error {
        out.push_str(&format!("logs: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["10".into(), "x".into()],
                vec!["2".into(), "yyy".into()],
            ],
            &[true, false],
        );
        assert_eq!(t, " A  BB\n10  x\n 2  yyy\n");
    }
}
