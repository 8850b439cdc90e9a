//! The node ↔ node protocol (ALPN `tally-node/1`): releases, seals, recovery digests,
//! recovery and rebuilding stores, cleaning (DESIGN §5, §9, §10).
//!
//! Variant order is the wire tag: append new variants at the end, never reorder or reuse.

use crate::ids::{Epoch, Esn, LogId, Lsn, NodeId};
use crate::limits::Limits;

use super::client::MAX_READ_BATCH;
use super::types::{ReadRecord, RemoteError, StoreBatch, StoreStatus};

/// Most (log, lsn) pairs in one batched release.
pub const MAX_RELEASES: usize = 65_536;

/// One log's release point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Release {
    pub log: LogId,
    /// Records up to and including this LSN may be shipped to readers.
    pub lsn: Lsn,
    /// The epoch of the sequencer that released `lsn` (≥ the epoch of `lsn`): every older
    /// epoch is recovered, so a node that missed one of those recoveries purges what it
    /// overruled before acting on this release (DESIGN §7).
    pub epoch: Epoch,
}

/// A request from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeRequest {
    Ping,
    /// Batched release points from a sequencer (also re-broadcast periodically).
    Release {
        sequencer: NodeId,
        releases: Vec<Release>,
    },
    /// Seal `log` at `epoch`: reject every later non-recovery store with epoch ≤ `epoch`.
    Seal {
        log: LogId,
        epoch: Epoch,
        sequencer: NodeId,
    },
    /// Open a digest stream (an `Open` frame): every record of `log` in `epoch` with ESN >
    /// `after`, including unreleased ones, with their metadata.
    StartDigest {
        log: LogId,
        epoch: Epoch,
        after: Esn,
    },
    /// A recovery or rebuilding store.
    Store(StoreBatch),
    /// Recovery of `epoch` is complete at `seal`; the node may mark it clean.
    Clean {
        log: LogId,
        epoch: Epoch,
        seal: Epoch,
        tail: Lsn,
    },
    /// Propagated trim (admin, retention).
    Trim {
        log: LogId,
        upto: Lsn,
    },
}

impl NodeRequest {
    pub(crate) fn encoded_len_hint(&self) -> usize {
        match self {
            NodeRequest::Store(batch) => batch.encoded_len_hint(),
            _ => super::ENCODED_OVERHEAD_HINT,
        }
    }

    fn check(&self, limits: &Limits) -> Result<(), String> {
        match self {
            NodeRequest::Release { releases, .. } if releases.len() > MAX_RELEASES => {
                Err(format!("{} releases in one message", releases.len()))
            }
            NodeRequest::Release { releases, .. } => match releases
                .iter()
                .find(|r| r.lsn != Lsn::INVALID && (!r.epoch.is_valid() || r.lsn.epoch() > r.epoch))
            {
                Some(r) => Err(format!(
                    "release of {} by the sequencer of epoch {}",
                    r.lsn, r.epoch
                )),
                None => Ok(()),
            },
            NodeRequest::Seal { epoch, .. } | NodeRequest::StartDigest { epoch, .. }
                if !epoch.is_valid() =>
            {
                Err(format!("invalid epoch {epoch}"))
            }
            NodeRequest::Clean { epoch, seal, .. } if !epoch.is_valid() || seal < epoch => {
                Err(format!("cannot clean epoch {epoch} at seal {seal}"))
            }
            NodeRequest::Store(batch) => batch.check(limits),
            _ => Ok(()),
        }
    }
}

super::wire_message!(NodeRequest, "NodeRequest");

/// A node's answer to a [`NodeRequest`], or a message pushed on a digest stream.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeResponse {
    Pong {
        node: NodeId,
    },
    Ack,
    /// The node is sealed at `seal` (maybe higher than asked); what it holds of the log.
    Sealed {
        seal: Epoch,
        lng: Esn,
        tail: Lsn,
        last_released: Lsn,
        /// The node may have lost acknowledged writes (an unclean restart after `fast`
        /// stores): its "no record" proves nothing, so recovery must not count it towards an
        /// authoritative digest, whatever membership says yet (DESIGN §7).
        data_loss: bool,
    },
    /// A higher seal exists: the asking sequencer was replaced.
    Preempted {
        seal: Epoch,
    },
    StoreResult(StoreStatus),
    /// (Digest stream) records in increasing LSN order.
    DigestRecords(Vec<ReadRecord>),
    /// (Digest stream) everything of the epoch has been sent.
    DigestDone,
    Error(RemoteError),
}

impl NodeResponse {
    pub(crate) fn encoded_len_hint(&self) -> usize {
        match self {
            NodeResponse::DigestRecords(records) => ReadRecord::records_len_hint(records),
            _ => super::ENCODED_OVERHEAD_HINT,
        }
    }

    fn check(&self, limits: &Limits) -> Result<(), String> {
        match self {
            NodeResponse::DigestRecords(records) => {
                if records.len() > MAX_READ_BATCH {
                    return Err(format!("{} records in one digest message", records.len()));
                }
                records.iter().try_for_each(|r| r.check(limits))
            }
            NodeResponse::Error(e) => e.check(limits),
            _ => Ok(()),
        }
    }
}

super::wire_message!(NodeResponse, "NodeResponse");
