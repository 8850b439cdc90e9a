//! The recovery driver: runs the pure [`LogRecovery`] of one log over the network (DESIGN §9)
//! when an activation inherited unrecovered epochs (`LCE < e − 1`, see [`RecoveryJob`]).
//!
//! One tokio task per recovering log owns the state machine. It executes every [`Action`] as a
//! request on the node-protocol [`Connector`] (each under `recovery_request_timeout`) or an
//! epoch-store call, and feeds the answers back as [`Event`]s carrying the action's
//! [`Attempt`] through a bounded channel; it feeds [`Event::Tick`] every
//! [`crate::recovery::RecoveryTiming::tick_interval`] so retries, the digest grace and the
//! attempt timeout fire. Every decision (what to send, to whom, when to retry, when the digest
//! is enough, what to write) stays in `crate::recovery`; the driver only translates:
//!
//! - `SendSeal` → `Seal`; `Sealed{seal, lng, tail}` → `Event::Sealed`.
//! - `StartDigest` → a `StartDigest` push stream; each `DigestRecords` → `Event::DigestRecords`,
//!   `DigestDone` → `Event::DigestDone`. Waiting for the next push is bounded by the request
//!   timeout too, so a stalled node becomes unreachable instead of holding the digest.
//! - `SendStore` → `Store`; `StoreResult(status)` → `Event::StoreReply`. The number of ESNs
//!   written at once is bounded by the state machine (`max_mutations_in_flight`).
//! - `SendClean` → `Clean`; `Ack` → `Event::Cleaned`.
//! - `WriteLastCleanEpoch` → `EpochStore::set_last_clean_epoch`; `Stale{current}` →
//!   `Event::LceWriteFailed{current}`; any other failure → `LceWriteFailed` with an unknown
//!   (invalid) current epoch, which the state machine retries.
//! - Any `Preempted{seal}` answer → `Event::Preempted`. A transport failure, a missing
//!   address, an error answer or an unexpected one → [`LogRecovery::node_unreachable`] with
//!   the request's attempt (a late failure of an older attempt or epoch is dropped there).
//! - `Restart` → cancels every request and stream of the old attempt. `EpochRecovered` (the
//!   next epoch starts) closes the finished epoch's digest streams and lets its last cleans
//!   finish.
//! - `Done{tail}` → [`LogSlot::recovery_done`]: the log's sequencer may release, and its
//!   release points go to the [`ReleaseBroadcaster`].
//! - `Aborted(Preempted)` → [`LogSlot::recovery_preempted`]: a newer sequencer sealed the
//!   log, this one steps down for it (stops granting).
//!
//! A driver ends when recovery is done or aborted, when its job is cancelled (the epoch was
//! replaced by a reactivation or a step-down), or at shutdown. At most
//! `max_concurrent_recoveries` drivers of a node run at once; the others wait for a permit.
//! Counters are in [`RecoveryStats`] (`recovery_stats`); every driver runs in a `recovery`
//! span naming the node, log, epoch and last clean epoch, and logs each decided plan and each
//! epoch recorded clean at INFO.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tally_common::quorum::AuthStatus;
use tally_common::transport::{Connector, NodeProtocol};
use tally_common::wire::node::{NodeRequest, NodeResponse};
use tally_common::{Epoch, NodeId};
use tally_epochstore::{EpochStore, EpochStoreError};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::logs::{LogSlot, RecoveryJob};
use super::placement::Membership;
use super::recovery_stats::{RecoveryStats, bump};
use super::releases::ReleaseBroadcaster;
use crate::recovery::{self, AbortReason, Action, Attempt, Event, LogRecovery, RecoveryTiming};

/// Undelivered answers per driver; answering tasks wait when it is full.
const EVENT_BUFFER: usize = 1024;

/// What an answering task hands the driver.
#[derive(Debug)]
enum Answer {
    Event(Event),
    /// A request of `attempt` to `node` failed (see [`LogRecovery::node_unreachable`]).
    Unreachable {
        node: NodeId,
        attempt: Attempt,
    },
}

/// Everything the recovery drivers of one node share.
#[derive(Debug)]
pub(super) struct Recoveries {
    pub(super) me: NodeId,
    pub(super) timing: RecoveryTiming,
    pub(super) request_timeout: Duration,
    pub(super) connector: Arc<Connector<NodeProtocol>>,
    pub(super) membership: Arc<Membership>,
    pub(super) store: Arc<dyn EpochStore>,
    pub(super) releases: Arc<ReleaseBroadcaster>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) stats: RecoveryStats,
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

impl Recoveries {
    /// Runs `job` for `slot` in the background.
    pub(super) fn spawn(self: &Arc<Self>, slot: Arc<LogSlot>, job: RecoveryJob) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let span = tracing::info_span!(
            "recovery",
            node = %self.me,
            log = %job.log,
            epoch = %job.epoch,
            last_clean_epoch = %job.metadata.last_clean_epoch,
        );
        bump(&self.stats.started, 1);
        bump(&self.stats.active, 1);
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let attempt = job.cancel.child_token();
        let driver = Driver {
            shared: self.clone(),
            slot,
            digests: attempt.child_token(),
            attempt,
            job,
            events,
            planned: None,
        };
        self.tracker.spawn(driver.run(rx).instrument(span));
    }

    /// Authoritative statuses of the nodes membership knows in a state that is not the default.
    fn statuses(&self) -> BTreeMap<NodeId, AuthStatus> {
        self.membership
            .view()
            .nodes
            .values()
            .map(|n| (n.id, recovery::auth_status(n.state)))
            .filter(|(_, s)| *s != AuthStatus::FullyAuthoritative)
            .collect()
    }
}

/// How a driver ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Preempted,
    Cancelled,
    Failed,
}

/// The task that recovers one log.
struct Driver {
    shared: Arc<Recoveries>,
    slot: Arc<LogSlot>,
    job: RecoveryJob,
    events: mpsc::Sender<Answer>,
    /// Cancels every request and stream of the current attempt (child of the job's token);
    /// renewed for every attempt and every epoch.
    attempt: CancellationToken,
    /// Cancels the current attempt's digest streams once its digest is decided (child of
    /// `attempt`).
    digests: CancellationToken,
    /// The attempt whose plan was already reported.
    planned: Option<Attempt>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Answer>) {
        let outcome = self.drive(&mut rx).await;
        let stats = &self.shared.stats;
        stats.active.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Outcome::Done => {
                bump(&stats.completed, 1);
                // Cleans still in flight to the slower nodes may finish on their own deadline
                // (their nodes then know the epoch is clean); digests are no longer wanted.
                self.digests.cancel();
            }
            Outcome::Preempted => {
                bump(&stats.preempted, 1);
                self.attempt.cancel();
            }
            Outcome::Cancelled => {
                bump(&stats.cancelled, 1);
                self.attempt.cancel();
            }
            Outcome::Failed => bump(&stats.failed, 1),
        }
    }

    async fn drive(&mut self, rx: &mut mpsc::Receiver<Answer>) -> Outcome {
        let shared = self.shared.clone();
        let _permit = tokio::select! {
            _ = self.job.cancel.cancelled() => return Outcome::Cancelled,
            _ = shared.shutdown.cancelled() => return Outcome::Cancelled,
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Outcome::Cancelled, // the semaphore is never closed
            },
        };
        let statuses = shared.statuses();
        let mut recovery = match LogRecovery::new(
            self.job.log,
            &self.job.metadata,
            self.job.epoch,
            &statuses,
            shared.timing,
            Instant::now(),
        ) {
            Ok(r) => r,
            Err(e) => {
                // The epoch store's metadata is inconsistent: a human must look. The log keeps
                // granting but releases nothing until it is reactivated.
                tracing::error!(error = %e, "cannot start recovery");
                return Outcome::Failed;
            }
        };
        tracing::info!(first = ?recovery.current_epoch(), "recovery started");
        let mut ticker = tokio::time::interval(shared.timing.tick_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for action in recovery.drain_actions() {
                if let Some(outcome) = self.execute(action) {
                    return outcome;
                }
            }
            self.note_plan(&recovery);
            let answer = tokio::select! {
                _ = self.job.cancel.cancelled() => {
                    tracing::info!("recovery cancelled: the epoch no longer runs here");
                    return Outcome::Cancelled;
                }
                _ = shared.shutdown.cancelled() => return Outcome::Cancelled,
                // Never `None`: this driver holds a sender.
                Some(answer) = rx.recv() => answer,
                _ = ticker.tick() => Answer::Event(Event::Tick),
            };
            let now = Instant::now();
            match answer {
                Answer::Event(event) => recovery.handle(event, now),
                Answer::Unreachable { node, attempt } => {
                    recovery.node_unreachable(node, attempt, now)
                }
            }
        }
    }

    /// Executes one action; `Some` when recovery ended.
    fn execute(&mut self, action: Action) -> Option<Outcome> {
        let me = self.shared.me;
        match action {
            Action::SendSeal {
                node,
                log,
                seal,
                attempt,
            } => {
                let req = NodeRequest::Seal {
                    log,
                    epoch: seal,
                    sequencer: me,
                };
                self.request(node, attempt, req, move |resp| match resp {
                    NodeResponse::Sealed {
                        seal,
                        lng,
                        tail,
                        data_loss,
                        ..
                    } => Some(Event::Sealed {
                        node,
                        attempt,
                        seal,
                        lng,
                        tail,
                        data_loss,
                    }),
                    _ => None,
                });
            }
            Action::StartDigest {
                node,
                log,
                epoch,
                after,
                attempt,
            } => self.digest(
                node,
                NodeRequest::StartDigest { log, epoch, after },
                attempt,
            ),
            Action::SendStore {
                node,
                attempt,
                seq,
                batch,
            } => {
                bump(&self.shared.stats.stores_sent, 1);
                self.request(
                    node,
                    attempt,
                    NodeRequest::Store(batch),
                    move |resp| match resp {
                        NodeResponse::StoreResult(status) => Some(Event::StoreReply {
                            node,
                            attempt,
                            seq,
                            status,
                        }),
                        _ => None,
                    },
                );
            }
            Action::SendClean {
                node,
                log,
                epoch,
                seal,
                tail,
                attempt,
            } => {
                let req = NodeRequest::Clean {
                    log,
                    epoch,
                    seal,
                    tail,
                };
                self.request(node, attempt, req, move |resp| match resp {
                    NodeResponse::Ack => Some(Event::Cleaned { node, attempt }),
                    _ => None,
                });
            }
            Action::WriteLastCleanEpoch {
                log,
                epoch,
                tail,
                outcome,
            } => {
                let shared = self.shared.clone();
                let call = async move {
                    let timeout = shared.request_timeout;
                    match tokio::time::timeout(
                        timeout,
                        shared.store.set_last_clean_epoch(log, epoch, tail, outcome),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Answer::Event(Event::LceWritten { epoch }),
                        Ok(Err(EpochStoreError::Stale { current })) => {
                            Answer::Event(Event::LceWriteFailed { epoch, current })
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%epoch, error = %e, "last clean epoch not written");
                            Answer::Event(Event::LceWriteFailed {
                                epoch,
                                current: Epoch::INVALID,
                            })
                        }
                        Err(_) => {
                            tracing::warn!(%epoch, ?timeout, "last clean epoch write timed out");
                            Answer::Event(Event::LceWriteFailed {
                                epoch,
                                current: Epoch::INVALID,
                            })
                        }
                    }
                };
                self.answer(self.attempt.clone(), call);
            }
            Action::EpochRecovered { epoch, tail } => {
                bump(&self.shared.stats.epochs_recovered, 1);
                tracing::info!(recovered = %epoch, %tail, "epoch recovered and recorded clean");
                // The next epoch's requests (the actions after this one) get fresh tokens;
                // this epoch's cleans still in flight may finish.
                self.renew_tokens(false);
            }
            Action::Done { tail } => {
                let now = Instant::now();
                let Some(effects) = self.slot.recovery_done(self.job.epoch, tail, now) else {
                    tracing::info!("recovery finished after its epoch stopped running here");
                    return Some(Outcome::Cancelled);
                };
                tracing::info!(%tail, "recovery done: the log releases");
                if let Some(log) = effects.log {
                    for lsn in &effects.releases {
                        self.shared
                            .releases
                            .enqueue(log, *lsn, effects.epoch, &effects.targets);
                    }
                }
                return Some(Outcome::Done);
            }
            Action::Aborted(AbortReason::Preempted { seal }) => {
                tracing::warn!(%seal, "recovery preempted by a higher seal: stepping down");
                self.slot.recovery_preempted(self.job.epoch, seal);
                return Some(Outcome::Preempted);
            }
            Action::Restart { attempt } => {
                bump(&self.shared.stats.restarts, 1);
                tracing::warn!(attempt = attempt.number, recovering = %attempt.epoch,
                    "recovery attempt timed out; starting over from the seal");
                self.renew_tokens(true);
            }
        }
        None
    }

    /// New tokens for the requests of a new attempt (a restart, or the next epoch). With
    /// `cancel_old`, every request of the old attempt is dropped; otherwise only its digests.
    fn renew_tokens(&mut self, cancel_old: bool) {
        if cancel_old {
            self.attempt.cancel();
        } else {
            self.digests.cancel();
        }
        self.attempt = self.job.cancel.child_token();
        self.digests = self.attempt.child_token();
    }

    /// Reports the plan of an attempt once it is decided, and closes its digest streams.
    fn note_plan(&mut self, recovery: &LogRecovery) {
        let Some(current) = recovery.current() else {
            return;
        };
        let Some(plan) = current.plan() else {
            return;
        };
        let attempt = current.attempt();
        if self.planned == Some(attempt) {
            return;
        }
        self.planned = Some(attempt);
        self.digests.cancel();
        let mut rereplicate = 0u64;
        let mut plug = 0u64;
        for entry in &plan.entries {
            match entry.decision {
                recovery::Decision::Rereplicate(_) => rereplicate += 1,
                recovery::Decision::Plug { .. } => plug += 1,
                recovery::Decision::Leave => {}
            }
        }
        let stats = &self.shared.stats;
        bump(&stats.records_rereplicated, rereplicate);
        bump(&stats.holes_plugged, plug);
        bump(&stats.bridges, u64::from(plan.bridge.is_some()));
        tracing::info!(
            recovering = %plan.epoch,
            attempt = attempt.number,
            lng = %plan.lng,
            authoritative = plan.authoritative,
            rereplicate,
            plug,
            bridge = ?plan.bridge,
            tail = %plan.tail,
            "digest decided"
        );
    }

    /// Sends `req` to `node` and feeds `answer(response)` back; `None` from `answer` (an
    /// answer that does not fit the request) counts as the node being unreachable, as do
    /// `Error` answers and transport failures. `Preempted` is always an `Event::Preempted`.
    fn request(
        &self,
        node: NodeId,
        attempt: Attempt,
        req: NodeRequest,
        answer: impl FnOnce(NodeResponse) -> Option<Event> + Send + 'static,
    ) {
        let shared = self.shared.clone();
        let call = async move {
            let Some(addr) = shared.membership.address(node).await else {
                tracing::debug!(%node, "no address for storage node");
                return Answer::Unreachable { node, attempt };
            };
            match shared
                .connector
                .call(addr, &req, shared.request_timeout)
                .await
            {
                Ok(NodeResponse::Preempted { seal }) => {
                    Answer::Event(Event::Preempted { node, seal })
                }
                Ok(NodeResponse::Error(e)) => {
                    tracing::debug!(%node, error = %e, "recovery request refused");
                    Answer::Unreachable { node, attempt }
                }
                Ok(resp) => {
                    let shown = format!("{resp:?}");
                    answer(resp).map(Answer::Event).unwrap_or_else(|| {
                        tracing::warn!(%node, answer = %shown, "unexpected answer to recovery");
                        Answer::Unreachable { node, attempt }
                    })
                }
                Err(e) => {
                    tracing::debug!(%node, error = %e, "recovery request failed");
                    Answer::Unreachable { node, attempt }
                }
            }
        };
        self.answer(self.attempt.clone(), call);
    }

    /// Opens a digest stream on `node` and feeds its pushes back until `DigestDone`.
    fn digest(&self, node: NodeId, req: NodeRequest, attempt: Attempt) {
        let shared = self.shared.clone();
        let events = self.events.clone();
        let token = self.digests.clone();
        let stream = async move {
            let timeout = shared.request_timeout;
            let unreachable = Answer::Unreachable { node, attempt };
            let Some(addr) = shared.membership.address(node).await else {
                tracing::debug!(%node, "no address for storage node");
                return unreachable;
            };
            let mut stream = match shared.connector.open(addr, &req, timeout).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%node, error = %e, "digest stream not opened");
                    return unreachable;
                }
            };
            loop {
                let next = match tokio::time::timeout(timeout, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::debug!(%node, ?timeout, "digest stream stalled");
                        return unreachable;
                    }
                };
                match next {
                    Ok(Some(NodeResponse::DigestRecords(records))) => {
                        let event = Event::DigestRecords {
                            node,
                            attempt,
                            records,
                        };
                        if events.send(Answer::Event(event)).await.is_err() {
                            return unreachable; // the driver is gone; nobody reads this
                        }
                    }
                    Ok(Some(NodeResponse::DigestDone)) => {
                        stream.close();
                        return Answer::Event(Event::DigestDone { node, attempt });
                    }
                    Ok(Some(NodeResponse::Preempted { seal })) => {
                        return Answer::Event(Event::Preempted { node, seal });
                    }
                    Ok(Some(other)) => {
                        tracing::warn!(%node, answer = ?other, "unexpected push on a digest stream");
                        return unreachable;
                    }
                    Ok(None) => {
                        tracing::debug!(%node, "digest stream ended before DigestDone");
                        return unreachable;
                    }
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "digest stream failed");
                        return unreachable;
                    }
                }
            }
        };
        self.answer(token, stream);
    }

    /// Runs `work` on the node's tracker and sends the event it ends with, unless `token` is
    /// cancelled or the node shuts down first.
    fn answer(
        &self,
        token: CancellationToken,
        work: impl Future<Output = Answer> + Send + 'static,
    ) {
        let events = self.events.clone();
        let shutdown = self.shared.shutdown.clone();
        let task = async move {
            let run = async {
                let event = work.await;
                // Fails only when the driver is gone; then nobody waits for the answer.
                let _ = events.send(event).await;
            };
            tokio::select! {
                _ = token.cancelled() => {}
                _ = shutdown.cancelled() => {}
                _ = run => {}
            }
        };
        self.shared
            .tracker
            .spawn(task.instrument(tracing::Span::current()));
    }
}
