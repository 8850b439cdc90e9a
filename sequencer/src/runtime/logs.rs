//! [`LogTable`]: the logs this node sequences, each a [`LogSlot`] holding the pure
//! [`LogSequencer`] of its current epoch, and activation through the epoch store (DESIGN §5).
//!
//! Locking: a slot's state sits behind a `std::sync::Mutex` that is only ever held for pure
//! state-machine calls, never across an await. Activation is serialized per log by a separate
//! async mutex held across the epoch-store call, so concurrent requests for a log that is not
//! running wait for one activation instead of each bumping the epoch. A waiter whose turn comes
//! after an attempt that finished while it waited takes that attempt's result (success or the
//! same error) rather than trying again. Waiters are bounded by the transport's concurrent
//! stream limit and each by its request deadline.
//!
//! Activation computes `recovery_pending = LCE < epoch − 1`. **Current limit:** recovery of
//! older epochs (`crate::recovery`) is not wired into the runtime yet, so a log activated with
//! unrecovered epochs grants and completes appends in its new epoch but never releases them;
//! its release point stays at the last clean tail. This is deliberate: releasing past an
//! unrecovered epoch would tell readers that undecided LSNs are final.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tally_common::{Epoch, LogId, Lsn, NodeId};
use tally_epochstore::{ActivateOptions, EpochStore, EpochStoreError};
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
}

/// What a state-machine call left for the runtime to do.
#[derive(Debug, Default)]
pub struct Effects {
    pub log: Option<LogId>,
    /// Release points to send to `targets`.
    pub releases: Vec<Lsn>,
    pub targets: Arc<[NodeId]>,
    /// The log asked for a new epoch.
    pub reactivate: Option<ReactivateReason>,
}

/// The running sequencer of one log.
#[derive(Debug)]
struct Running {
    seq: LogSequencer,
    /// Storage nodes that hear this log's releases: every node set in its history, so nodes
    /// of older epochs learn the release point too.
    targets: Arc<[NodeId]>,
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
}

impl LogState {
    fn serving(&self) -> bool {
        self.running.is_some() && self.reactivate.is_none()
    }

    fn drain(&mut self, log: LogId) -> Effects {
        let Some(running) = self.running.as_mut() else {
            return Effects::default();
        };
        let mut effects = Effects {
            log: Some(log),
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
        }
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
        match running.seq.stored(first, count, now) {
            Ok(()) => Report::Applied(state.drain(log)),
            Err(e) => Report::Refused(e),
        }
    }

    /// A storage node reported a seal at `seal` for `log` (learned by a client as
    /// `Preempted`): the running sequencer stops granting if the seal is at or above its epoch.
    pub fn preempted(&self, log: LogId, seal: Epoch) {
        if let Some(slot) = self.get(log)
            && let Some(running) = slot.state().running.as_mut()
        {
            running.seq.preempted(seal);
        }
    }

    /// The release point of `log` and its epoch, if it runs here.
    pub fn tail(&self, log: LogId) -> Option<(Epoch, Lsn)> {
        let slot = self.get(log)?;
        let state = slot.state();
        state
            .running
            .as_ref()
            .map(|r| (r.seq.epoch(), r.seq.last_released()))
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
    /// replaced, reactivates with `if_current`) unless another request did it meanwhile.
    /// `deadline` caps the epoch-store call together with the configured activation timeout.
    pub async fn activate(
        &self,
        store: &dyn EpochStore,
        slot: &Arc<LogSlot>,
        deadline: Instant,
    ) -> Result<(), ActivationError> {
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
                return Ok(());
            }
            state.running.as_ref().map(|r| r.seq.epoch())
        };
        let log = slot.log;
        let limit = self
            .activation_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let span =
            tracing::info_span!("activate", node = %self.me, log = %log, previous = ?if_current);
        let result = tokio::time::timeout(
            limit,
            store
                .activate(log, ActivateOptions { if_current })
                .instrument(span.clone()),
        )
        .await;
        let mut state = slot.state();
        state.attempts += 1;
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
                    last_released: meta.last_clean_tail.max(carried),
                };
                if recovery_pending {
                    tracing::warn!(
                        parent: &span,
                        %epoch,
                        last_clean_epoch = %meta.last_clean_epoch,
                        "activated with unrecovered epochs: appends are granted but not released \
                         until recovery runs (not wired yet)"
                    );
                } else {
                    tracing::info!(parent: &span, %epoch, "activated");
                }
                state.running = Some(Running {
                    seq: LogSequencer::new(pure, self.timing),
                    targets: targets.into(),
                });
                state.reactivate = None;
                Ok(())
            }
        };
        match &result {
            Ok(()) => state.last_failure = None,
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
