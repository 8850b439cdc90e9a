//! [`RecoveryStats`]: the recovery counters of one sequencer node (started, running, done,
//! preempted, cancelled, failed log recoveries; epochs recorded clean; restarted attempts;
//! stores sent; what decided plans re-replicate, plug and bridge), updated by the recovery
//! drivers (`super::recovery`) and read as a [`RecoveryStatsSnapshot`] through
//! `SequencerNode::recovery_stats`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Recovery counters of one node. All only grow except `active`.
#[derive(Debug, Default)]
pub struct RecoveryStats {
    pub(super) started: AtomicU64,
    pub(super) active: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) preempted: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) epochs_recovered: AtomicU64,
    pub(super) restarts: AtomicU64,
    pub(super) stores_sent: AtomicU64,
    pub(super) records_rereplicated: AtomicU64,
    pub(super) holes_plugged: AtomicU64,
    pub(super) bridges: AtomicU64,
}

/// A copy of [`RecoveryStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStatsSnapshot {
    /// Log recoveries started (drivers spawned).
    pub started: u64,
    /// Log recoveries running now (including those waiting for a permit).
    pub active: u64,
    /// Log recoveries that finished and let their log release.
    pub completed: u64,
    /// Log recoveries aborted by a higher seal (this node stepped down for the log).
    pub preempted: u64,
    /// Log recoveries stopped because their epoch stopped running here, or at shutdown.
    pub cancelled: u64,
    /// Log recoveries that could not start (the metadata lacks a node set).
    pub failed: u64,
    /// Epochs recorded clean in the epoch store.
    pub epochs_recovered: u64,
    /// Attempts restarted after the attempt timeout.
    pub restarts: u64,
    /// Recovery stores sent (one per copyset member).
    pub stores_sent: u64,
    /// ESNs whose record a decided plan re-replicates (per attempt).
    pub records_rereplicated: u64,
    /// ESNs a decided plan plugs with a hole (per attempt).
    pub holes_plugged: u64,
    /// Bridge records a decided plan writes (per attempt).
    pub bridges: u64,
}

impl RecoveryStats {
    pub fn snapshot(&self) -> RecoveryStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RecoveryStatsSnapshot {
            started: get(&self.started),
            active: get(&self.active),
            completed: get(&self.completed),
            preempted: get(&self.preempted),
            cancelled: get(&self.cancelled),
            failed: get(&self.failed),
            epochs_recovered: get(&self.epochs_recovered),
            restarts: get(&self.restarts),
            stores_sent: get(&self.stores_sent),
            records_rereplicated: get(&self.records_rereplicated),
            holes_plugged: get(&self.holes_plugged),
            bridges: get(&self.bridges),
        }
    }
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}
