//! Recovery of every unclean epoch of one log: the epochs `(LCE, e)` of a sequencer activated
//! in epoch `e` (DESIGN §5 activation, §9 step 1), one [`EpochRecovery`] at a time, oldest
//! first, each sealed at `e − 1`. Each finished epoch is reported as
//! [`Action::EpochRecovered`] (for the runtime's logs and counters) before the next starts.
//!
//! Oldest first because the last clean epoch only moves forward one epoch at a time: an epoch
//! recorded clean promises every epoch below it is too. When the last one is recovered the
//! tail (its bridge) goes back to the sequencer as [`Action::Done`], which may then release.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use tally_common::quorum::AuthStatus;
use tally_common::{Epoch, LogId, LogMetadata, Lsn, NodeId};

use super::epoch_recovery::{EpochRecovery, EpochRecoveryConfig};
use super::{Action, Attempt, Event, RecoveryError, RecoveryTiming};

/// Recovery of one log's unclean epochs.
#[derive(Debug)]
pub struct LogRecovery {
    timing: RecoveryTiming,
    /// Epochs still to start, oldest first.
    queue: VecDeque<EpochRecoveryConfig>,
    current: Option<EpochRecovery>,
    /// The tail of the newest epoch recovered so far (the LCE's tail at the start).
    tail: Lsn,
    finished: bool,
    actions: Vec<Action>,
}

impl LogRecovery {
    /// Plans recovery of `log` for a sequencer activated in `sequencer_epoch`, from the
    /// metadata read at activation. Every epoch's node set is checked up front, so a missing
    /// one fails here rather than half-way. With nothing to recover, `Done` is ready at once.
    pub fn new(
        log: LogId,
        meta: &LogMetadata,
        sequencer_epoch: Epoch,
        statuses: &BTreeMap<NodeId, AuthStatus>,
        timing: RecoveryTiming,
        now: Instant,
    ) -> Result<LogRecovery, RecoveryError> {
        let seal = sequencer_epoch.prev();
        let first = meta.last_clean_epoch.0.saturating_add(1).max(Epoch::MIN.0);
        let mut queue = VecDeque::new();
        for e in first..sequencer_epoch.0 {
            let epoch = Epoch(e);
            let entry = meta
                .node_set_for(epoch)
                .ok_or(RecoveryError::NoNodeSet(epoch))?;
            let config = EpochRecoveryConfig {
                log,
                epoch,
                seal,
                node_set: entry.node_set.clone(),
                replication: entry.replication,
                statuses: statuses
                    .iter()
                    .filter(|(n, _)| entry.node_set.contains(**n))
                    .map(|(n, s)| (*n, *s))
                    .collect(),
            };
            // Validate now (node set vs replication) so no later epoch fails mid-way.
            tally_common::quorum::QuorumChecker::new(
                config.node_set.nodes(),
                config.replication as usize,
            )
            .map_err(|source| RecoveryError::Quorum { epoch, source })?;
            queue.push_back(config);
        }
        let mut r = LogRecovery {
            timing,
            queue,
            current: None,
            tail: meta.last_clean_tail,
            finished: false,
            actions: Vec::new(),
        };
        r.start_next(now);
        Ok(r)
    }

    /// The epoch being recovered now.
    pub fn current_epoch(&self) -> Option<Epoch> {
        self.current.as_ref().map(EpochRecovery::epoch)
    }

    /// The epoch recovery in progress (for inspection).
    pub fn current(&self) -> Option<&EpochRecovery> {
        self.current.as_ref()
    }

    /// Done or aborted.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Takes the actions produced since the last call.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Feeds one event to the epoch being recovered.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.finished {
            return;
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        current.handle(event, now);
        let produced = current.drain_actions();
        self.absorb(produced, now);
    }

    /// A request of `attempt` to `node` failed. Counts only for the attempt in progress: a
    /// late failure of a request of an older attempt, or of an epoch already recovered, says
    /// nothing about the requests in flight now.
    pub fn node_unreachable(&mut self, node: NodeId, attempt: Attempt, now: Instant) {
        if self.current.as_ref().map(EpochRecovery::attempt) == Some(attempt) {
            self.handle(Event::NodeUnreachable { node }, now);
        }
    }

    fn absorb(&mut self, produced: Vec<Action>, now: Instant) {
        let mut next = false;
        for action in produced {
            match action {
                Action::EpochRecovered { tail, .. } => {
                    self.tail = tail;
                    next = true;
                    self.actions.push(action);
                }
                Action::Aborted(_) => {
                    self.finished = true;
                    self.current = None;
                    self.queue.clear();
                    // Nothing not yet taken by the runtime may be sent after a preemption.
                    self.actions.clear();
                    self.actions.push(action);
                    return;
                }
                other => self.actions.push(other),
            }
        }
        if next {
            self.current = None;
            self.start_next(now);
        }
    }

    fn start_next(&mut self, now: Instant) {
        match self.queue.pop_front() {
            Some(config) => {
                let mut er = EpochRecovery::new(config, self.timing, now)
                    .expect("every epoch's config was validated in LogRecovery::new");
                let produced = er.drain_actions();
                self.current = Some(er);
                self.absorb(produced, now);
            }
            None => {
                self.finished = true;
                self.actions.push(Action::Done { tail: self.tail });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use tally_common::wire::StoreStatus;
    use tally_common::{
        Durability, Epoch, Esn, LogAttributes, LogMetadata, Lsn, NodeId, NodeSet, NodeSetEntry,
    };

    use super::super::sim::{LOG, ids};
    use super::super::{AbortReason, Action, Event, RecoveryError, RecoveryTiming};
    use super::LogRecovery;

    fn t0() -> Instant {
        Instant::now()
    }

    fn meta(lce: u32, next_epoch: u32) -> LogMetadata {
        LogMetadata {
            next_epoch: Epoch(next_epoch),
            history: vec![
                NodeSetEntry {
                    since: Epoch(1),
                    node_set: NodeSet::new(ids(3)),
                    replication: 2,
                },
                NodeSetEntry {
                    since: Epoch(3),
                    node_set: NodeSet::new(ids(4)),
                    replication: 2,
                },
            ],
            last_clean_epoch: Epoch(lce),
            last_clean_tail: Lsn::new(Epoch(lce), Esn(4)),
            recovered: Vec::new(),
            attributes: LogAttributes::default(),
        }
    }

    /// Answers every request of a log recovery as an empty, healthy cluster would.
    fn run_log(r: &mut LogRecovery, now: Instant) -> Vec<Action> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            let actions = r.drain_actions();
            if actions.is_empty() {
                break;
            }
            for a in &actions {
                let ev = match a {
                    Action::SendSeal {
                        node,
                        seal,
                        attempt,
                        ..
                    } => vec![Event::Sealed {
                        node: *node,
                        attempt: *attempt,
                        seal: *seal,
                        lng: Esn(0),
                        tail: Lsn::INVALID,
                        data_loss: false,
                    }],
                    Action::StartDigest { node, attempt, .. } => vec![Event::DigestDone {
                        node: *node,
                        attempt: *attempt,
                    }],
                    Action::SendStore {
                        node, attempt, seq, ..
                    } => vec![Event::StoreReply {
                        node: *node,
                        attempt: *attempt,
                        seq: *seq,
                        status: StoreStatus::Stored,
                    }],
                    Action::SendClean { node, attempt, .. } => vec![Event::Cleaned {
                        node: *node,
                        attempt: *attempt,
                    }],
                    Action::WriteLastCleanEpoch { epoch, .. } => {
                        vec![Event::LceWritten { epoch: *epoch }]
                    }
                    _ => vec![],
                };
                for e in ev {
                    r.handle(e, now);
                }
            }
            all.extend(actions);
        }
        all
    }

    #[test]
    fn log_recovery_goes_oldest_first_and_hands_back_the_tail() {
        let now = t0();
        let statuses = BTreeMap::new();
        let mut r = LogRecovery::new(
            LOG,
            &meta(1, 5),
            Epoch(4),
            &statuses,
            RecoveryTiming::default(),
            now,
        )
        .unwrap();
        assert_eq!(r.current_epoch(), Some(Epoch(2)));
        let all = run_log(&mut r, now);
        assert!(r.is_finished());
        let lce: Vec<(Epoch, Lsn)> = all
            .iter()
            .filter_map(|a| match a {
                Action::WriteLastCleanEpoch { epoch, tail, .. } => Some((*epoch, *tail)),
                _ => None,
            })
            .collect();
        assert_eq!(
            lce,
            vec![
                (Epoch(2), Lsn::new(Epoch(2), Esn(1))),
                (Epoch(3), Lsn::new(Epoch(3), Esn(1)))
            ]
        );
        // Epoch 2 used the 3-node set, epoch 3 the 4-node one; both sealed at 3.
        let seals = |epoch: Epoch| {
            all.iter()
                .filter(|a| matches!(a, Action::SendSeal { attempt, seal, .. } if attempt.epoch == epoch && *seal == Epoch(3)))
                .count()
        };
        assert_eq!((seals(Epoch(2)), seals(Epoch(3))), (3, 4));
        let done = Lsn::new(Epoch(3), Esn(1));
        assert_eq!(all.last(), Some(&Action::Done { tail: done }));

        // The sequencer may now release through the recovered tail.
        let mut s = crate::LogSequencer::new(
            crate::Activation {
                log: LOG,
                node: NodeId(1),
                epoch: Epoch(4),
                node_set: NodeSet::new(ids(4)),
                replication: 2,
                durability: Durability::Durable,
                max_in_flight: 8,
                recovery_pending: true,
                last_clean_epoch: Epoch(1),
                last_released: Lsn::new(Epoch(1), Esn(4)),
            },
            crate::SequencerTiming::default(),
        );
        s.recovery_done(done, now);
        assert_eq!(s.last_released(), done);
    }

    #[test]
    fn log_recovery_with_nothing_to_recover_is_done_at_once() {
        let statuses = BTreeMap::new();
        let mut r = LogRecovery::new(
            LOG,
            &meta(3, 5),
            Epoch(4),
            &statuses,
            RecoveryTiming::default(),
            t0(),
        )
        .unwrap();
        assert_eq!(
            r.drain_actions(),
            vec![Action::Done {
                tail: Lsn::new(Epoch(3), Esn(4))
            }]
        );
        assert!(r.is_finished());
    }

    #[test]
    fn log_recovery_refuses_epochs_without_a_node_set() {
        let mut m = meta(0, 5);
        m.history.remove(0);
        let err = LogRecovery::new(
            LOG,
            &m,
            Epoch(4),
            &BTreeMap::new(),
            RecoveryTiming::default(),
            t0(),
        )
        .unwrap_err();
        assert_eq!(err, RecoveryError::NoNodeSet(Epoch(1)));
    }

    #[test]
    fn unreachable_reports_of_other_attempts_are_dropped() {
        use super::super::Attempt;
        let now = t0();
        let timing = RecoveryTiming::default();
        let mut r =
            LogRecovery::new(LOG, &meta(1, 5), Epoch(4), &BTreeMap::new(), timing, now).unwrap();
        r.drain_actions();
        let current = r.current().unwrap().attempt();
        assert_eq!(
            current,
            Attempt {
                epoch: Epoch(2),
                number: 0
            }
        );
        // A late failure from a request of another epoch or attempt changes nothing.
        r.node_unreachable(
            NodeId(3),
            Attempt {
                epoch: Epoch(1),
                number: 0,
            },
            now,
        );
        r.node_unreachable(
            NodeId(3),
            Attempt {
                epoch: Epoch(2),
                number: 1,
            },
            now,
        );
        r.node_unreachable(NodeId(2), current, now);
        r.handle(Event::Tick, now + timing.retry_interval);
        let resent: Vec<NodeId> = r
            .drain_actions()
            .iter()
            .filter_map(|a| match a {
                Action::SendSeal { node, .. } => Some(*node),
                _ => None,
            })
            .collect();
        assert_eq!(resent, vec![NodeId(2)]);
    }

    #[test]
    fn log_recovery_abort_stops_everything() {
        let now = t0();
        let mut r = LogRecovery::new(
            LOG,
            &meta(1, 5),
            Epoch(4),
            &BTreeMap::new(),
            RecoveryTiming::default(),
            now,
        )
        .unwrap();
        r.drain_actions();
        r.handle(
            Event::Preempted {
                node: NodeId(1),
                seal: Epoch(4),
            },
            now,
        );
        assert_eq!(
            r.drain_actions(),
            vec![Action::Aborted(AbortReason::Preempted { seal: Epoch(4) })]
        );
        assert!(r.is_finished());
        r.handle(Event::Tick, now + Duration::from_secs(60));
        assert!(r.drain_actions().is_empty());
    }
}
