//! Recovery of a log's unclean epochs (DESIGN §9), as a pure state machine driven by the
//! sequencer: events in ([`Event`], with `now` passed in), actions out ([`Action`]); no socket,
//! disk or clock inside, so the runtime and the simulator execute the same decisions.
//!
//! Layout: `digest` (the copies the sealed nodes reported, merged per ESN by precedence, and the
//! pure [`RecoveryPlan`] made from them), `copyset` (which nodes a recovery write goes to),
//! `epoch_recovery` (one epoch: seal → digest → mutate → clean → last clean epoch) with its
//! per-attempt state in `round`,
//! `log_recovery` (the epochs `(LCE, e)` oldest first, then the tail handed back to
//! [`crate::LogSequencer::recovery_done`]).
//!
//! [`auth_status`] maps membership states to the quorum checker's authoritative statuses and
//! [`RecoveryTiming::tick_interval`] says how often the runtime ticks, so the runtime
//! (`crate::runtime::recovery`) decides nothing itself.
//!
//! Every message this module asks for carries an [`Attempt`]; the runtime echoes it in the
//! matching event. A restart (timeout) opens a new attempt, and answers to an older attempt are
//! ignored, so a late reply can never be counted for a write it does not describe.

mod copyset;
mod digest;
mod epoch_recovery;
mod log_recovery;
mod round;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tally_common::meta::StorageState;
use tally_common::quorum::AuthStatus;
use tally_common::wire::{ReadRecord, StoreBatch, StoreStatus};
use tally_common::{Epoch, Esn, LogId, Lsn, NodeId, RecoveredEpoch};

pub use copyset::choose_copyset;
pub use digest::{Authority, Decision, Digest, PlanEntry, RecoveryPlan};
pub use epoch_recovery::{EpochRecovery, EpochRecoveryConfig};
pub use log_recovery::LogRecovery;

/// Names one try at recovering one epoch. Restarts bump `number`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt {
    pub epoch: Epoch,
    pub number: u32,
}

/// Timing and limits of recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryTiming {
    /// How long to wait for the remaining nodes' digests once an f-majority answered.
    pub digest_grace: Duration,
    /// How often unanswered seals, digests, cleans and last-clean-epoch writes are re-sent.
    pub retry_interval: Duration,
    /// One attempt (seal through clean) must finish within this, or recovery restarts.
    pub attempt_timeout: Duration,
    /// Most ESNs being written at once (bounds the runtime's outstanding stores).
    pub max_mutations_in_flight: usize,
}

impl Default for RecoveryTiming {
    fn default() -> Self {
        RecoveryTiming {
            digest_grace: Duration::from_millis(100),
            retry_interval: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(30),
            max_mutations_in_flight: 256,
        }
    }
}

impl RecoveryTiming {
    /// How often the runtime should feed [`Event::Tick`]: half the shorter of the retry
    /// interval and the digest grace (at least 1 ms), so neither is overshot by more than half.
    pub fn tick_interval(&self) -> Duration {
        (self.retry_interval.min(self.digest_grace) / 2).max(Duration::from_millis(1))
    }
}

/// How recovery counts a storage node in membership state `state`. A node that lost its data
/// (or is gone without having been rebuilt) proves nothing by "I have nothing" and takes no
/// recovery writes; every other node is taken at its word. Nodes absent from membership keep
/// the default (fully authoritative): they must answer before absence proves anything.
pub fn auth_status(state: StorageState) -> AuthStatus {
    match state {
        StorageState::DataLoss | StorageState::Gone => AuthStatus::Unavailable,
        StorageState::Provisioning
        | StorageState::ReadWrite
        | StorageState::ReadOnly
        | StorageState::Disabled => AuthStatus::FullyAuthoritative,
    }
}

/// Something that happened, as reported by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `node` answered `Sealed` to the attempt's seal.
    Sealed {
        node: NodeId,
        attempt: Attempt,
        seal: Epoch,
        lng: Esn,
        tail: Lsn,
        /// The node says it may have lost acknowledged writes: not authoritative.
        data_loss: bool,
    },
    /// A node answered any request (seal, store, clean) with `Preempted`: a newer sequencer
    /// sealed the log. Aborts recovery when `seal` is above the recovery's seal.
    Preempted { node: NodeId, seal: Epoch },
    /// Records pushed on `node`'s digest stream.
    DigestRecords {
        node: NodeId,
        attempt: Attempt,
        records: Vec<ReadRecord>,
    },
    /// `node`'s digest stream sent everything it has.
    DigestDone { node: NodeId, attempt: Attempt },
    /// The answer to the store `seq` (from [`Action::SendStore`]).
    StoreReply {
        node: NodeId,
        attempt: Attempt,
        seq: u64,
        status: StoreStatus,
    },
    /// `node` acknowledged the attempt's `Clean`.
    Cleaned { node: NodeId, attempt: Attempt },
    /// The epoch store accepted the last clean epoch `epoch`.
    LceWritten { epoch: Epoch },
    /// The epoch store refused it; `current` is its last clean epoch.
    LceWriteFailed { epoch: Epoch, current: Epoch },
    /// A request to `node` failed: transport (timeout, connection lost), no address, an
    /// error answer. It names no attempt (any request to the node is affected); a runtime
    /// that knows which attempt the failed request belonged to uses
    /// [`LogRecovery::node_unreachable`], which drops reports about older attempts.
    NodeUnreachable { node: NodeId },
    /// Time passed (retries, grace period, timeouts).
    Tick,
}

/// Work for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Seal{log, epoch: seal}` to `node` (the node writes it synced before answering).
    SendSeal {
        node: NodeId,
        log: LogId,
        seal: Epoch,
        attempt: Attempt,
    },
    /// Open a digest stream on `node`: records of `epoch` with ESN > `after`, unreleased ones
    /// included, with their metadata.
    StartDigest {
        node: NodeId,
        log: LogId,
        epoch: Epoch,
        after: Esn,
        attempt: Attempt,
    },
    /// A recovery store of one ESN to one copyset member; the reply names `seq`.
    SendStore {
        node: NodeId,
        attempt: Attempt,
        seq: u64,
        batch: StoreBatch,
    },
    /// Tell `node` that `epoch` is recovered at `seal` with `tail`.
    SendClean {
        node: NodeId,
        log: LogId,
        epoch: Epoch,
        seal: Epoch,
        tail: Lsn,
        attempt: Attempt,
    },
    /// Write LCE = `epoch` (with `tail`) to the epoch store, with what the recovery decided
    /// (`outcome`, for storage nodes that missed the recovery and must purge by it).
    WriteLastCleanEpoch {
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        outcome: Option<RecoveredEpoch>,
    },
    /// (From [`EpochRecovery`]) `epoch` is recovered and recorded as clean.
    EpochRecovered { epoch: Epoch, tail: Lsn },
    /// (From [`LogRecovery`]) every older epoch is recovered: hand `tail` to
    /// `LogSequencer::recovery_done`.
    Done { tail: Lsn },
    /// Recovery stopped for good; nothing more will be sent.
    Aborted(AbortReason),
    /// The attempt timed out and `attempt` starts over from the seal: drop digest streams and
    /// outstanding requests of older attempts (their answers are ignored anyway).
    Restart { attempt: Attempt },
}

/// Why recovery gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// A node holds a seal above the recovery's: a newer sequencer exists and will recover.
    Preempted { seal: Epoch },
}

/// Why recovery cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error("no node set is known for epoch {0}")]
    NoNodeSet(Epoch),
    #[error("epoch {epoch}: {source}")]
    Quorum {
        epoch: Epoch,
        source: tally_common::quorum::QuorumError,
    },
    #[error("cannot recover epoch {epoch} at seal {seal}: the seal must be at or above it")]
    SealBelowEpoch { epoch: Epoch, seal: Epoch },
}
