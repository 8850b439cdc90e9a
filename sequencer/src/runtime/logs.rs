//! [`LogTable`]: the logs this node sequences, each a [`LogSlot`] holding the pure
//! [`LogSequencer`] of its current epoch, and activation through the epoch store (DESIGN §5).
//!
//! Locking: a slot's state sits behind a `std::sync::Mutex` that is only ever held for pure
//! state-machine calls, never across an await. Activation is serialized per log by a separate
//! async mutex held across the epoch-store call, so concurrent requests for a log that is not
//! running wait for one activation instead of each bumping the epoch. A waiter whose turn comes
//! after an attempt that finished while it waited takes that attempt's result (success or the
//! same error) rather than trying again. The epoch-store call is bounded by
//! `activation_timeout` alone, not by the deadline of the request that started it: the caller
//! (`SequencerNode::activate`) runs it as a task of its own, so a client that gives up does not
//! cut an activation short (which could bump the epoch in the store and lose the answer) and
//! its retry finds the log running. Requests waiting for an activation are bounded by the
//! transport's concurrent stream limit and each by its own deadline.
//!
//! Preemption: a seal at or above the running epoch (recovery meeting a higher seal, or a
//! client's `ReportPreempted` naming the running epoch, [`LogTable::report_preempted`]) stops
//! the epoch from granting, cancels its recovery (the newer sequencer recovers it) and ends a
//! `no_redirect` stickiness. The slot is not forgotten: the next activation replaces the epoch
//! with a plain (unconditional) activation, so the owner of the log moves to a new epoch, above
//! the seal because epochs come from the store. Whether a request may activate here at all
//! (placement, `no_redirect`) is the service's decision, made before it asks.
//!
//! Activation computes `recovery_pending = LCE < epoch − 1`. When it is, the activation hands
//! back a [`RecoveryJob`] (the epoch and the metadata read with it) that the caller runs as a
//! recovery driver (`super::recovery`); until the driver calls [`LogSlot::recovery_done`] the
//! log grants and completes appends in its new epoch but releases nothing, because releasing
//! past an unrecovered epoch would tell readers that undecided LSNs are final. Each job carries
//! a cancellation token kept with the running epoch: replacing the epoch (reactivation) or
//! stepping down cancels the job, and a late `recovery_done` for an epoch no longer running is
//! ignored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tally_common::metrics::SequencerMetrics;
use tally_common::{Epoch, LogId, LogMetadata, Lsn, NodeId};
use tally_epochstore::{ActivateOptions, EpochStore, EpochStoreError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::log_sequencer::{
    Action, Activation, LogSequencer, ReactivateReason, SequencerTiming, StoredError,
};

/// Why a log could not be activated here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    #[error(transparent)]
    Store(#[from] EpochStoreError),
    #[error("activation did not finish within {0:?}")]
    Timeout(Duration),
    /// A conditional reactivation found a newer epoch: another sequencer took the log.
    #[error("another sequencer runs epoch {current}")]
    Superseded { current: Epoch },
    #[error("this node already sequences {max} logs")]
    TooManyLogs { max: usize },
    #[error("the sequencer is shutting down")]
    ShuttingDown,
}

/// What a state-machine call left for the runtime to do.
#[derive(Debug, Default)]
pub struct Effects {
    pub log: Option<LogId>,
    /// Every epoch below this one is recovered (`LogSequencer::recovered_below`): releases
    /// name it, so storage nodes can purge what they missed of those epochs.
    pub epoch: Epoch,
    /// Release points to send to `targets`.
    pub releases: Vec<Lsn>,
    pub targets: Arc<[NodeId]>,
    /// The log asked for a new epoch.
    pub reactivate: Option<ReactivateReason>,
    /// (Completion reports) when the reported batch was granted, if this epoch granted it.
    pub granted_at: Option<Instant>,
}

/// One log this node runs, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    pub log: LogId,
    /// The epoch it runs here.
    pub epoch: Epoch,
    /// Readers may read up to here.
    pub last_released: Lsn,
    /// The next LSN a grant would start at.
    pub next_lsn: Lsn,
    /// LSNs of this epoch granted and not released yet.
    pub unreleased: u64,
    /// Releases wait for recovery of older epochs.
    pub recovering: bool,
    /// A newer sequencer sealed the epoch.
    pub preempted: bool,
    /// LSNs granted for the log on this node since its slot was made (every epoch).
    pub granted: u64,
}

/// Recovery of the epochs `(LCE, epoch)` a fresh activation inherited, for the caller of
/// [`LogTable::activate`] to run.
#[derive(Debug, Clone)]
pub struct RecoveryJob {
    pub log: LogId,
    /// The epoch this node now runs; recovery seals at `epoch − 1`.
    pub epoch: Epoch,
    /// The log's metadata as written by the activation (LCE, node-set history).
    pub metadata: LogMetadata,
    /// Cancelled when the epoch stops running here (reactivation, step-down).
    pub cancel: CancellationToken,
}

/// The running sequencer of one log.
#[derive(Debug)]
struct Running {
    seq: LogSequencer,
    /// Storage nodes that hear this log's releases: every node set in its history, so nodes
    /// of older epochs learn the release point too.
    targets: Arc<[NodeId]>,
    /// The recovery job of this epoch, while one may be running.
    recovery: Option<CancellationToken>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The epoch no longer runs here: its recovery must stop sending.
        if let Some(token) = &self.recovery {
            token.cancel();
        }
    }
}

#[derive(Debug, Default)]
struct LogState {
    running: Option<Running>,
    /// The running epoch asked to be replaced (ESN exhaustion, abandoned LSN).
    reactivate: Option<ReactivateReason>,
    /// Finished activation attempts, and the error of the last one if it failed.
    attempts: u64,
    last_failure: Option<ActivationError>,
    /// Serve without redirecting until then (after a `no_redirect` activation).
    no_redirect_until: Option<Instant>,
    /// Dropped from the table (the log does not exist); look the log up again.
    retired: bool,
    /// LSNs granted since the slot was made (every epoch), for per-log append rates.
    granted: u64,
}

impl LogState {
    fn serving(&self) -> bool {
        self.reactivate.is_none() && self.running.as_ref().is_some_and(|r| r.seq.can_grant())
    }

    /// Marks the running epoch preempted by `seal` if `preempt` says it applies; returns
    /// whether it newly did.
    fn preempt(&mut self, preempt: impl FnOnce(&mut LogSequencer) -> bool) -> bool {
        let Some(running) = self.running.as_mut() else {
            return false;
        };
        if !preempt(&mut running.seq) {
            return false;
        }
        // The newer sequencer recovers this epoch and the ones before it.
        if let Some(token) = running.recovery.take() {
            token.cancel();
        }
        // A takeover forced by `no_redirect` is over: the log belongs to its owner again.
        self.no_redirect_until = None;
        true
    }

    fn drain(&mut self, log: LogId) -> Effects {
        let Some(running) = self.running.as_mut() else {
            return Effects::default();
        };
        let mut effects = Effects {
            log: Some(log),
            epoch: running.seq.recovered_below(),
            targets: running.targets.clone(),
            ..Effects::default()
        };
        for action in running.seq.drain_actions() {
            match action {
                Action::Release { lsn, .. } => effects.releases.push(lsn),
                Action::Reactivate { reason, .. } => {
                    self.reactivate.get_or_insert(reason);
                    effects.reactivate = Some(reason);
                }
            }
        }
        effects
    }
}

/// One log's slot in the table.
#[derive(Debug)]
pub struct LogSlot {
    log: LogId,
    activation: tokio::sync::Mutex<()>,
    state: Mutex<LogState>,
}

impl LogSlot {
    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log(&self) -> LogId {
        self.log
    }

    /// Recovery of the epochs before `epoch` finished with `tail`: the log may release. `None`
    /// if `epoch` no longer runs here (the answer of a recovery that was replaced).
    pub fn recovery_done(&self, epoch: Epoch, tail: Lsn, now: Instant) -> Option<Effects> {
        let mut state = self.state();
        let running = state.running.as_mut()?;
        if running.seq.epoch() != epoch {
            return None;
        }
        running.recovery = None;
        running.seq.recovery_done(tail, now);
        Some(state.drain(self.log))
    }

    /// Recovery for `epoch` met a seal at `seal` (> `epoch − 1`): another sequencer took the
    /// log; the epoch stops granting (the preemption path of [`LogTable::report_preempted`]).
    pub fn recovery_preempted(&self, epoch: Epoch, seal: Epoch) {
        self.state()
            .preempt(|seq| seq.epoch() == epoch && seq.preempted(seal));
    }

    /// The running epoch and the seal that preempted it, if it is preempted.
    pub fn preemption(&self) -> Option<(Epoch, Epoch)> {
        let state = self.state();
        let running = state.running.as_ref()?;
        running
            .seq
            .is_preempted()
            .map(|seal| (running.seq.epoch(), seal))
    }

    /// Whether the running epoch still waits for recovery of older epochs (`None`: the log
    /// does not run here).
    pub fn recovery_pending(&self) -> Option<bool> {
        let state = self.state();
        state.running.as_ref().map(|r| r.seq.recovery_pending())
    }
}

/// The result of trying to sequence without activating.
#[derive(Debug)]
pub enum TrySequence {
    Outcome(crate::log_sequencer::SequenceOutcome, Effects),
    /// Not running here, or the running epoch must be replaced first.
    NeedsActivation,
    /// The slot was retired; look the log up again.
    Retired,
}

/// The answer to a completion report.
#[derive(Debug)]
pub enum Report {
    Applied(Effects),
    NotRunning,
    Refused(StoredError),
}

/// Every log this node sequences.
#[derive(Debug)]
pub struct LogTable {
    me: NodeId,
    timing: SequencerTiming,
    max_logs: usize,
    activation_timeout: Duration,
    slots: Mutex<HashMap<LogId, Arc<LogSlot>>>,
    metrics: SequencerMetrics,
}

impl LogTable {
    pub fn new(
        me: NodeId,
        timing: SequencerTiming,
        max_logs: usize,
        activation_timeout: Duration,
    ) -> LogTable {
        LogTable {
            me,
            timing,
            max_logs,
            activation_timeout,
            slots: Mutex::new(HashMap::new()),
            metrics: SequencerMetrics::default(),
        }
    }

    /// Records activations in `metrics` (a fresh handle by default).
    pub fn with_metrics(mut self, metrics: SequencerMetrics) -> LogTable {
        self.metrics = metrics;
        self
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<LogId, Arc<LogSlot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `log`, created if missing (within `max_logs`).
    pub fn slot(&self, log: LogId) -> Result<Arc<LogSlot>, ActivationError> {
        let mut slots = self.slots();
        if let Some(slot) = slots.get(&log) {
            return Ok(slot.clone());
        }
        if slots.len() >= self.max_logs {
            return Err(ActivationError::TooManyLogs { max: self.max_logs });
        }
        let slot = Arc::new(LogSlot {
            log,
            activation: tokio::sync::Mutex::new(()),
            state: Mutex::new(LogState::default()),
        });
        slots.insert(log, slot.clone());
        Ok(slot)
    }

    /// The slot of `log` if it exists.
    pub fn get(&self, log: LogId) -> Option<Arc<LogSlot>> {
        self.slots().get(&log).cloned()
    }

    /// Whether `slot` serves without redirecting right now.
    pub fn sticky(&self, slot: &LogSlot, now: Instant) -> bool {
        slot.state().no_redirect_until.is_some_and(|t| now < t)
    }

    /// Keep serving `slot` without redirecting until `until`.
    pub fn set_sticky(&self, slot: &LogSlot, until: Instant) {
        slot.state().no_redirect_until = Some(until);
    }

    /// Whether `slot` is handing its log back to the owner at `now`: a `no_redirect`
    /// takeover ended at most `grace` ago, and its epoch still runs here unpreempted with
    /// grants not completed yet. Until they complete (or `grace` passes) requests for the log
    /// should be told to retry rather than redirected, so that the owner's new epoch, which
    /// seals this one, does not fail the appends still writing their copies here.
    pub fn handing_back(&self, slot: &LogSlot, now: Instant, grace: Duration) -> bool {
        let state = slot.state();
        let Some(until) = state.no_redirect_until else {
            return false;
        };
        now >= until
            && now.saturating_duration_since(until) < grace
            && state.serving()
            && state
                .running
                .as_ref()
                .is_some_and(|r| r.seq.window().in_flight() > 0)
    }

    /// Sequences if the log runs here and needs no new epoch.
    pub fn try_sequence(
        &self,
        slot: &LogSlot,
        count: u32,
        timestamp_ms: u64,
        now: Instant,
    ) -> TrySequence {
        let mut state = slot.state();
        if state.retired {
            return TrySequence::Retired;
        }
        if !state.serving() {
            return TrySequence::NeedsActivation;
        }
        let running = state.running.as_mut().expect("serving implies running");
        let outcome = running.seq.sequence(count, timestamp_ms, now);
        if let crate::log_sequencer::SequenceOutcome::Granted(grant) = &outcome {
            state.granted += u64::from(grant.count);
        }
        let effects = state.drain(slot.log);
        TrySequence::Outcome(outcome, effects)
    }

    /// Applies a completion report.
    pub fn stored(&self, log: LogId, first: Lsn, count: u32, now: Instant) -> Report {
        let Some(slot) = self.get(log) else {
            return Report::NotRunning;
        };
        let mut state = slot.state();
        let Some(running) = state.running.as_mut() else {
            return Report::NotRunning;
        };
        let granted_at = (first.epoch() == running.seq.epoch())
            .then(|| running.seq.window().granted_at(first.esn()))
            .flatten();
        match running.seq.stored(first, count, now) {
            Ok(()) => Report::Applied(Effects {
                granted_at,
                ..state.drain(log)
            }),
            Err(e) => Report::Refused(e),
        }
    }

    /// A client reports that a storage node refused a store of `log` in `epoch` with
    /// `Preempted{seal}`: if `epoch` runs here, it stops granting (see the module notes).
    /// A report about another epoch (one this node already replaced) is ignored. Returns
    /// whether the report preempted the running epoch.
    pub fn report_preempted(&self, log: LogId, epoch: Epoch, seal: Epoch) -> bool {
        self.get(log).is_some_and(|slot| {
            slot.state()
                .preempt(|seq| seq.report_preempted(epoch, seal))
        })
    }

    /// The running epoch of `log` and the seal that preempted it, if it is preempted here.
    pub fn preemption(&self, log: LogId) -> Option<(Epoch, Epoch)> {
        self.get(log)?.preemption()
    }

    /// The release point of `log` and its epoch, if it runs here and is not preempted (the
    /// release point of a preempted epoch is stale: a newer sequencer runs the log).
    pub fn tail(&self, log: LogId) -> Option<(Epoch, Lsn)> {
        let slot = self.get(log)?;
        let state = slot.state();
        state
            .running
            .as_ref()
            .filter(|r| r.seq.is_preempted().is_none())
            .map(|r| (r.seq.epoch(), r.seq.last_released()))
    }

    /// Whether `log` runs here and still waits for recovery of older epochs.
    pub fn recovery_pending(&self, log: LogId) -> Option<bool> {
        self.get(log)?.recovery_pending()
    }

    /// The logs running here, in log order, at most `max` of them, and how many run in all.
    pub fn summaries(&self, max: usize) -> (usize, Vec<LogSummary>) {
        let slots: Vec<Arc<LogSlot>> = self.slots().values().cloned().collect();
        let mut out = Vec::new();
        for slot in slots {
            let state = slot.state();
            let Some(running) = state.running.as_ref() else {
                continue;
            };
            let seq = &running.seq;
            let epoch = seq.epoch();
            let last_released = seq.last_released();
            let next = seq.window().next_esn().0;
            let released_here = if last_released.epoch() == epoch {
                last_released.esn().0
            } else {
                0
            };
            out.push(LogSummary {
                log: slot.log,
                epoch,
                last_released,
                next_lsn: Lsn::new(epoch, tally_common::Esn(next)),
                unreleased: u64::from(next.saturating_sub(1).saturating_sub(released_here)),
                recovering: seq.recovery_pending(),
                preempted: seq.is_preempted().is_some(),
                granted: state.granted,
            });
        }
        out.sort_unstable_by_key(|s| s.log);
        let total = out.len();
        out.truncate(max);
        (total, out)
    }

    /// Ticks every running log; returns what they asked for.
    pub fn tick(&self, now: Instant) -> Vec<Effects> {
        let slots: Vec<Arc<LogSlot>> = self.slots().values().cloned().collect();
        let mut out = Vec::new();
        for slot in slots {
            let mut state = slot.state();
            if let Some(running) = state.running.as_mut() {
                running.seq.tick(now);
                let effects = state.drain(slot.log);
                if !effects.releases.is_empty() || effects.reactivate.is_some() {
                    out.push(effects);
                }
            }
        }
        out
    }

    /// Makes `slot` run a current epoch: activates (or, if the running epoch asked to be
    /// replaced, reactivates with `if_current`; if it was preempted, activates unconditionally)
    /// unless another request did it meanwhile. The epoch-store call is bounded by the
    /// configured activation timeout, counted from when this call's turn comes.
    /// Returns the recovery the new epoch needs, if this call activated one with unrecovered
    /// older epochs; the caller must run it or the log never releases.
    pub async fn activate(
        &self,
        store: &dyn EpochStore,
        slot: &Arc<LogSlot>,
    ) -> Result<Option<RecoveryJob>, ActivationError> {
        let seen = slot.state().attempts;
        let _turn = slot.activation.lock().await;
        let if_current = {
            let state = slot.state();
            if state.attempts > seen
                && let Some(failure) = &state.last_failure
            {
                return Err(failure.clone());
            }
            if state.serving() || state.retired {
                return Ok(None);
            }
            state
                .running
                .as_ref()
                .and_then(|r| r.seq.reactivation_condition())
        };
        let log = slot.log;
        let limit = self.activation_timeout;
        let preempted = slot.preemption();
        let span = tracing::info_span!(
            "activate",
            node = %self.me,
            log = %log,
            if_current = ?if_current,
            preempted = ?preempted,
        );
        let result = tokio::time::timeout(
            limit,
            store
                .activate(log, ActivateOptions { if_current })
                .instrument(span.clone()),
        )
        .await;
        let mut state = slot.state();
        state.attempts += 1;
        match &result {
            Ok(Ok(_)) => self.metrics.activations.inc(),
            _ => self.metrics.activation_failures.inc(),
        };
        let result = match result {
            Err(_) => Err(ActivationError::Timeout(limit)),
            Ok(Err(EpochStoreError::ConditionFailed { current })) => {
                // Another sequencer took the log while ours asked for a new epoch: step down.
                tracing::info!(parent: &span, %current, "log was taken over; stepping down");
                state.running = None;
                state.reactivate = None;
                Err(ActivationError::Superseded { current })
            }
            Ok(Err(e)) => Err(ActivationError::Store(e)),
            Ok(Ok(activation)) => {
                let epoch = activation.epoch;
                let meta = &activation.metadata;
                // A release point this node already sent for the log stays valid (everything
                // at or below it is final); never hand a lower one to the new epoch.
                let carried = state
                    .running
                    .as_ref()
                    .map_or(Lsn::INVALID, |r| r.seq.last_released());
                let recovery_pending = meta.last_clean_epoch < epoch.prev();
                let mut targets: Vec<NodeId> = meta
                    .history
                    .iter()
                    .flat_map(|e| e.node_set.nodes().iter().copied())
                    .collect();
                targets.sort_unstable();
                targets.dedup();
                let pure = Activation {
                    log,
                    node: self.me,
                    epoch,
                    node_set: activation.node_set.node_set.clone(),
                    replication: activation.node_set.replication,
                    durability: meta.attributes.durability,
                    max_in_flight: meta.attributes.max_in_flight,
                    recovery_pending,
                    last_clean_epoch: meta.last_clean_epoch,
                    last_released: meta.last_clean_tail.max(carried),
                };
                let job = recovery_pending.then(|| RecoveryJob {
                    log,
                    epoch,
                    metadata: meta.clone(),
                    cancel: CancellationToken::new(),
                });
                if let Some((_, seal)) = preempted
                    && epoch <= seal
                {
                    // Epochs come from the store, so a seal above the store's newest epoch
                    // means the store lost updates (restored from a backup?) or something
                    // else sealed the log. Grants in this epoch will be refused too, and each
                    // report moves the log one epoch further until it passes the seal.
                    tracing::error!(parent: &span, %epoch, %seal,
                        "the epoch store handed out an epoch at or below a seal storage nodes hold");
                }
                tracing::info!(
                    parent: &span,
                    %epoch,
                    last_clean_epoch = %meta.last_clean_epoch,
                    recovery_pending,
                    "activated"
                );
                // Replacing the old `Running` cancels its recovery, if one still ran.
                state.running = Some(Running {
                    seq: LogSequencer::new(pure, self.timing),
                    targets: targets.into(),
                    recovery: job.as_ref().map(|j| j.cancel.clone()),
                });
                state.reactivate = None;
                Ok(job)
            }
        };
        match &result {
            Ok(_) => state.last_failure = None,
            Err(e) => {
                state.last_failure = Some(e.clone());
                if matches!(e, ActivationError::Store(EpochStoreError::NotFound { .. }))
                    && state.running.is_none()
                {
                    state.retired = true;
                    drop(state);
                    let mut slots = self.slots();
                    if slots.get(&log).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                        slots.remove(&log);
                    }
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_sequencer::SequenceOutcome;
    use tally_common::meta::{LogAttributes, NodeInfo, Roles, StorageState};
    use tally_epochstore::{MemoryEpochStore, NodeLease};

    /// A table whose log 1 runs in epoch 1 (one storage node, R = 1).
    async fn running() -> (LogTable, Arc<LogSlot>, MemoryEpochStore, NodeLease) {
        let store = MemoryEpochStore::new();
        let storage = NodeInfo {
            id: NodeId(101),
            address: "127.0.0.1:4101".into(),
            roles: Roles {
                sequencer: false,
                storage: true,
            },
            location: String::new(),
            weight: 1,
            state: StorageState::ReadWrite,
            incarnation: 0,
        };
        let lease = store
            .register_node(storage, Duration::from_secs(60))
            .await
            .unwrap();
        let attributes = LogAttributes {
            replication: 1,
            ..LogAttributes::default()
        };
        store.create_log(LogId(1), attributes).await.unwrap();
        let table = LogTable::new(
            NodeId(1),
            SequencerTiming::default(),
            16,
            Duration::from_secs(5),
        );
        let slot = table.slot(LogId(1)).unwrap();
        let job = table.activate(&store, &slot).await.unwrap();
        assert!(job.is_none(), "a fresh log has nothing to recover");
        (table, slot, store, lease)
    }

    #[tokio::test]
    async fn a_takeover_hands_back_once_its_grants_complete_or_the_grace_passes() {
        let (table, slot, _store, _lease) = running().await;
        let grace = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Not a takeover: nothing to hand back.
        assert!(!table.handing_back(&slot, at(0), grace));
        table.set_sticky(&slot, at(1000));
        let TrySequence::Outcome(SequenceOutcome::Granted(grant), _) =
            table.try_sequence(&slot, 2, 0, at(10))
        else {
            panic!("a running log grants");
        };
        // Still sticky: it serves, it does not hand back.
        assert!(table.sticky(&slot, at(999)));
        assert!(!table.handing_back(&slot, at(999), grace));
        // Stickiness over with grants in flight: hand back (retry) until they complete …
        assert!(!table.sticky(&slot, at(1000)));
        assert!(table.handing_back(&slot, at(1000), grace));
        assert!(table.handing_back(&slot, at(2999), grace));
        // … or the grace passes.
        assert!(!table.handing_back(&slot, at(3000), grace));
        assert!(!table.handing_back(&slot, at(1500), Duration::ZERO));
        assert!(matches!(
            table.stored(LogId(1), grant.first, 2, at(1100)),
            Report::Applied(_)
        ));
        assert!(!table.handing_back(&slot, at(1200), grace));
    }

    #[tokio::test]
    async fn a_preempted_takeover_does_not_hold_the_log_back() {
        let (table, slot, _store, _lease) = running().await;
        let t0 = Instant::now();
        table.set_sticky(&slot, t0);
        let TrySequence::Outcome(SequenceOutcome::Granted(_), _) =
            table.try_sequence(&slot, 1, 0, t0)
        else {
            panic!("a running log grants");
        };
        let later = t0 + Duration::from_millis(10);
        assert!(table.handing_back(&slot, later, Duration::from_secs(1)));
        assert!(table.report_preempted(LogId(1), Epoch(1), Epoch(1)));
        assert!(!table.handing_back(&slot, later, Duration::from_secs(1)));
    }
}
