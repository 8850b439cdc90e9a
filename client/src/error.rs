//! Why an append failed, and whether it may have happened anyway (DESIGN §6 steps 6–7).
//!
//! The distinction matters more than the cause: retrying an append that "certainly did not
//! happen" is safe, retrying one that may have happened is how silent duplicates are born.

use tally_common::{Epoch, LogId, Lsn, NodeId};

use crate::placement::PlacementError;

/// An append's failure as the application (or the caller resolving it) sees it.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AppendError {
    /// A payload is over `Limits::max_payload_bytes`. Nothing was sent.
    #[error("payload {index} is {size} bytes, the limit is {max}")]
    PayloadTooLarge {
        /// Position of the payload in the batch.
        index: usize,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The batch breaks a batch limit or does not match its grant. Nothing was sent.
    #[error("invalid append batch: {reason}")]
    InvalidBatch {
        /// Which limit or mismatch.
        reason: String,
    },
    /// No copyset can be formed from the grant's node set. Nothing was sent.
    #[error("cannot place copies: {0}")]
    Placement(#[from] PlacementError),
    /// The append timeout passed and no copy can exist: every store was refused or never
    /// reached its node.
    #[error("append timed out; no copy was stored")]
    TimedOut,
    /// A storage node found a payload not matching its checksum: the client's own copy is bad,
    /// so retrying would fail the same way. No copy can exist (else this is `Indeterminate`).
    #[error("node {node} found a checksum mismatch at {lsn}; the client's payload is corrupt")]
    ChecksumMismatch {
        /// The node that found it.
        node: NodeId,
        /// The record's LSN.
        lsn: Lsn,
    },
    /// The epoch was sealed at `seal` by a newer sequencer before the append completed. When
    /// `may_be_stored`, some copy may exist and the caller must settle the outcome by reading
    /// the LSN after recovery (DESIGN §6.7) rather than retry blindly.
    #[error("preempted by seal {seal} (copies may exist: {may_be_stored})")]
    Preempted {
        /// The epoch the log is sealed at.
        seal: Epoch,
        /// The sequencer now in charge, when the node knew it.
        sequencer: Option<NodeId>,
        /// Whether some copy may have been stored before the seal.
        may_be_stored: bool,
    },
    /// The append may or may not have happened: some copy may have been stored, and the
    /// append could not be completed.
    #[error("append outcome unknown: {cause}")]
    Indeterminate {
        /// What ended the append.
        cause: IndeterminateCause,
    },
    /// The log does not exist. Nothing was stored.
    #[error("log {log} does not exist")]
    LogNotFound {
        /// The log asked for.
        log: LogId,
    },
    /// No sequencer granted LSNs within the append timeout (unreachable, refusing, or its
    /// window stayed full). No copy was sent, so nothing was stored; LSNs it may have granted
    /// unseen are settled by the sequencer's abandoned-LSN path.
    #[error("no sequencer granted LSNs: {reason}")]
    NoSequencer {
        /// The last sequencer error seen.
        reason: String,
    },
    /// The client is shut down. Nothing was sent.
    #[error("the client is shut down")]
    Shutdown,
}

/// What ended an append whose copies may exist.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum IndeterminateCause {
    /// The append timeout passed after some copy may have been stored.
    #[error("the append timeout passed with copies possibly stored")]
    TimedOut,
    /// A node found a corrupt payload after other copies may have been stored.
    #[error("node {node} found a checksum mismatch at {lsn} after copies were possibly stored")]
    ChecksumMismatch {
        /// The node that found it.
        node: NodeId,
        /// The record's LSN.
        lsn: Lsn,
    },
}

impl AppendError {
    /// Whether the records were certainly not appended, so retrying (in a new grant) cannot
    /// produce a duplicate.
    pub fn certainly_not_appended(&self) -> bool {
        match self {
            AppendError::PayloadTooLarge { .. }
            | AppendError::InvalidBatch { .. }
            | AppendError::Placement(_)
            | AppendError::TimedOut
            | AppendError::ChecksumMismatch { .. }
            | AppendError::LogNotFound { .. }
            | AppendError::NoSequencer { .. }
            | AppendError::Shutdown => true,
            AppendError::Preempted { may_be_stored, .. } => !may_be_stored,
            AppendError::Indeterminate { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certainty_is_per_variant() {
        let certain = [
            AppendError::PayloadTooLarge {
                index: 0,
                size: 2,
                max: 1,
            },
            AppendError::TimedOut,
            AppendError::Placement(PlacementError::NotEnoughNodes {
                needed: 3,
                available: 2,
            }),
            AppendError::Preempted {
                seal: Epoch(4),
                sequencer: None,
                may_be_stored: false,
            },
        ];
        assert!(certain.iter().all(AppendError::certainly_not_appended));
        let uncertain = [
            AppendError::Indeterminate {
                cause: IndeterminateCause::TimedOut,
            },
            AppendError::Preempted {
                seal: Epoch(4),
                sequencer: None,
                may_be_stored: true,
            },
        ];
        assert!(!uncertain.iter().any(AppendError::certainly_not_appended));
    }
}
