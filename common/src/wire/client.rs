//! The client ↔ node protocol (ALPN `tally-client/1`): cluster and log metadata, sequencer
//! grants, completion and preemption reports, stores, trims, time lookups and read streams
//! (DESIGN §5–§8).
//!
//! Variant order is the wire tag: append new variants at the end, never reorder or reuse.

use crate::ids::{Epoch, Esn, LogId, Lsn, NodeId};
use crate::limits::Limits;
use crate::meta::{Durability, LogAttributes, LogMetadata, NodeInfo, NodeSet};
use crate::record::Copyset;

use super::types::{
    FindTimeAccuracy, GapKind, ReadFilter, ReadRecord, RemoteError, StoreBatch, StoreStatus,
};

/// Most LSNs one `Sequence` request may ask for.
pub const MAX_GRANT: u32 = 65_536;
/// Most records or gaps in one pushed read message.
pub const MAX_READ_BATCH: usize = 4096;

/// A request from a client (or a tool) to any node.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ClientRequest {
    /// Membership and node states, so the client can place copies and find sequencers.
    GetClusterState,
    /// A log's epoch-store record (node-set history, attributes).
    GetLogMetadata { log: LogId },
    CreateLog {
        log: LogId,
        attributes: LogAttributes,
    },
    /// Ask the log's sequencer for `count` consecutive LSNs. `no_redirect`: the client found the
    /// owner unreachable and asks this node to take the log over.
    Sequence {
        log: LogId,
        count: u32,
        no_redirect: bool,
    },
    /// The client stored LSNs `first ..= first + count − 1` (one epoch) on R nodes.
    ReportStored {
        log: LogId,
        first: Lsn,
        count: u32,
        copyset: Copyset,
        wave: u32,
    },
    /// Store copies on this storage node.
    Store(StoreBatch),
    /// Move the trim point of the log on this node up to `upto` (inclusive).
    Trim { log: LogId, upto: Lsn },
    FindTime {
        log: LogId,
        timestamp_ms: u64,
        accuracy: FindTimeAccuracy,
    },
    /// The log's tail as the sequencer knows it (last released LSN).
    GetTail { log: LogId },
    /// Approximate bytes of the log's records with timestamps in `[from_ms, until_ms)`.
    DataSize {
        log: LogId,
        from_ms: u64,
        until_ms: u64,
    },
    /// Open a read stream (sent as an `Open` frame): records of `log` from `from` to `until`
    /// inclusive, up to `window` LSNs ahead of `from` before the client widens it.
    StartRead {
        log: LogId,
        from: Lsn,
        until: Lsn,
        window_until: Lsn,
        filter: ReadFilter,
    },
    /// (On an open read stream) widen the window.
    ReadWindow { until: Lsn },
    /// (On an open read stream) end it.
    StopRead,
    /// To the sequencer that granted LSNs of `log` in `epoch`: a storage node refused a store
    /// of such an LSN with `Preempted{seal}` (`seal ≥ epoch`), so a newer sequencer sealed the
    /// epoch. The sequencer stops granting in `epoch`; its next `Sequence` for the log moves to
    /// a new epoch (if it owns the log) or redirects. A report for an epoch the sequencer no
    /// longer runs is ignored. Answer `Ack`.
    ReportPreempted {
        log: LogId,
        epoch: Epoch,
        seal: Epoch,
    },
    /// Every log with its epoch-store record (served by storage nodes). Answer `Logs`.
    ListLogs,
    /// Replace the log's attributes in the epoch store (served by storage nodes); they apply
    /// from the log's next activation. Answer `LogUpdated` with the new record.
    UpdateLog {
        log: LogId,
        attributes: LogAttributes,
    },
    /// What a read of `from ..= until` would scan on this storage node, from its partition
    /// directory alone (no data is read). Answer `ScanEstimate`.
    ScanEstimate { log: LogId, from: Lsn, until: Lsn },
    /// What this node says about itself: roles, health, counters, rates, and the logs it
    /// sequences (any node). Answer `NodeStatus`.
    GetNodeStatus,
    /// Several STORE batches for this storage node in one request (from appends to different
    /// logs, or batches of one log, that were waiting for the same node at once). Each batch
    /// is stored and answered as if it came alone: answer `StoreResults`, one entry per batch
    /// in order. At most [`MAX_STORE_BATCHES`] batches and `max_records_per_batch` records
    /// in all, so one request is no more work than one full `Store`.
    StoreMany(Vec<StoreBatch>),
    /// Several `ReportStored`s for this sequencer in one request (reports of appends to
    /// different logs that completed while an earlier report to it was on its way). Each is
    /// applied as if it came alone; the answer is `Ack` (reports are advisory: one the
    /// sequencer cannot apply is settled by its own paths, abandoned LSNs and recovery). At
    /// most [`MAX_REPORTS`].
    ReportStoredMany(Vec<StoredReport>),
    /// Grants for several logs of this sequencer in one request (asks of appends to
    /// different logs that were waiting for the same sequencer at once). Answered at once
    /// from what runs here: each ask gets what a `Sequence` of it (without `no_redirect`)
    /// would have answered, except that a log needing an activation (not running here, or
    /// moving to a new epoch) is answered [`SequenceAnswer::NotActive`] instead of being
    /// activated, so one request never waits for the epoch store and asks for running logs
    /// never wait behind an activation. Answer `Sequenced`, one entry per ask in order. At
    /// most [`MAX_SEQUENCE_ASKS`].
    SequenceMany(Vec<SequenceAsk>),
}

/// One ask of a `SequenceMany`: `count` consecutive LSNs of `log`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SequenceAsk {
    pub log: LogId,
    pub count: u32,
}

/// Most asks in one `SequenceMany`.
pub const MAX_SEQUENCE_ASKS: usize = 1024;

/// One report of a `ReportStoredMany`: the fields of a `ReportStored`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StoredReport {
    pub log: LogId,
    pub first: Lsn,
    pub count: u32,
    pub copyset: Copyset,
    pub wave: u32,
}

/// Most reports in one `ReportStoredMany`.
pub const MAX_REPORTS: usize = 1024;

fn check_sequence(log: &LogId, count: u32, limits: &Limits) -> Result<(), String> {
    if !log.is_user() {
        return Err(format!("invalid user log id {}", log.0));
    }
    if count == 0 || count > MAX_GRANT.min(limits.max_records_per_batch.max(1) * 16) {
        return Err(format!("cannot grant {count} LSNs at once"));
    }
    Ok(())
}

fn check_report(log: &LogId, first: &Lsn, count: u32, copyset: &Copyset) -> Result<(), String> {
    if !log.is_user() {
        return Err(format!("invalid user log id {}", log.0));
    }
    copyset.validate().map_err(|e| e.to_string())?;
    if count == 0 || count > MAX_GRANT {
        return Err(format!("report of {count} LSNs"));
    }
    let last = first.esn().0.checked_add(count - 1);
    if !first.epoch().is_valid() || first.esn() == Esn::INVALID || last.is_none() {
        return Err(format!(
            "report range {first} + {count} is not within one epoch"
        ));
    }
    Ok(())
}

/// Most batches in one `StoreMany`.
pub const MAX_STORE_BATCHES: usize = 256;

impl ClientRequest {
    pub(crate) fn encoded_len_hint(&self) -> usize {
        match self {
            ClientRequest::Store(batch) => batch.encoded_len_hint(),
            ClientRequest::StoreMany(batches) => {
                batches.iter().map(StoreBatch::encoded_len_hint).sum()
            }
            _ => super::ENCODED_OVERHEAD_HINT,
        }
    }

    fn check(&self, limits: &Limits) -> Result<(), String> {
        let user_log = |log: &LogId| {
            if log.is_user() {
                Ok(())
            } else {
                Err(format!("invalid user log id {}", log.0))
            }
        };
        match self {
            ClientRequest::GetClusterState | ClientRequest::StopRead => Ok(()),
            ClientRequest::ReadWindow { .. } => Ok(()),
            ClientRequest::GetLogMetadata { log } | ClientRequest::GetTail { log } => user_log(log),
            ClientRequest::CreateLog { log, attributes } => {
                user_log(log)?;
                attributes.validate().map_err(|e| e.to_string())
            }
            ClientRequest::Sequence { log, count, .. } => check_sequence(log, *count, limits),
            ClientRequest::ReportStored {
                log,
                first,
                count,
                copyset,
                ..
            } => check_report(log, first, *count, copyset),
            ClientRequest::ReportStoredMany(reports) => {
                if reports.is_empty() || reports.len() > MAX_REPORTS {
                    return Err(format!(
                        "{} reports in one ReportStoredMany, allowed 1..={MAX_REPORTS}",
                        reports.len()
                    ));
                }
                reports
                    .iter()
                    .try_for_each(|r| check_report(&r.log, &r.first, r.count, &r.copyset))
            }
            ClientRequest::SequenceMany(asks) => {
                if asks.is_empty() || asks.len() > MAX_SEQUENCE_ASKS {
                    return Err(format!(
                        "{} asks in one SequenceMany, allowed 1..={MAX_SEQUENCE_ASKS}",
                        asks.len()
                    ));
                }
                asks.iter()
                    .try_for_each(|a| check_sequence(&a.log, a.count, limits))
            }
            ClientRequest::Store(batch) => batch.check(limits),
            ClientRequest::Trim { log, .. } | ClientRequest::FindTime { log, .. } => user_log(log),
            ClientRequest::DataSize {
                log,
                from_ms,
                until_ms,
            } => {
                user_log(log)?;
                if from_ms > until_ms {
                    return Err(format!("empty time range {from_ms}..{until_ms}"));
                }
                Ok(())
            }
            ClientRequest::StartRead {
                log,
                from,
                until,
                window_until,
                filter,
            } => {
                user_log(log)?;
                if from > until || window_until < from {
                    return Err(format!(
                        "bad read range {from}..={until} (window until {window_until})"
                    ));
                }
                filter.check()
            }
            ClientRequest::ListLogs | ClientRequest::GetNodeStatus => Ok(()),
            ClientRequest::UpdateLog { log, attributes } => {
                user_log(log)?;
                attributes.validate().map_err(|e| e.to_string())
            }
            ClientRequest::ScanEstimate { log, from, until } => {
                user_log(log)?;
                if from > until {
                    return Err(format!("empty scan range {from}..={until}"));
                }
                Ok(())
            }
            ClientRequest::StoreMany(batches) => {
                if batches.is_empty() || batches.len() > MAX_STORE_BATCHES {
                    return Err(format!(
                        "{} batches in one StoreMany, allowed 1..={MAX_STORE_BATCHES}",
                        batches.len()
                    ));
                }
                let records: usize = batches.iter().map(|b| b.records.len()).sum();
                if records > limits.max_records_per_batch as usize {
                    return Err(format!(
                        "{records} records in one StoreMany, limit {}",
                        limits.max_records_per_batch
                    ));
                }
                batches.iter().try_for_each(|b| b.check(limits))
            }
            ClientRequest::ReportPreempted { log, epoch, seal } => {
                user_log(log)?;
                if !epoch.is_valid() || seal < epoch {
                    return Err(format!(
                        "preemption report of epoch {epoch} by seal {seal}: the epoch must be \
                         valid and the seal at or above it"
                    ));
                }
                Ok(())
            }
        }
    }
}

super::wire_message!(ClientRequest, "ClientRequest");

/// What a sequencer grants: LSNs and everything needed to place their copies.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Grant {
    pub log: LogId,
    /// The first granted LSN; the grant is `first ..= first + count − 1`, within one epoch.
    pub first: Lsn,
    pub count: u32,
    pub node_set: NodeSet,
    pub replication: u8,
    pub durability: Durability,
    /// The epoch's last known good ESN at grant time.
    pub lng: Esn,
    /// The timestamp the sequencer assigns to the granted records.
    pub timestamp_ms: u64,
    /// The sequencer's node, for completion reports.
    pub sequencer: NodeId,
}

impl Grant {
    fn check(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_GRANT || self.node_set.len() > Copyset::MAX {
            return Err(format!(
                "bad grant of {} LSNs over {} nodes",
                self.count,
                self.node_set.len()
            ));
        }
        if self.replication == 0 || self.replication as usize > self.node_set.len() {
            return Err(format!(
                "replication {} over {} nodes",
                self.replication,
                self.node_set.len()
            ));
        }
        Ok(())
    }
}

/// A node's answer to a [`ClientRequest`], or a message pushed on a read stream.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ClientResponse {
    ClusterState {
        nodes: Vec<NodeInfo>,
        version: u64,
    },
    LogMetadata(LogMetadata),
    LogCreated,
    Granted(Grant),
    /// Ask `owner` instead: it is the log's sequencer.
    Redirect {
        owner: NodeId,
    },
    /// The sequencer's window is full: back off and retry (backpressure).
    SeqNoBufs,
    /// The sequencer of this epoch was replaced (sealed at `seal`).
    Preempted {
        seal: Epoch,
    },
    StoreResult(StoreStatus),
    Ack,
    Trimmed {
        trim_point: Lsn,
    },
    FoundTime {
        lsn: Lsn,
    },
    Tail {
        lsn: Lsn,
    },
    DataSize {
        bytes: u64,
    },
    /// (Read stream) records in increasing LSN order.
    Records(Vec<ReadRecord>),
    /// (Read stream) the node has nothing of kind `kind` in `from ..= to`.
    Gap {
        kind: GapKind,
        from: Lsn,
        to: Lsn,
    },
    /// (Read stream) the node reached `until`; the stream is over.
    ReadDone,
    /// An application-level error.
    Error(RemoteError),
    /// Every log, in log order (answer to `ListLogs`).
    Logs(Vec<LogListing>),
    /// The log's record after `UpdateLog`.
    LogUpdated(LogMetadata),
    /// What this node would scan for a read (answer to `ScanEstimate`): the partitions whose
    /// directory entries for the log overlap the range (above the trim point), and their
    /// bytes, interpolated over LSNs for partitions the range covers in part.
    ScanEstimate {
        partitions: u32,
        bytes: u64,
    },
    /// The answer to `GetNodeStatus`.
    NodeStatus(Box<super::status::NodeStatus>),
    /// The answer to `StoreMany`: one entry per batch, in the request's order.
    StoreResults(Vec<StoreAnswer>),
    /// The answer to `SequenceMany`: one entry per ask, in the request's order.
    Sequenced(Vec<SequenceAnswer>),
}

/// What became of one ask of a `SequenceMany`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum SequenceAnswer {
    /// `Granted(grant)`.
    Granted(Grant),
    /// `Redirect { owner }`.
    Redirect { owner: NodeId },
    /// `SeqNoBufs`: the log's window is full.
    NoBufs,
    /// The log needs an activation here (it does not run here yet, or moves to a new
    /// epoch): ask again with a `Sequence` of its own, which activates it.
    NotActive,
    /// `Error(e)`.
    Error(RemoteError),
}

/// What became of one batch of a `StoreMany`: what a `Store` of it alone would have answered.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StoreAnswer {
    /// `StoreResult(status)`.
    Status(StoreStatus),
    /// An error answer (`Error(e)`): a bad batch, an expired deadline, an internal error.
    Error(RemoteError),
}

impl From<SequenceAnswer> for ClientResponse {
    /// The answer of a `Sequence` of the ask alone (`NotActive` has none: it becomes an
    /// `Unavailable` error).
    fn from(answer: SequenceAnswer) -> Self {
        match answer {
            SequenceAnswer::Granted(grant) => ClientResponse::Granted(grant),
            SequenceAnswer::Redirect { owner } => ClientResponse::Redirect { owner },
            SequenceAnswer::NoBufs => ClientResponse::SeqNoBufs,
            SequenceAnswer::NotActive => ClientResponse::Error(RemoteError::new(
                super::ErrorCode::Unavailable,
                "the log is not active on this sequencer",
            )),
            SequenceAnswer::Error(e) => ClientResponse::Error(e),
        }
    }
}

/// One log of a `Logs` answer.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogListing {
    pub log: LogId,
    pub metadata: LogMetadata,
}

/// Most logs one `Logs` answer may carry.
pub const MAX_LISTED_LOGS: usize = 1 << 16;

impl ClientResponse {
    pub(crate) fn encoded_len_hint(&self) -> usize {
        match self {
            ClientResponse::Records(records) => ReadRecord::records_len_hint(records),
            _ => super::ENCODED_OVERHEAD_HINT,
        }
    }

    fn check(&self, limits: &Limits) -> Result<(), String> {
        match self {
            ClientResponse::ClusterState { nodes, .. } if nodes.len() > 4096 => {
                Err(format!("{} nodes in cluster state", nodes.len()))
            }
            ClientResponse::Granted(g) => g.check(),
            ClientResponse::Records(records) => {
                if records.len() > MAX_READ_BATCH {
                    return Err(format!("{} records in one read message", records.len()));
                }
                let mut prev = Lsn::INVALID;
                for r in records {
                    r.check(limits)?;
                    if r.header.lsn <= prev {
                        return Err(format!("read records out of order at {}", r.header.lsn));
                    }
                    prev = r.header.lsn;
                }
                Ok(())
            }
            ClientResponse::Gap { from, to, .. } if from > to => {
                Err(format!("gap {from}..={to} is empty"))
            }
            ClientResponse::Error(e) => e.check(limits),
            ClientResponse::NodeStatus(status) => status.check(),
            ClientResponse::StoreResults(answers) => {
                if answers.is_empty() || answers.len() > MAX_STORE_BATCHES {
                    return Err(format!("{} answers in StoreResults", answers.len()));
                }
                answers.iter().try_for_each(|a| match a {
                    StoreAnswer::Error(e) => e.check(limits),
                    StoreAnswer::Status(_) => Ok(()),
                })
            }
            ClientResponse::Sequenced(answers) => {
                if answers.is_empty() || answers.len() > MAX_SEQUENCE_ASKS {
                    return Err(format!("{} answers in Sequenced", answers.len()));
                }
                answers.iter().try_for_each(|a| match a {
                    SequenceAnswer::Granted(g) => g.check(),
                    SequenceAnswer::Error(e) => e.check(limits),
                    SequenceAnswer::Redirect { .. }
                    | SequenceAnswer::NoBufs
                    | SequenceAnswer::NotActive => Ok(()),
                })
            }
            ClientResponse::Logs(logs) if logs.len() > MAX_LISTED_LOGS => Err(format!(
                "{} logs in one answer, limit {MAX_LISTED_LOGS}",
                logs.len()
            )),
            _ => Ok(()),
        }
    }
}

super::wire_message!(ClientResponse, "ClientResponse");
