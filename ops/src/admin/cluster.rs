//! [`ClusterStatus`]: the cluster at a glance — every member with what it says about itself
//! (`GetNodeStatus`), and every log with its epoch, sequencer, release point, release lag and
//! append rate. `tally status` gathers it over the client protocol from a seed
//! ([`gather_remote`]); a node's status page gathers it from its own membership view and epoch
//! store, asking its peers over the client protocol ([`gather_local`]). Both end in
//! [`ClusterStatus::assemble`], so the table and the page say the same things.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tally_common::meta::{LogMetadata, NodeInfo};
use tally_common::transport::{ClientProtocol, Connector, resolve};
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::status::{NodeStatus, SequencedLog};
use tally_common::{LogId, NodeId};
use tally_epochstore::EpochStore;
use tokio::task::JoinSet;

use super::probe::NodeProbe;

/// Deadline of each call while gathering.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster at a glance (see the module documentation). Serialized as `tally status
/// --json` and the admin port's `/status.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// Members in id order.
    pub nodes: Vec<NodeRow>,
    /// Logs in id order.
    pub logs: Vec<LogRow>,
    /// Why the log list is missing or partial, if it is.
    pub logs_error: Option<String>,
    /// LSNs granted per second by every sequencer together.
    pub append_rate: f64,
    /// Records stored per second by every storage node together (R per append).
    pub store_rate: f64,
}

/// One member of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Node id.
    pub id: u32,
    /// QUIC address registered in membership.
    pub address: String,
    /// `sequencer`, `storage` or `sequencer,storage`.
    pub roles: String,
    /// Failure domain registered in membership.
    pub location: String,
    /// Placement weight registered in membership.
    pub weight: u32,
    /// The storage state registered in membership (`read_write`, `read_only`, …).
    pub membership_state: String,
    /// Whether it answered `GetNodeStatus`; `error` says why not.
    pub reachable: bool,
    pub error: Option<String>,
    /// What `/health` says.
    pub healthy: bool,
    /// What `/ready` says.
    pub ready: bool,
    /// Why it is not healthy or ready.
    pub problems: Vec<String>,
    /// The `tally` version it runs.
    pub version: String,
    pub uptime_secs: u64,
    /// Its admin HTTP address (status page, metrics), if it has one.
    pub admin: Option<String>,
    /// Sequencer role: LSNs granted per second, logs running, recoveries running.
    pub append_rate: Option<f64>,
    pub logs_running: Option<u32>,
    pub recoveries_active: Option<u64>,
    /// Storage role: records and bytes stored per second, stores in flight, open read
    /// streams, partitions, bytes stored since start, free disk.
    pub store_rate: Option<f64>,
    pub store_bytes_rate: Option<f64>,
    pub stores_in_flight: Option<u32>,
    pub read_streams_open: Option<u32>,
    pub partitions: Option<u32>,
    pub stored_bytes: Option<u64>,
    pub free_disk_bytes: Option<u64>,
}

/// One log.
#[derive(Debug, Clone, Serialize)]
pub struct LogRow {
    /// Log id.
    pub log: u64,
    /// The running epoch (from its sequencer), else the newest in the epoch store (0: never
    /// activated).
    pub epoch: u32,
    /// The node running its sequencer, if one runs it now.
    pub sequencer: Option<u32>,
    /// Copies per record (of the newest node set, else the attributes).
    pub replication: u8,
    /// The newest node set (empty until the log's first activation picks one).
    pub node_set: Vec<u32>,
    /// Every epoch up to here is recovered.
    pub last_clean_epoch: u32,
    /// Readers may read up to here (known while a sequencer runs the log).
    pub last_released: Option<String>,
    /// LSNs granted and not released yet in the running epoch (the release lag).
    pub unreleased: Option<u64>,
    /// Its releases wait for recovery of older epochs.
    pub recovering: bool,
    /// Its running epoch was sealed by a newer sequencer.
    pub preempted: bool,
    /// LSNs granted per second.
    pub append_rate: f64,
}

impl ClusterStatus {
    /// Puts the members, their answers and the logs' metadata together.
    pub fn assemble(
        members: Vec<NodeInfo>,
        mut answers: BTreeMap<NodeId, Result<NodeStatus, String>>,
        logs: Result<BTreeMap<LogId, LogMetadata>, String>,
    ) -> ClusterStatus {
        let mut nodes = Vec::new();
        let mut running: BTreeMap<LogId, (NodeId, SequencedLog)> = BTreeMap::new();
        let (mut append_rate, mut store_rate) = (0.0, 0.0);
        for info in members {
            let answer = answers
                .remove(&info.id)
                .unwrap_or_else(|| Err("not asked".to_owned()));
            let roles = match (info.roles.sequencer, info.roles.storage) {
                (true, true) => "sequencer,storage",
                (true, false) => "sequencer",
                (false, true) => "storage",
                (false, false) => "none",
            };
            let mut row = NodeRow {
                id: info.id.0,
                address: info.address.clone(),
                roles: roles.to_owned(),
                location: info.location.clone(),
                weight: info.weight,
                membership_state: state_name(&format!("{:?}", info.state)),
                reachable: false,
                error: None,
                healthy: false,
                ready: false,
                problems: Vec::new(),
                version: String::new(),
                uptime_secs: 0,
                admin: None,
                append_rate: None,
                logs_running: None,
                recoveries_active: None,
                store_rate: None,
                store_bytes_rate: None,
                stores_in_flight: None,
                read_streams_open: None,
                partitions: None,
                stored_bytes: None,
                free_disk_bytes: None,
            };
            match answer {
                Err(e) => row.error = Some(e),
                Ok(s) => {
                    row.reachable = true;
                    row.healthy = s.healthy;
                    row.ready = s.ready;
                    row.problems = s.problems;
                    row.version = s.version;
                    row.uptime_secs = s.uptime_ms / 1000;
                    row.admin = s.admin;
                    if let Some(q) = s.sequencer {
                        append_rate += q.append_rate.per_sec();
                        row.append_rate = Some(q.append_rate.per_sec());
                        row.logs_running = Some(q.logs_running);
                        row.recoveries_active = Some(q.recoveries_active);
                        for l in q.logs {
                            // Two nodes may both hold an epoch of a log for a moment (a
                            // preempted one); the newer epoch is the one that runs it.
                            let better = running.get(&l.log).is_none_or(|(_, old)| {
                                (!l.preempted, l.epoch) > (!old.preempted, old.epoch)
                            });
                            if better {
                                running.insert(l.log, (info.id, l));
                            }
                        }
                    }
                    if let Some(st) = s.storage {
                        store_rate += st.store_rate.per_sec();
                        row.store_rate = Some(st.store_rate.per_sec());
                        row.store_bytes_rate = Some(st.store_bytes_rate.per_sec());
                        row.stores_in_flight = Some(st.stores_in_flight);
                        row.read_streams_open = Some(st.read_streams_open);
                        row.partitions = Some(st.partitions);
                        row.stored_bytes = Some(st.stored_bytes);
                        row.free_disk_bytes = Some(st.free_disk_bytes);
                    }
                }
            }
            nodes.push(row);
        }
        let (metas, logs_error) = match logs {
            Ok(m) => (m, None),
            Err(e) => (BTreeMap::new(), Some(e)),
        };
        let mut ids: Vec<LogId> = metas.keys().copied().collect();
        ids.extend(running.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        let logs = ids
            .into_iter()
            .map(|log| {
                let meta = metas.get(&log);
                let run = running.get(&log);
                let newest = meta.and_then(|m| m.history.last());
                LogRow {
                    log: log.0,
                    epoch: run
                        .map(|(_, l)| l.epoch.0)
                        .or_else(|| meta.map(|m| m.current_epoch().0))
                        .unwrap_or(0),
                    sequencer: run.filter(|(_, l)| !l.preempted).map(|(n, _)| n.0),
                    // A log never activated has no node set yet: its attributes say R.
                    replication: newest.map_or_else(
                        || meta.map_or(0, |m| m.attributes.replication),
                        |e| e.replication,
                    ),
                    node_set: newest.map_or_else(Vec::new, |e| {
                        e.node_set.nodes().iter().map(|n| n.0).collect()
                    }),
                    last_clean_epoch: meta.map_or(0, |m| m.last_clean_epoch.0),
                    last_released: run.map(|(_, l)| l.last_released.to_string()),
                    unreleased: run.map(|(_, l)| l.unreleased),
                    recovering: run.is_some_and(|(_, l)| l.recovering),
                    preempted: run.is_some_and(|(_, l)| l.preempted),
                    append_rate: run.map_or(0.0, |(_, l)| l.append_rate.per_sec()),
                }
            })
            .collect();
        ClusterStatus {
            nodes,
            logs,
            logs_error,
            append_rate,
            store_rate,
        }
    }
}

/// `ReadWrite` → `read_write`.
fn state_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Asks `address` for its status.
async fn node_status(
    connector: &Connector<ClientProtocol>,
    address: &str,
) -> Result<NodeStatus, String> {
    let addr = resolve(address, GATHER_TIMEOUT)
        .await
        .ok_or_else(|| format!("cannot resolve {address}"))?;
    match connector
        .call(addr, &ClientRequest::GetNodeStatus, GATHER_TIMEOUT)
        .await
    {
        Ok(ClientResponse::NodeStatus(s)) => Ok(*s),
        Ok(ClientResponse::Error(e)) => Err(e.to_string()),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks every member (but `skip`) for its status, concurrently.
async fn ask_all(
    connector: &Arc<Connector<ClientProtocol>>,
    members: &[NodeInfo],
    skip: Option<NodeId>,
) -> BTreeMap<NodeId, Result<NodeStatus, String>> {
    let mut tasks = JoinSet::new();
    for m in members.iter().filter(|m| Some(m.id) != skip) {
        let (connector, id, address) = (connector.clone(), m.id, m.address.clone());
        tasks.spawn(async move { (id, node_status(&connector, &address).await) });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((id, answer)) = done {
            out.insert(id, answer);
        }
    }
    out
}

/// Gathers the cluster status from outside (`tally status`): the cluster state from the
/// first seed that answers, every member's status, and the log list from a storage node.
pub async fn gather_remote(
    connector: Arc<Connector<ClientProtocol>>,
    seeds: &[String],
) -> anyhow::Result<ClusterStatus> {
    let mut members = None;
    let mut failures = Vec::new();
    for seed in seeds {
        let Some(addr) = resolve(seed, GATHER_TIMEOUT).await else {
            failures.push(format!("{seed}: cannot resolve"));
            continue;
        };
        match connector
            .call(addr, &ClientRequest::GetClusterState, GATHER_TIMEOUT)
            .await
        {
            Ok(ClientResponse::ClusterState { nodes, .. }) => {
                members = Some(nodes);
                break;
            }
            Ok(other) => failures.push(format!("{seed}: unexpected answer {other:?}")),
            Err(e) => failures.push(format!("{seed}: {e}")),
        }
    }
    let Some(mut members) = members else {
        anyhow::bail!(
            "no seed answered with the cluster state: {}",
            failures.join("; ")
        );
    };
    members.sort_by_key(|m| m.id);
    let answers = ask_all(&connector, &members, None).await;
    let mut logs = Err("no storage node answered the log list".to_owned());
    for m in members.iter().filter(|m| m.roles.storage) {
        let Some(addr) = resolve(&m.address, GATHER_TIMEOUT).await else {
            continue;
        };
        match connector
            .call(addr, &ClientRequest::ListLogs, GATHER_TIMEOUT)
            .await
        {
            Ok(ClientResponse::Logs(list)) => {
                logs = Ok(list.into_iter().map(|l| (l.log, l.metadata)).collect());
                break;
            }
            Ok(ClientResponse::Error(e)) => logs = Err(format!("log list: {e}")),
            Ok(other) => logs = Err(format!("log list: unexpected answer {other:?}")),
            Err(e) => logs = Err(format!("log list: {e}")),
        }
    }
    Ok(ClusterStatus::assemble(members, answers, logs))
}

/// Gathers the cluster status on a node (its status page): members from its membership view,
/// its own status from `probe`, its peers' over `connector`, logs from the epoch store.
pub async fn gather_local(
    probe: &NodeProbe,
    connector: Option<&Arc<Connector<ClientProtocol>>>,
    store: &dyn EpochStore,
) -> ClusterStatus {
    let members = match (probe.sequencer(), probe.storage()) {
        (Some(seq), _) => seq.membership().view().list(),
        (None, Some(st)) => st.cluster().current().list(),
        (None, None) => Vec::new(),
    };
    let mut answers = match connector {
        Some(c) => ask_all(c, &members, Some(probe.id())).await,
        None => BTreeMap::new(),
    };
    answers.insert(probe.id(), Ok(probe.status()));
    let logs = match tokio::time::timeout(GATHER_TIMEOUT, store.list_logs()).await {
        Ok(Ok(logs)) => Ok(logs),
        Ok(Err(e)) => Err(format!("epoch store: {e}")),
        Err(_) => Err(format!("epoch store: no answer within {GATHER_TIMEOUT:?}")),
    };
    ClusterStatus::assemble(members, answers, logs)
}

#[cfg(test)]
mod tests {
    use tally_common::meta::{Roles, StorageState};
    use tally_common::wire::status::{Rate, SequencerStatus};
    use tally_common::{Epoch, Esn, Lsn};

    use super::*;

    fn member(id: u32, sequencer: bool) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 4500 + id),
            roles: Roles {
                sequencer,
                storage: !sequencer,
            },
            location: String::new(),
            weight: 1,
            state: StorageState::ReadWrite,
            incarnation: 0,
        }
    }

    fn sequenced(log: u64, epoch: u32, preempted: bool) -> SequencedLog {
        SequencedLog {
            log: LogId(log),
            epoch: Epoch(epoch),
            last_released: Lsn::new(Epoch(epoch), Esn(7)),
            next_lsn: Lsn::new(Epoch(epoch), Esn(10)),
            unreleased: 2,
            recovering: false,
            preempted,
            append_rate: Rate::over(3, 1000),
        }
    }

    fn sequencer_status(id: u32, logs: Vec<SequencedLog>) -> NodeStatus {
        NodeStatus {
            node: NodeId(id),
            roles: Roles {
                sequencer: true,
                storage: false,
            },
            version: "0.1.0".to_owned(),
            uptime_ms: 61_000,
            admin: Some(format!("127.0.0.1:{}", 5500 + id)),
            healthy: true,
            ready: true,
            problems: Vec::new(),
            sequencer: Some(SequencerStatus {
                appends: 10,
                append_rate: Rate::over(3, 1000),
                logs_running: u32::try_from(logs.len()).unwrap(),
                recoveries_active: 0,
                recoveries_completed: 0,
                recoveries_failed: 0,
                logs,
            }),
            storage: None,
        }
    }

    #[test]
    fn assemble_prefers_the_running_epoch_and_reports_unreachable_nodes() {
        let members = vec![member(1, true), member(2, true), member(3, false)];
        let answers = BTreeMap::from([
            // Node 1 still holds log 5's epoch 3, preempted by node 2's epoch 4.
            (
                NodeId(1),
                Ok(sequencer_status(
                    1,
                    vec![sequenced(5, 3, true), sequenced(6, 1, false)],
                )),
            ),
            (
                NodeId(2),
                Ok(sequencer_status(2, vec![sequenced(5, 4, false)])),
            ),
            (NodeId(3), Err("connection refused <script>".to_owned())),
        ]);
        let status = ClusterStatus::assemble(members, answers, Err("etcd down".to_owned()));
        assert_eq!(status.nodes.len(), 3);
        assert!(status.nodes[0].reachable && status.nodes[0].healthy);
        assert!(!status.nodes[2].reachable);
        assert_eq!(
            status.nodes[2].error.as_deref(),
            Some("connection refused <script>")
        );
        assert_eq!(status.logs.len(), 2);
        let log5 = &status.logs[0];
        assert_eq!((log5.log, log5.epoch, log5.sequencer), (5, 4, Some(2)));
        assert_eq!(log5.last_released.as_deref(), Some("e4n7"));
        assert_eq!(log5.unreleased, Some(2));
        assert_eq!(status.logs[1].sequencer, Some(1));
        assert_eq!(status.logs_error.as_deref(), Some("etcd down"));
        assert!((status.append_rate - 6.0).abs() < 1e-9);

        // The page escapes what nodes say and marks the unreachable one.
        let html = super::super::page::render(&status, (1, "sequencer", "0.1.0", 61));
        assert!(html.contains("connection refused &lt;script&gt;"));
        assert!(!html.contains("<script"));
        assert!(html.contains("unreachable"));
        assert!(html.contains("id=\"log-5\""));
        assert!(html.contains("etcd down"));
        assert!(html.contains("2 / 3"), "healthy count");
        let text = crate::cli::status::render(&status, 50);
        assert!(
            text.starts_with("cluster: 2/3 nodes healthy, 2 logs (2 running)"),
            "{text}"
        );
        assert!(
            text.contains("node 3: connection refused <script>"),
            "{text}"
        );
    }

    #[test]
    fn state_names_are_snake_case() {
        assert_eq!(state_name("ReadWrite"), "read_write");
        assert_eq!(state_name("DataLoss"), "data_loss");
        assert_eq!(state_name("Gone"), "gone");
    }
}
