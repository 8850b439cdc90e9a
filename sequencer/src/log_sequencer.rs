//! The sequencer of one log in one epoch, as a pure state machine (DESIGN §5): grants LSNs
//! through the epoch's window, takes completion reports, advances the LNG and the release
//! point, re-broadcasts releases, notices abandoned LSNs and ESN exhaustion, and stops granting
//! when preempted.
//!
//! **Preemption.** A seal at or above this epoch (learned from recovery meeting a higher seal,
//! or from a client whose store a storage node refused: [`LogSequencer::report_preempted`])
//! means a newer sequencer sealed the epoch: nothing granted in it can be stored any more, so
//! the epoch stops granting and stops re-broadcasting. It is not the end of the log here: the
//! runtime replaces a preempted epoch by a plain activation (no `if_current` condition, see
//! [`LogSequencer::reactivation_condition`]), because the newer epoch is the store's current
//! one and a conditional activation could never succeed.
//!
//! Events come in as method calls (with `now` passed in); what the runtime must do comes out of
//! [`LogSequencer::drain_actions`]. The one safety rule it enforces: **nothing of this epoch is
//! released while an older epoch is unrecovered**, because readers trust everything at or below
//! the release point to be final.

use std::time::{Duration, Instant};

use tally_common::wire::client::Grant;
use tally_common::{Durability, Epoch, LogId, Lsn, NodeId, NodeSet};

use crate::window::{EpochWindow, GrantError};

/// Timing knobs of a log's sequencer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencerTiming {
    /// How long a client has to store and report a granted LSN.
    pub append_timeout: Duration,
    /// Extra time before an unreported LSN counts as abandoned.
    pub abandon_grace: Duration,
    /// How often the release point is re-sent even when it did not move, so idle or restarted
    /// storage nodes learn it.
    pub release_rebroadcast: Duration,
}

impl Default for SequencerTiming {
    fn default() -> Self {
        SequencerTiming {
            append_timeout: Duration::from_secs(10),
            abandon_grace: Duration::from_secs(5),
            release_rebroadcast: Duration::from_secs(1),
        }
    }
}

/// What an activation handed this sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub log: LogId,
    /// This node.
    pub node: NodeId,
    pub epoch: Epoch,
    pub node_set: NodeSet,
    pub replication: u8,
    pub durability: Durability,
    pub max_in_flight: u32,
    /// Whether epochs before `epoch` still need recovery (LCE < epoch − 1).
    pub recovery_pending: bool,
    /// The last clean epoch at activation: every epoch up to it is recovered.
    pub last_clean_epoch: Epoch,
    /// The log's release point known at activation (the last clean epoch's tail, or a higher
    /// point this node released in an earlier epoch of its own, which may not be recovered).
    pub last_released: Lsn,
}

/// Why the sequencer wants a new epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReactivateReason {
    /// The epoch's ESN space is used up.
    EsnExhausted,
    /// An LSN was granted and never reported stored within the timeout; only recovery of this
    /// epoch can decide it, and recovery needs a new epoch.
    Abandoned(Lsn),
}

/// Work for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the release point to the node set (batched by the runtime across logs).
    Release { log: LogId, lsn: Lsn },
    /// Activate a new epoch for this log.
    Reactivate {
        log: LogId,
        reason: ReactivateReason,
    },
}

/// The answer to a `Sequence` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceOutcome {
    Granted(Grant),
    /// The window is full: back off and retry.
    NoBufs,
    /// A newer sequencer sealed this epoch.
    Preempted {
        seal: Epoch,
    },
    /// This sequencer is moving to a new epoch; retry shortly.
    Reactivating,
}

/// A completion report that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoredError {
    #[error("report for epoch {got}, this sequencer runs epoch {current}; recovery settles it")]
    OtherEpoch { got: Epoch, current: Epoch },
    #[error(transparent)]
    Window(#[from] crate::window::CompleteError),
}

/// The sequencer of one log in one epoch.
#[derive(Debug)]
pub struct LogSequencer {
    activation: Activation,
    timing: SequencerTiming,
    window: EpochWindow,
    recovery_pending: bool,
    last_released: Lsn,
    last_release_sent: Option<Instant>,
    preempted: Option<Epoch>,
    reactivating: bool,
    actions: Vec<Action>,
}

impl LogSequencer {
    pub fn new(activation: Activation, timing: SequencerTiming) -> LogSequencer {
        let window = EpochWindow::new(activation.epoch, activation.max_in_flight);
        LogSequencer {
            recovery_pending: activation.recovery_pending,
            last_released: activation.last_released,
            activation,
            timing,
            window,
            last_release_sent: None,
            preempted: None,
            reactivating: false,
            actions: Vec::new(),
        }
    }

    pub fn log(&self) -> LogId {
        self.activation.log
    }

    pub fn epoch(&self) -> Epoch {
        self.activation.epoch
    }

    pub fn last_released(&self) -> Lsn {
        self.last_released
    }

    pub fn window(&self) -> &EpochWindow {
        &self.window
    }

    /// Whether releases still wait for recovery of older epochs.
    pub fn recovery_pending(&self) -> bool {
        self.recovery_pending
    }

    /// The epoch below which every epoch is known recovered: this sequencer's own once its
    /// recovery is done; before that, the one after the last clean epoch at activation. A
    /// release names it, so storage nodes purge what they missed of those epochs before acting
    /// on it (DESIGN §7). A re-broadcast during recovery never claims the epochs still being
    /// recovered — not even the epoch of a release point carried over from this node's own
    /// earlier epoch, which is final up to that point but not recovered.
    pub fn recovered_below(&self) -> Epoch {
        if self.recovery_pending {
            let after_clean = self
                .activation
                .last_clean_epoch
                .next()
                .unwrap_or(self.epoch());
            after_clean.min(self.epoch())
        } else {
            self.epoch()
        }
    }

    pub fn is_preempted(&self) -> Option<Epoch> {
        self.preempted
    }

    /// Takes the actions produced since the last call.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// A client asks for `count` LSNs; `timestamp_ms` is the time the sequencer stamps on them.
    pub fn sequence(&mut self, count: u32, timestamp_ms: u64, now: Instant) -> SequenceOutcome {
        if let Some(seal) = self.preempted {
            return SequenceOutcome::Preempted { seal };
        }
        if self.reactivating {
            return SequenceOutcome::Reactivating;
        }
        match self.window.grant(count, now) {
            Ok(first) => SequenceOutcome::Granted(Grant {
                log: self.activation.log,
                first: Lsn::new(self.activation.epoch, first),
                count,
                node_set: self.activation.node_set.clone(),
                replication: self.activation.replication,
                durability: self.activation.durability,
                lng: self.window.lng(),
                timestamp_ms,
                sequencer: self.activation.node,
            }),
            Err(GrantError::NoBufs { .. }) | Err(GrantError::BadCount(_)) => {
                SequenceOutcome::NoBufs
            }
            Err(GrantError::EsnExhausted(_)) => {
                self.request_reactivation(ReactivateReason::EsnExhausted);
                SequenceOutcome::Reactivating
            }
        }
    }

    /// A client reports `first ..= first + count − 1` stored on R nodes.
    pub fn stored(&mut self, first: Lsn, count: u32, now: Instant) -> Result<(), StoredError> {
        if first.epoch() != self.activation.epoch {
            return Err(StoredError::OtherEpoch {
                got: first.epoch(),
                current: self.activation.epoch,
            });
        }
        if self.window.complete(first.esn(), count)? {
            self.maybe_release(now);
        }
        Ok(())
    }

    /// Recovery of every older epoch finished; `tail` is the last LSN it settled (the bridge).
    pub fn recovery_done(&mut self, tail: Lsn, now: Instant) {
        self.recovery_pending = false;
        if tail > self.last_released && tail < Lsn::epoch_start(self.activation.epoch) {
            self.last_released = tail;
        }
        self.maybe_release(now);
        // Even if nothing of this epoch is complete, tell the nodes about the recovered tail.
        self.send_release(now);
    }

    /// A seal at `seal` was seen for the log: if it is at or above this epoch, the epoch is
    /// preempted and stops granting. Returns whether this call preempted a running epoch (a
    /// lower seal, or an epoch already preempted, changes nothing but the highest seal known).
    pub fn preempted(&mut self, seal: Epoch) -> bool {
        if seal < self.activation.epoch {
            return false;
        }
        let first = self.preempted.is_none();
        self.preempted = Some(self.preempted.map_or(seal, |s| s.max(seal)));
        first
    }

    /// A client reports that a storage node refused a store of an LSN of `epoch` with
    /// `Preempted{seal}`. Applies only to this epoch: a report about an epoch this sequencer
    /// does not run (an older one it already replaced) says nothing about the current one.
    /// Returns whether the report preempted this epoch (see [`LogSequencer::preempted`]).
    pub fn report_preempted(&mut self, epoch: Epoch, seal: Epoch) -> bool {
        epoch == self.activation.epoch && self.preempted(seal)
    }

    /// The condition under which the epoch store may replace this epoch: `Some(epoch)` (only
    /// if this epoch is still the log's current one, so a sequencer that took the log
    /// meanwhile is not preempted by a stale reactivation), or `None` once this epoch is
    /// preempted: a newer epoch is current by definition, and the node replaces it only
    /// because it owns the log (or was asked with `no_redirect`).
    pub fn reactivation_condition(&self) -> Option<Epoch> {
        match self.preempted {
            Some(_) => None,
            None => Some(self.activation.epoch),
        }
    }

    /// Whether this epoch may grant: not preempted and not waiting for a new epoch.
    pub fn can_grant(&self) -> bool {
        self.preempted.is_none() && !self.reactivating
    }

    /// Periodic work: re-broadcast the release point, look for abandoned LSNs.
    pub fn tick(&mut self, now: Instant) {
        if self.preempted.is_some() {
            return;
        }
        let due = self
            .last_release_sent
            .is_none_or(|at| now.saturating_duration_since(at) >= self.timing.release_rebroadcast);
        if due && self.last_released != Lsn::INVALID {
            self.send_release(now);
        }
        let timeout = self.timing.append_timeout + self.timing.abandon_grace;
        if let Some(esn) = self.window.abandoned(now, timeout) {
            self.request_reactivation(ReactivateReason::Abandoned(Lsn::new(
                self.activation.epoch,
                esn,
            )));
        }
    }

    fn maybe_release(&mut self, now: Instant) {
        if self.recovery_pending {
            return;
        }
        let lng = self.window.lng_lsn();
        if self.window.lng().0 > 0 && lng > self.last_released {
            self.last_released = lng;
            self.send_release(now);
        }
    }

    fn send_release(&mut self, now: Instant) {
        if self.last_released == Lsn::INVALID {
            return;
        }
        self.last_release_sent = Some(now);
        self.actions.push(Action::Release {
            log: self.activation.log,
            lsn: self.last_released,
        });
    }

    fn request_reactivation(&mut self, reason: ReactivateReason) {
        if !self.reactivating {
            self.reactivating = true;
            self.actions.push(Action::Reactivate {
                log: self.activation.log,
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::Esn;

    fn activation(recovery_pending: bool) -> Activation {
        Activation {
            log: LogId(7),
            node: NodeId(1),
            epoch: Epoch(4),
            node_set: NodeSet::new(vec![NodeId(1), NodeId(2), NodeId(3)]),
            replication: 2,
            durability: Durability::Durable,
            max_in_flight: 8,
            recovery_pending,
            last_clean_epoch: Epoch(2),
            last_released: Lsn::new(Epoch(2), Esn(10)),
        }
    }

    fn grant(s: &mut LogSequencer, count: u32, now: Instant) -> Grant {
        match s.sequence(count, 1000, now) {
            SequenceOutcome::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn releases_follow_the_lng() {
        let t = Instant::now();
        let mut s = LogSequencer::new(activation(false), SequencerTiming::default());
        let g = grant(&mut s, 3, t);
        assert_eq!(g.first, Lsn::new(Epoch(4), Esn(1)));
        assert_eq!(g.replication, 2);
        s.stored(Lsn::new(Epoch(4), Esn(2)), 2, t).unwrap();
        assert!(s.drain_actions().is_empty(), "ESN 1 is still missing");
        s.stored(g.first, 1, t).unwrap();
        assert_eq!(
            s.drain_actions(),
            vec![Action::Release {
                log: LogId(7),
                lsn: Lsn::new(Epoch(4), Esn(3))
            }]
        );
        assert_eq!(s.last_released(), Lsn::new(Epoch(4), Esn(3)));
    }

    #[test]
    fn nothing_is_released_before_older_epochs_are_recovered() {
        let t = Instant::now();
        let mut s = LogSequencer::new(activation(true), SequencerTiming::default());
        let g = grant(&mut s, 2, t);
        s.stored(g.first, 2, t).unwrap();
        assert!(s.drain_actions().is_empty());
        assert_eq!(s.last_released(), Lsn::new(Epoch(2), Esn(10)));
        s.tick(t);
        // Only the old release point is re-broadcast, and it claims no epoch being recovered.
        assert_eq!(
            s.recovered_below(),
            Epoch(3),
            "epoch 2 is the last clean one"
        );
        // A release point carried over from this node's own earlier epoch 3 is final, but
        // epoch 3 is not recovered: releases must not claim it.
        let carried = LogSequencer::new(
            Activation {
                last_released: Lsn::new(Epoch(3), Esn(50)),
                ..activation(true)
            },
            SequencerTiming::default(),
        );
        assert_eq!(carried.recovered_below(), Epoch(3));
        assert_eq!(
            s.drain_actions(),
            vec![Action::Release {
                log: LogId(7),
                lsn: Lsn::new(Epoch(2), Esn(10))
            }]
        );
        s.recovery_done(Lsn::new(Epoch(3), Esn(5)), t);
        assert_eq!(s.recovered_below(), s.epoch());
        let actions = s.drain_actions();
        assert_eq!(
            actions.first(),
            Some(&Action::Release {
                log: LogId(7),
                lsn: Lsn::new(Epoch(4), Esn(2))
            })
        );
        assert_eq!(s.last_released(), Lsn::new(Epoch(4), Esn(2)));
    }

    #[test]
    fn window_full_is_backpressure_and_preemption_stops_grants() {
        let t = Instant::now();
        let mut s = LogSequencer::new(activation(false), SequencerTiming::default());
        grant(&mut s, 8, t);
        assert_eq!(s.sequence(1, 0, t), SequenceOutcome::NoBufs);
        s.preempted(Epoch(3));
        assert_eq!(
            s.sequence(1, 0, t),
            SequenceOutcome::NoBufs,
            "a lower seal does not preempt"
        );
        s.preempted(Epoch(5));
        assert_eq!(
            s.sequence(1, 0, t),
            SequenceOutcome::Preempted { seal: Epoch(5) }
        );
    }

    #[test]
    fn a_preemption_report_applies_to_the_running_epoch_only() {
        let t = Instant::now();
        let mut s = LogSequencer::new(activation(false), SequencerTiming::default());
        grant(&mut s, 1, t);
        assert_eq!(s.reactivation_condition(), Some(Epoch(4)));
        assert!(
            !s.report_preempted(Epoch(3), Epoch(9)),
            "an older epoch's report"
        );
        assert!(
            !s.report_preempted(Epoch(5), Epoch(9)),
            "an epoch never run here"
        );
        assert!(s.can_grant());
        assert_eq!(s.is_preempted(), None);

        assert!(s.report_preempted(Epoch(4), Epoch(6)));
        assert!(!s.can_grant());
        assert_eq!(s.is_preempted(), Some(Epoch(6)));
        assert_eq!(
            s.reactivation_condition(),
            None,
            "a preempted epoch is replaced unconditionally"
        );
        assert_eq!(
            s.sequence(1, 0, t),
            SequenceOutcome::Preempted { seal: Epoch(6) }
        );
        // Later reports raise the known seal without preempting again.
        assert!(!s.report_preempted(Epoch(4), Epoch(8)));
        assert!(!s.report_preempted(Epoch(4), Epoch(5)));
        assert_eq!(s.is_preempted(), Some(Epoch(8)));
        assert!(!s.preempted(Epoch(7)));
        assert_eq!(s.is_preempted(), Some(Epoch(8)));
    }

    #[test]
    fn a_preempted_epoch_stops_rebroadcasting_and_reactivating() {
        let timing = SequencerTiming::default();
        let t = Instant::now();
        let mut s = LogSequencer::new(activation(false), timing);
        grant(&mut s, 2, t);
        s.drain_actions();
        assert!(
            s.preempted(Epoch(4)),
            "a seal equal to the epoch preempts it"
        );
        // Neither the release point nor the abandoned grants produce work any more: the newer
        // sequencer's recovery settles this epoch.
        s.tick(t + timing.append_timeout + timing.abandon_grace + timing.release_rebroadcast);
        assert!(s.drain_actions().is_empty());
    }

    #[test]
    fn abandoned_lsn_triggers_one_reactivation() {
        let t = Instant::now();
        let timing = SequencerTiming::default();
        let mut s = LogSequencer::new(activation(false), timing);
        let g = grant(&mut s, 2, t);
        s.stored(g.first, 1, t).unwrap();
        s.drain_actions();
        let late = t + timing.append_timeout + timing.abandon_grace;
        s.tick(late);
        let reactivations: Vec<_> = s
            .drain_actions()
            .into_iter()
            .filter(|a| matches!(a, Action::Reactivate { .. }))
            .collect();
        assert_eq!(
            reactivations,
            vec![Action::Reactivate {
                log: LogId(7),
                reason: ReactivateReason::Abandoned(Lsn::new(Epoch(4), Esn(2)))
            }]
        );
        s.tick(late);
        assert!(
            !s.drain_actions()
                .iter()
                .any(|a| matches!(a, Action::Reactivate { .. }))
        );
        assert_eq!(s.sequence(1, 0, late), SequenceOutcome::Reactivating);
        assert!(!s.can_grant());
        assert_eq!(
            s.reactivation_condition(),
            Some(Epoch(4)),
            "replaced only if still current"
        );
    }

    #[test]
    fn reports_for_other_epochs_are_refused() {
        let t = Instant::now();
        let mut s = LogSequencer::new(activation(false), SequencerTiming::default());
        let err = s.stored(Lsn::new(Epoch(3), Esn(1)), 1, t).unwrap_err();
        assert_eq!(
            err,
            StoredError::OtherEpoch {
                got: Epoch(3),
                current: Epoch(4)
            }
        );
        assert!(
            s.stored(Lsn::new(Epoch(4), Esn(1)), 1, t).is_err(),
            "never granted"
        );
    }
}
