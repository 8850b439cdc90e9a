//! Admin calls of [`Client`] (DESIGN §8 `find_time`, LogDevice's `trim`, `findTime`,
//! `getTailLSN`, `isLogEmpty`, `dataSize`): each asks the nodes that know the answer and
//! combines their answers conservatively. The combining rules are pure functions here, with
//! their tests; the calls only gather answers.
//!
//! - [`Client::log_metadata`]: the log's epoch-store record, from any node.
//! - [`Client::tail_lsn`]: `GetTail` to the log's sequencer (the owner of the ranking,
//!   redirects followed, the next in rank when one is unreachable).
//! - [`Client::trim`]: `Trim` to every node of every node set of the log. It succeeds once an
//!   f-majority of each node set trimmed ([`quorum_reached`]): every record below the trim
//!   point then has a node that answers `Trim` for it, and a reader that meets one delivers a
//!   `Trim` gap. Nodes that did not answer keep their copies until a later trim (trims are
//!   idempotent and monotone, so retrying is safe) or retention removes them; readers may
//!   still get such records from them, never a wrong one. Trimming past the tail is refused.
//! - [`Client::find_time`]: `FindTime` to every node of every node set. Each node answers the
//!   LSN after its last copy older than the time; a record lives on R nodes, so over an
//!   f-majority of each node set the largest answer is exact ([`combine_find_time`]). Over
//!   fewer nodes the largest answer is still safe to read from (it never skips a record at or
//!   after the time) but may be early; `Strict` refuses that, `Approximate` accepts it.
//! - [`Client::is_log_empty`]: reads from the oldest LSN to the tail and stops at the first
//!   record (hole plugs, bridges and trimmed ranges are not records).
//! - [`Client::data_size`]: `DataSize` to every node; the sum of copies' bytes divided by the
//!   replication factor, scaled up for nodes that did not answer ([`estimate_data_size`]).
//! - [`Client::scan_estimate`]: `ScanEstimate` to every node of every node set: what a read of
//!   an LSN range would scan on each (partitions, bytes), from partition directories only.
//! - [`Client::list_logs`], [`Client::update_log`]: `ListLogs` / `UpdateLog` to the storage
//!   nodes of the cluster view (they serve the epoch store's log records), the first that
//!   answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tally_common::meta::{LogMetadata, NodeSetEntry};
use tally_common::quorum::QuorumChecker;
use tally_common::transport::TransportError;
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::{ErrorCode, FindTimeAccuracy, RemoteError};
use tally_common::{LogId, Lsn, NodeId};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Client, Shared};
use crate::read::{Delivery, ReadFrom, ReadOptions, ReadUntil};

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The log does not exist.
    #[error("log {log} does not exist")]
    LogNotFound {
        /// The log asked for.
        log: LogId,
    },
    /// Too few nodes answered for the answer to be trusted (or applied where it must be).
    /// `failed` says which nodes did not answer and why.
    #[error("{what}: too few nodes of {log} answered ({}; need an f-majority of each node set)", failures(.failed))]
    NotEnoughNodes {
        /// The log.
        log: LogId,
        /// The call (`trim`, `find_time`, ...).
        what: &'static str,
        /// Each node that failed, with its error.
        failed: Vec<(NodeId, String)>,
    },
    /// `trim` was asked to trim past the log's tail (that would trim records not yet written).
    #[error("cannot trim {log} up to {upto}: its tail is {tail}")]
    TrimPastTail {
        /// The log.
        log: LogId,
        /// The LSN asked for.
        upto: Lsn,
        /// The log's tail (release point).
        tail: Lsn,
    },
    /// No node (or no sequencer, for the tail) answered in time; retry later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// What could not be reached.
        reason: String,
    },
    /// A node answered something that makes no sense for the request, or refused it as
    /// malformed. Retrying will not help.
    #[error("unexpected answer: {reason}")]
    Unexpected {
        /// What was answered.
        reason: String,
    },
    /// The client is shut down.
    #[error("the client is shut down")]
    Shutdown,
}

fn failures(failed: &[(NodeId, String)]) -> String {
    if failed.is_empty() {
        return "no node failed".to_owned();
    }
    failed
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl AdminError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AdminError::NotEnoughNodes { .. } | AdminError::Unavailable { .. }
        )
    }
}

/// How many whole deadlines of `request_timeout` an admin call may use (a tail lookup may
/// follow a redirect and try the next sequencer).
const ADMIN_CALL_ROUNDS: u32 = 3;

/// How long a metadata fetch waits for one node before also asking another.
const METADATA_HEDGE: Duration = Duration::from_millis(200);

impl Client {
    /// The log's epoch-store record (node-set history, attributes), from any node that answers.
    pub async fn log_metadata(&self, log: LogId) -> Result<LogMetadata, AdminError> {
        fetch_metadata(self.shared(), log).await
    }

    /// The log's tail: its last released LSN as the sequencer knows it (`Lsn::INVALID` if
    /// nothing was ever released). Asking may activate a sequencer for the log.
    pub async fn tail_lsn(&self, log: LogId) -> Result<Lsn, AdminError> {
        fetch_tail(self.shared(), log).await
    }

    /// Trims `log` up to `upto` (inclusive) on every node of every node set; see the module
    /// documentation for when it succeeds. Trim points only move forward: trimming below the
    /// current point succeeds and changes nothing.
    pub async fn trim(&self, log: LogId, upto: Lsn) -> Result<(), AdminError> {
        let shared = self.shared();
        let meta = fetch_metadata(shared, log).await?;
        let tail = fetch_tail(shared, log).await?;
        if upto > tail {
            return Err(AdminError::TrimPastTail { log, upto, tail });
        }
        let answers = ask_all(shared, &meta, ClientRequest::Trim { log, upto }).await;
        let mut ok = BTreeSet::new();
        let mut failed = Vec::new();
        for (node, answer) in answers {
            match answer {
                Ok(ClientResponse::Trimmed { .. }) => {
                    ok.insert(node);
                }
                Ok(other) => failed.push((node, format!("answered {other:?}"))),
                Err(e) => failed.push((node, e)),
            }
        }
        if quorum_reached(&meta.history, &ok) {
            if !failed.is_empty() {
                tracing::info!(%log, %upto, ?failed, "trim reached an f-majority, not every node");
            }
            Ok(())
        } else {
            Err(AdminError::NotEnoughNodes {
                log,
                what: "trim",
                failed,
            })
        }
    }

    /// The first LSN of `log` whose record has a timestamp at or after `timestamp_ms` (the
    /// LSN after the tail if there is none; never below the trim point): reading from it
    /// yields no record older than the time. `Approximate` may answer earlier (see the module
    /// documentation); `Strict` is exact or fails.
    pub async fn find_time(
        &self,
        log: LogId,
        timestamp_ms: u64,
        accuracy: FindTimeAccuracy,
    ) -> Result<Lsn, AdminError> {
        let shared = self.shared();
        let meta = fetch_metadata(shared, log).await?;
        let req = ClientRequest::FindTime {
            log,
            timestamp_ms,
            accuracy,
        };
        let answers = ask_all(shared, &meta, req).await;
        let mut found = BTreeMap::new();
        let mut failed = Vec::new();
        for (node, answer) in answers {
            match answer {
                Ok(ClientResponse::FoundTime { lsn }) => {
                    found.insert(node, lsn);
                }
                Ok(other) => failed.push((node, format!("answered {other:?}"))),
                Err(e) => failed.push((node, e)),
            }
        }
        combine_find_time(&meta.history, &found, accuracy).ok_or(AdminError::NotEnoughNodes {
            log,
            what: "find_time",
            failed,
        })
    }

    /// Whether `log` holds no record between its trim point and its tail.
    pub async fn is_log_empty(&self, log: LogId) -> Result<bool, AdminError> {
        let options = ReadOptions {
            from: ReadFrom::Oldest,
            until: ReadUntil::Tail,
            // One record is enough to answer; no need to ship more.
            window: 16,
            ..ReadOptions::default()
        };
        let mut reader = self.read(log, options).await.map_err(AdminError::from)?;
        while let Some(item) = reader.next().await {
            match item.map_err(AdminError::from)? {
                Delivery::Record(_) => return Ok(false),
                Delivery::Gap { .. } => {}
            }
        }
        Ok(true)
    }

    /// Approximate bytes of `log`'s records with timestamps in `[from_ms, until_ms)`: the
    /// nodes' sizes of their copies, divided by the replication factor (see
    /// [`estimate_data_size`]). Fails only when no node answered.
    pub async fn data_size(
        &self,
        log: LogId,
        from_ms: u64,
        until_ms: u64,
    ) -> Result<u64, AdminError> {
        if from_ms >= until_ms {
            return Ok(0);
        }
        let shared = self.shared();
        let meta = fetch_metadata(shared, log).await?;
        let req = ClientRequest::DataSize {
            log,
            from_ms,
            until_ms,
        };
        let answers = ask_all(shared, &meta, req).await;
        let asked = answers.len();
        let mut sizes = Vec::new();
        let mut failed = Vec::new();
        for (node, answer) in answers {
            match answer {
                Ok(ClientResponse::DataSize { bytes }) => sizes.push(bytes),
                Ok(other) => failed.push((node, format!("answered {other:?}"))),
                Err(e) => failed.push((node, e)),
            }
        }
        let replication = meta.history.last().map_or(1, |e| e.replication);
        estimate_data_size(&sizes, asked, replication).ok_or(AdminError::NotEnoughNodes {
            log,
            what: "data_size",
            failed,
        })
    }
}

/// What a read of a range would scan, node by node ([`Client::scan_estimate`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanEstimate {
    /// Per answering node: partitions overlapping the range, and their bytes (copies).
    pub nodes: Vec<(NodeId, u32, u64)>,
    /// Nodes of the log's node sets that did not answer, and why.
    pub failed: Vec<(NodeId, String)>,
}

impl ScanEstimate {
    /// Partitions scanned, summed over the answering nodes.
    pub fn partitions(&self) -> u64 {
        self.nodes.iter().map(|(_, p, _)| u64::from(*p)).sum()
    }

    /// Bytes scanned (every copy), summed over the answering nodes.
    pub fn bytes(&self) -> u64 {
        self.nodes
            .iter()
            .fold(0u64, |sum, (_, _, b)| sum.saturating_add(*b))
    }
}

impl Client {
    /// What a read of `from ..= until` of `log` scans on each node of its node sets, from
    /// their partition directories (no record is read). Nodes that do not answer are listed
    /// in [`ScanEstimate::failed`]; fails only when the log does not exist or its metadata
    /// cannot be fetched.
    pub async fn scan_estimate(
        &self,
        log: LogId,
        from: Lsn,
        until: Lsn,
    ) -> Result<ScanEstimate, AdminError> {
        let shared = self.shared();
        let meta = fetch_metadata(shared, log).await?;
        if from > until {
            return Ok(ScanEstimate::default());
        }
        let req = ClientRequest::ScanEstimate { log, from, until };
        let mut estimate = ScanEstimate::default();
        for (node, answer) in ask_all(shared, &meta, req).await {
            match answer {
                Ok(ClientResponse::ScanEstimate { partitions, bytes }) => {
                    estimate.nodes.push((node, partitions, bytes));
                }
                Ok(other) => estimate.failed.push((node, format!("answered {other:?}"))),
                Err(e) => estimate.failed.push((node, e)),
            }
        }
        Ok(estimate)
    }

    /// Every log with its epoch-store record, in log order.
    pub async fn list_logs(&self) -> Result<Vec<(LogId, LogMetadata)>, AdminError> {
        match ask_storage(self.shared(), &ClientRequest::ListLogs).await? {
            ClientResponse::Logs(logs) => {
                Ok(logs.into_iter().map(|l| (l.log, l.metadata)).collect())
            }
            other => Err(AdminError::Unexpected {
                reason: format!("ListLogs answered {other:?}"),
            }),
        }
    }

    /// Replaces `log`'s attributes (they apply from its next activation); returns the new
    /// record. Invalid attributes are refused before anything is sent.
    pub async fn update_log(
        &self,
        log: LogId,
        attributes: tally_common::meta::LogAttributes,
    ) -> Result<LogMetadata, AdminError> {
        attributes.validate().map_err(|e| AdminError::Unexpected {
            reason: format!("invalid attributes for {log}: {e}"),
        })?;
        let req = ClientRequest::UpdateLog { log, attributes };
        match ask_storage(self.shared(), &req).await {
            Ok(ClientResponse::LogUpdated(meta)) => Ok(meta),
            Ok(other) => Err(AdminError::Unexpected {
                reason: format!("UpdateLog answered {other:?}"),
            }),
            Err(AdminError::Unexpected { reason }) if reason.starts_with("NotFound") => {
                Err(AdminError::LogNotFound { log })
            }
            Err(e) => Err(e),
        }
    }
}

/// `req` to the storage nodes of the cluster view, one at a time, until one answers: its
/// answer. A remote error is final (`Unexpected`, its code first: `NotFound: …`) unless it
/// is retryable, then the next node is asked.
async fn ask_storage(
    shared: &Arc<Shared>,
    req: &ClientRequest,
) -> Result<ClientResponse, AdminError> {
    let mut last = String::from("the cluster view has no storage node");
    for round in 0..2 {
        if shared.shutdown.is_cancelled() {
            return Err(AdminError::Shutdown);
        }
        if round > 0
            && let Err(e) = shared.cluster.refresh().await
        {
            last = e.to_string();
        }
        let nodes: Vec<NodeId> = shared
            .cluster
            .current()
            .nodes()
            .iter()
            .filter(|n| n.roles.storage)
            .map(|n| n.id)
            .collect();
        for node in nodes {
            match call(shared, node, req, shared.config.request_timeout).await {
                Ok(ClientResponse::Error(e)) | Err(CallError::Remote(e)) => {
                    if !e.code.is_retryable() {
                        return Err(AdminError::Unexpected {
                            reason: format!("{:?}: {}", e.code, e.message),
                        });
                    }
                    last = format!("{node}: {e}");
                }
                Ok(resp) => return Ok(resp),
                Err(e) => last = format!("{node}: {e}"),
            }
        }
    }
    Err(AdminError::Unavailable {
        reason: format!("no storage node answered (last: {last})"),
    })
}

/// Whether the nodes in `ok` include an authoritative f-majority of every node set of
/// `history` (a node set whose replication is impossible counts as unreachable).
pub fn quorum_reached(history: &[NodeSetEntry], ok: &BTreeSet<NodeId>) -> bool {
    !history.is_empty()
        && history.iter().all(|entry| {
            let Ok(mut checker) =
                QuorumChecker::new(entry.node_set.nodes(), entry.replication as usize)
            else {
                return false;
            };
            for node in ok {
                checker.set_tag(*node, true);
            }
            checker.f_majority().is_authoritative()
        })
}

/// Combines per-node `find_time` answers: the largest answer. Exact when the answering nodes
/// hold an f-majority of every node set (every record has a copy among them); otherwise a
/// safe but possibly early answer, returned only for `Approximate`. `None` when the answers
/// do not suffice.
pub fn combine_find_time(
    history: &[NodeSetEntry],
    answers: &BTreeMap<NodeId, Lsn>,
    accuracy: FindTimeAccuracy,
) -> Option<Lsn> {
    let largest = answers.values().copied().max()?;
    let answered: BTreeSet<NodeId> = answers.keys().copied().collect();
    match accuracy {
        FindTimeAccuracy::Strict if !quorum_reached(history, &answered) => None,
        _ => Some(largest),
    }
}

/// Estimated bytes of a log from the copies' sizes the nodes reported (`sizes`, one per node
/// that answered, of `asked` asked): the sum divided by the replication factor, scaled up by
/// `asked / answered`. `None` when no node answered.
pub fn estimate_data_size(sizes: &[u64], asked: usize, replication: u8) -> Option<u64> {
    if sizes.is_empty() {
        return None;
    }
    let total: u128 = sizes.iter().map(|s| u128::from(*s)).sum();
    let scaled = total * asked.max(sizes.len()) as u128 / sizes.len() as u128;
    let bytes = scaled / u128::from(replication.max(1));
    Some(u64::try_from(bytes).unwrap_or(u64::MAX))
}

/// The log's metadata from the first node that answers: the known nodes in a random order
/// (spreading the load), a new one asked whenever the last one failed or did not answer
/// within [`METADATA_HEDGE`] (so a dead node the view still lists costs that, not a whole
/// request timeout); then, if none answered, the same after a cluster refresh.
pub(crate) async fn fetch_metadata(
    shared: &Arc<Shared>,
    log: LogId,
) -> Result<LogMetadata, AdminError> {
    let mut last = String::from("the cluster view knows no node");
    for round in 0..2 {
        if shared.shutdown.is_cancelled() {
            return Err(AdminError::Shutdown);
        }
        if round > 0
            && let Err(e) = shared.cluster.refresh().await
        {
            last = e.to_string();
        }
        let mut nodes: Vec<NodeId> = shared
            .cluster
            .current()
            .nodes()
            .iter()
            .map(|n| n.id)
            .collect();
        {
            use rand::seq::SliceRandom as _;
            nodes.shuffle(&mut rand::rng());
        }
        let mut waiting: std::collections::VecDeque<NodeId> = nodes.into();
        let mut calls = JoinSet::new();
        loop {
            let joined = if calls.is_empty() {
                None
            } else if waiting.is_empty() {
                calls.join_next().await
            } else {
                tokio::select! {
                    joined = calls.join_next() => joined,
                    () = tokio::time::sleep(METADATA_HEDGE) => None,
                }
            };
            match joined {
                None => {
                    let Some(node) = waiting.pop_front() else {
                        break;
                    };
                    let shared = shared.clone();
                    calls.spawn(async move {
                        let req = ClientRequest::GetLogMetadata { log };
                        (
                            node,
                            call(&shared, node, &req, shared.config.request_timeout).await,
                        )
                    });
                }
                Some(Err(e)) => tracing::error!(error = %e, "metadata call task failed"),
                Some(Ok((node, answer))) => match answer {
                    Ok(ClientResponse::LogMetadata(meta)) => return Ok(meta),
                    Ok(ClientResponse::Error(e)) | Err(CallError::Remote(e))
                        if e.code == ErrorCode::NotFound =>
                    {
                        return Err(AdminError::LogNotFound { log });
                    }
                    Ok(other) => last = format!("{node} answered {other:?}"),
                    Err(e) => last = format!("{node}: {e}"),
                },
            }
        }
    }
    Err(AdminError::Unavailable {
        reason: format!("no node served the metadata of {log} (last: {last})"),
    })
}

/// `GetTail` to the log's sequencer: the owner first, redirects followed, the next in rank
/// when one cannot be reached, within [`ADMIN_CALL_ROUNDS`] request timeouts.
pub(crate) async fn fetch_tail(shared: &Arc<Shared>, log: LogId) -> Result<Lsn, AdminError> {
    let config = &shared.config;
    let deadline = Instant::now() + config.request_timeout * ADMIN_CALL_ROUNDS;
    let mut backoff = config.sequencer_backoff_initial;
    let mut last = String::from("no sequencer asked yet");
    loop {
        if shared.shutdown.is_cancelled() {
            return Err(AdminError::Shutdown);
        }
        let rank = shared.cluster.current().sequencer_rank(log);
        let mut tried = BTreeSet::new();
        let mut target = rank.first().copied();
        let mut redirects = 0;
        while let Some(node) = target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tried.insert(node);
            let timeout = config.request_timeout.min(deadline - now);
            let next_in_rank = || rank.iter().copied().find(|n| !tried.contains(n));
            target = match call(shared, node, &ClientRequest::GetTail { log }, timeout).await {
                Ok(ClientResponse::Tail { lsn }) => return Ok(lsn),
                Ok(ClientResponse::Redirect { owner }) => {
                    last = format!("{node} redirected to {owner}");
                    if shared.cluster.current().node(owner).is_none() {
                        let _ = shared.cluster.refresh().await;
                    }
                    redirects += 1;
                    if redirects <= config.max_redirects && !tried.contains(&owner) {
                        Some(owner)
                    } else {
                        next_in_rank()
                    }
                }
                Ok(ClientResponse::Error(e)) | Err(CallError::Remote(e)) => {
                    if e.code == ErrorCode::NotFound {
                        return Err(AdminError::LogNotFound { log });
                    }
                    if !e.code.is_retryable() {
                        return Err(AdminError::Unexpected {
                            reason: format!("{node} answered GetTail with {e}"),
                        });
                    }
                    last = format!("{node} answered {e}");
                    next_in_rank()
                }
                Ok(other) => {
                    return Err(AdminError::Unexpected {
                        reason: format!("{node} answered GetTail with {other:?}"),
                    });
                }
                Err(e) => {
                    last = format!("{node}: {e}");
                    shared.refresh_soon();
                    next_in_rank()
                }
            };
        }
        if rank.is_empty() {
            last = "the cluster view has no live sequencer".into();
            shared.refresh_soon();
        }
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(AdminError::Unavailable {
                reason: format!("no sequencer answered GetTail for {log} ({last})"),
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.sequencer_backoff_max);
    }
}

/// Sends `req` to every node of every node set of the log at once; each node's answer (or
/// why there is none), within one request timeout.
async fn ask_all(
    shared: &Arc<Shared>,
    meta: &LogMetadata,
    req: ClientRequest,
) -> Vec<(NodeId, Result<ClientResponse, String>)> {
    let nodes: BTreeSet<NodeId> = meta
        .history
        .iter()
        .flat_map(|e| e.node_set.nodes().iter().copied())
        .collect();
    let timeout = shared.config.request_timeout;
    let mut calls = JoinSet::new();
    for node in nodes {
        let shared = shared.clone();
        let req = req.clone();
        calls.spawn(async move {
            let answer = match call(&shared, node, &req, timeout).await {
                Ok(ClientResponse::Error(e)) | Err(CallError::Remote(e)) => Err(e.to_string()),
                Ok(resp) => Ok(resp),
                Err(e) => Err(e.to_string()),
            };
            (node, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(answer) => answers.push(answer),
            Err(e) => tracing::error!(error = %e, "admin call task failed"),
        }
    }
    answers.sort_by_key(|(node, _)| *node);
    answers
}

/// Why one call to one node got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("address unknown to the cluster view")]
    NoAddress,
    #[error("{0}")]
    Remote(RemoteError),
    #[error("{0}")]
    Transport(TransportError),
}

/// One request to `node` by id, refreshing the cluster view when it cannot be reached.
pub(crate) async fn call(
    shared: &Arc<Shared>,
    node: NodeId,
    req: &ClientRequest,
    timeout: Duration,
) -> Result<ClientResponse, CallError> {
    let Some(addr) = shared.cluster.address(node).await else {
        shared.refresh_soon();
        return Err(CallError::NoAddress);
    };
    match shared.connector.call(addr, req, timeout).await {
        Ok(resp) => Ok(resp),
        Err(TransportError::Remote(e)) => Err(CallError::Remote(e)),
        Err(e) => {
            if e.is_retryable() {
                shared.refresh_soon();
            }
            Err(CallError::Transport(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_common::meta::NodeSet;
    use tally_common::{Epoch, Esn};

    use super::*;

    fn entry(since: u32, nodes: &[u32], r: u8) -> NodeSetEntry {
        NodeSetEntry {
            since: Epoch(since),
            node_set: NodeSet::new(nodes.iter().copied().map(NodeId).collect()),
            replication: r,
        }
    }

    fn set(nodes: &[u32]) -> BTreeSet<NodeId> {
        nodes.iter().copied().map(NodeId).collect()
    }

    fn lsn(esn: u32) -> Lsn {
        Lsn::new(Epoch(1), Esn(esn))
    }

    #[test]
    fn quorum_needs_an_f_majority_of_every_node_set() {
        // n = 3, R = 2: f-majority is 2 nodes.
        let one = [entry(1, &[1, 2, 3], 2)];
        assert!(quorum_reached(&one, &set(&[1, 2])));
        assert!(!quorum_reached(&one, &set(&[3])));
        assert!(!quorum_reached(&one, &set(&[4, 5])));
        // Two epochs with different node sets: both need their own f-majority.
        let two = [entry(1, &[1, 2, 3], 2), entry(4, &[3, 4, 5], 2)];
        assert!(!quorum_reached(&two, &set(&[1, 2])));
        assert!(quorum_reached(&two, &set(&[1, 3, 4])));
        // No history: nothing is known, nothing is reached.
        assert!(!quorum_reached(&[], &set(&[1, 2, 3])));
    }

    #[test]
    fn find_time_takes_the_largest_answer_when_it_is_exact() {
        let history = [entry(1, &[1, 2, 3], 2)];
        let answers: BTreeMap<NodeId, Lsn> = [(NodeId(1), lsn(5)), (NodeId(2), lsn(7))]
            .into_iter()
            .collect();
        assert_eq!(
            combine_find_time(&history, &answers, FindTimeAccuracy::Strict),
            Some(lsn(7))
        );
        let few: BTreeMap<NodeId, Lsn> = [(NodeId(1), lsn(5))].into_iter().collect();
        // One node of three may miss the last record older than the time: not exact.
        assert_eq!(
            combine_find_time(&history, &few, FindTimeAccuracy::Strict),
            None
        );
        // ... but still safe to start reading from.
        assert_eq!(
            combine_find_time(&history, &few, FindTimeAccuracy::Approximate),
            Some(lsn(5))
        );
        assert_eq!(
            combine_find_time(&history, &BTreeMap::new(), FindTimeAccuracy::Approximate),
            None
        );
    }

    #[test]
    fn data_size_divides_by_replication_and_scales_for_silence() {
        assert_eq!(estimate_data_size(&[100, 100, 100], 3, 3), Some(100));
        assert_eq!(estimate_data_size(&[300, 300], 3, 2), Some(450));
        assert_eq!(estimate_data_size(&[], 3, 2), None);
        assert_eq!(
            estimate_data_size(&[u64::MAX, u64::MAX], 2, 1),
            Some(u64::MAX)
        );
        assert_eq!(estimate_data_size(&[10], 1, 0), Some(10));
    }

    #[test]
    fn retryable_errors() {
        assert!(
            AdminError::Unavailable {
                reason: String::new()
            }
            .is_retryable()
        );
        assert!(!AdminError::LogNotFound { log: LogId(1) }.is_retryable());
        let e = AdminError::NotEnoughNodes {
            log: LogId(1),
            what: "trim",
            failed: vec![(NodeId(3), "timed out".into())],
        };
        assert!(e.is_retryable());
        assert!(e.to_string().contains("N3: timed out") || e.to_string().contains("timed out"));
    }
}
