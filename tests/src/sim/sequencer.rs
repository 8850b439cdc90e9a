//! A simulated sequencer node: the pure `LogSequencer` and `LogRecovery` of the one log,
//! driven the way the runtime drives them (activation through the epoch store, recovery
//! actions executed as requests with deadlines, answers fed back as events).

use std::collections::BTreeMap;
use std::time::Duration;

use tally_common::{Epoch, Lsn, NodeId};
use tally_epochstore::EpochStoreError;
use tally_sequencer::recovery::{
    self, AbortReason, Action as RAction, Attempt, Event as REvent, LogRecovery, RecoveryTiming,
};
use tally_sequencer::{
    Action as SAction, Activation, LogSequencer, SequenceOutcome, SequencerTiming,
};

use super::net::{Actor, EsReply, MS, Msg, NodeReply, SeqReply, Time};
use super::world::{LOG, World};

/// How long a request to a storage node or the epoch store may take.
const REQUEST_TIMEOUT: Time = 200 * MS;
/// How long a node keeps serving without redirecting after a `no_redirect` takeover.
const STICKY: Time = 1_000 * MS;

pub(crate) fn sequencer_timing() -> SequencerTiming {
    SequencerTiming {
        append_timeout: Duration::from_millis(1_500),
        abandon_grace: Duration::from_millis(500),
        release_rebroadcast: Duration::from_millis(100),
    }
}

pub(crate) fn recovery_timing() -> RecoveryTiming {
    RecoveryTiming {
        digest_grace: Duration::from_millis(20),
        retry_interval: Duration::from_millis(100),
        attempt_timeout: Duration::from_millis(2_000),
        max_mutations_in_flight: 64,
    }
}

#[derive(Debug, Clone, Copy)]
enum RpcKind {
    /// A recovery request to a storage node; `store` is the recovery store's sequence number.
    Node {
        node: NodeId,
        attempt: Attempt,
        store: Option<u64>,
    },
    Activate,
    Lce {
        epoch: Epoch,
    },
}

#[derive(Debug, Clone, Copy)]
struct Rpc {
    deadline: Time,
    kind: RpcKind,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    client: u32,
    rpc: u64,
    count: u32,
}

#[derive(Debug)]
struct Running {
    seq: LogSequencer,
    recovery: Option<LogRecovery>,
    /// Every node of every node set in the history: they all hear releases.
    targets: Vec<NodeId>,
    /// The epoch asked to be replaced; an activation is under way.
    reactivating: bool,
}

#[derive(Debug)]
struct PendingActivation {
    rpc: u64,
    if_current: Option<Epoch>,
}

#[derive(Debug)]
pub(crate) struct SeqNode {
    pub(crate) id: NodeId,
    pub(crate) up: bool,
    running: Option<Running>,
    activation: Option<PendingActivation>,
    waiters: Vec<Waiter>,
    sticky_until: Time,
    rpcs: BTreeMap<u64, Rpc>,
    next_rpc: u64,
}

impl SeqNode {
    pub(crate) fn new(id: NodeId) -> SeqNode {
        SeqNode {
            id,
            up: true,
            running: None,
            activation: None,
            waiters: Vec::new(),
            sticky_until: 0,
            rpcs: BTreeMap::new(),
            next_rpc: 1,
        }
    }

    /// Loses every bit of state (request ids keep growing so late answers stay unmatched).
    pub(crate) fn crash(&mut self) {
        self.up = false;
        self.running = None;
        self.activation = None;
        self.waiters.clear();
        self.sticky_until = 0;
        self.rpcs.clear();
    }

    pub(crate) fn restart(&mut self) {
        self.up = true;
    }

    /// The running epoch and its release point, once recovery is done.
    pub(crate) fn settled_tail(&self) -> Option<(Epoch, Lsn)> {
        let r = self.running.as_ref()?;
        (r.recovery.is_none() && !r.seq.recovery_pending() && r.seq.is_preempted().is_none())
            .then(|| (r.seq.epoch(), r.seq.last_released()))
    }

    /// A one-line account of the node's state, for liveness notes.
    pub(crate) fn describe(&self) -> String {
        match &self.running {
            None => format!(
                "seq{}: not running (activating: {})",
                self.id.0,
                self.activation.is_some()
            ),
            Some(r) => {
                let rec = r.recovery.as_ref().map(|rec| {
                    let cur = rec.current();
                    format!(
                        "recovering {:?} attempt {:?} plan {:?}",
                        rec.current_epoch(),
                        cur.map(|c| c.attempt()),
                        cur.and_then(|c| c.plan()).map(|p| (
                            p.lng,
                            p.authoritative,
                            p.entries.len(),
                            p.bridge
                        ))
                    )
                });
                format!(
                    "seq{}: epoch {} released {} preempted {:?} reactivating {} recovery {:?}",
                    self.id.0,
                    r.seq.epoch(),
                    r.seq.last_released(),
                    r.seq.is_preempted(),
                    r.reactivating,
                    rec
                )
            }
        }
    }

    fn me(&self) -> Actor {
        Actor::Seq(self.id)
    }

    fn rpc(&mut self, w: &World, kind: RpcKind) -> u64 {
        let id = self.next_rpc;
        self.next_rpc += 1;
        self.rpcs.insert(
            id,
            Rpc {
                deadline: w.now + REQUEST_TIMEOUT,
                kind,
            },
        );
        id
    }

    /// Starts an activation unless one is under way.
    pub(crate) fn activate(&mut self, w: &mut World, if_current: Option<Epoch>) {
        if self.activation.is_some() {
            return;
        }
        let rpc = self.rpc(w, RpcKind::Activate);
        self.activation = Some(PendingActivation { rpc, if_current });
        w.send(
            self.me(),
            Actor::EpochStore,
            Msg::Activate { rpc, if_current },
        );
    }

    pub(crate) fn handle(&mut self, w: &mut World, from: Actor, msg: Msg) {
        match msg {
            Msg::Sequence {
                client,
                rpc,
                count,
                no_redirect,
            } => self.on_sequence(w, client, rpc, count, no_redirect),
            Msg::ReportStored { first, count } => {
                if let Some(r) = self.running.as_mut() {
                    // Reports for other epochs or never-granted LSNs are refused; recovery
                    // settles them.
                    let _ = r.seq.stored(first, count, w.instant());
                }
                self.drain(w);
            }
            Msg::NodeReply { rpc, node, reply } => {
                let Some(call) = self.rpcs.remove(&rpc) else {
                    return; // late, duplicate, or from before a crash
                };
                let RpcKind::Node { attempt, store, .. } = call.kind else {
                    return;
                };
                let events = match reply {
                    NodeReply::Sealed {
                        seal,
                        lng,
                        tail,
                        data_loss,
                    } => vec![REvent::Sealed {
                        node,
                        attempt,
                        seal,
                        lng,
                        tail,
                        data_loss,
                    }],
                    NodeReply::Preempted { seal } => vec![REvent::Preempted { node, seal }],
                    NodeReply::Digest(records) => {
                        w.trace(|| {
                            format!(
                                "seq{} digest from n{} ({} copies) {attempt:?}",
                                self.id.0,
                                node.0,
                                records.len()
                            )
                        });
                        vec![
                            REvent::DigestRecords {
                                node,
                                attempt,
                                records,
                            },
                            REvent::DigestDone { node, attempt },
                        ]
                    }
                    NodeReply::Stored(status) => vec![REvent::StoreReply {
                        node,
                        attempt,
                        seq: store.unwrap_or(u64::MAX),
                        status,
                    }],
                    NodeReply::Cleaned => vec![REvent::Cleaned { node, attempt }],
                };
                for e in events {
                    self.recovery_event(w, e);
                }
                self.drain(w);
            }
            Msg::EsReply { rpc, reply } => {
                let Some(call) = self.rpcs.remove(&rpc) else {
                    return;
                };
                match (call.kind, reply) {
                    (RpcKind::Activate, reply) => self.on_activated(w, rpc, reply),
                    (RpcKind::Lce { .. }, EsReply::LceWritten { epoch }) => {
                        self.recovery_event(w, REvent::LceWritten { epoch })
                    }
                    (RpcKind::Lce { .. }, EsReply::LceFailed { epoch, current }) => {
                        self.recovery_event(w, REvent::LceWriteFailed { epoch, current })
                    }
                    _ => {}
                }
                self.drain(w);
            }
            other => panic!("sequencer {} got {other:?} from {from:?}", self.id),
        }
    }

    fn on_sequence(&mut self, w: &mut World, client: u32, rpc: u64, count: u32, no_redirect: bool) {
        let me = self.me();
        let reply = |w: &mut World, reply: SeqReply| {
            w.send(me, Actor::Client(client), Msg::SequenceReply { rpc, reply });
        };
        if no_redirect {
            self.sticky_until = w.now + STICKY;
        } else if w.now >= self.sticky_until {
            let owner = w.sequencer_owner();
            if owner != Some(self.id) {
                match owner {
                    Some(owner) => reply(w, SeqReply::Redirect { owner }),
                    None => reply(w, SeqReply::Unavailable),
                }
                return;
            }
        }
        let waiter = Waiter { client, rpc, count };
        let preempted = self.running.as_ref().and_then(|r| r.seq.is_preempted());
        if let Some(seal) = preempted {
            if !no_redirect {
                reply(w, SeqReply::Preempted { seal });
                return;
            }
            // Asked to take over: this node's epoch is stale, start a new one.
            self.running = None;
        }
        match self.running.as_mut() {
            Some(r) if !r.reactivating => {
                let outcome = r.seq.sequence(count, w.now / MS, w.instant());
                match outcome {
                    SequenceOutcome::Granted(g) => reply(w, SeqReply::Granted(g)),
                    SequenceOutcome::NoBufs => reply(w, SeqReply::NoBufs),
                    SequenceOutcome::Preempted { seal } => reply(w, SeqReply::Preempted { seal }),
                    SequenceOutcome::Reactivating => self.waiters.push(waiter),
                }
                self.drain(w);
            }
            Some(_) => self.waiters.push(waiter),
            None => {
                self.waiters.push(waiter);
                self.activate(w, None);
            }
        }
    }

    fn on_activated(&mut self, w: &mut World, rpc: u64, reply: EsReply) {
        if self.activation.as_ref().map(|a| a.rpc) != Some(rpc) {
            return;
        }
        self.activation = None;
        match reply {
            EsReply::Activated(a) => {
                let meta = &a.metadata;
                let epoch = a.epoch;
                let recovery_pending = meta.last_clean_epoch < epoch.prev();
                let activation = Activation {
                    log: LOG,
                    node: self.id,
                    epoch,
                    node_set: a.node_set.node_set.clone(),
                    replication: a.node_set.replication,
                    durability: meta.attributes.durability,
                    max_in_flight: meta.attributes.max_in_flight,
                    recovery_pending,
                    last_clean_epoch: meta.last_clean_epoch,
                    last_released: meta.last_clean_tail,
                };
                let seq = LogSequencer::new(activation, sequencer_timing());
                let recovery = if recovery_pending {
                    let statuses = w.recovery_statuses();
                    match LogRecovery::new(
                        LOG,
                        meta,
                        epoch,
                        &statuses,
                        recovery_timing(),
                        w.instant(),
                    ) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            w.liveness(format!("seq{}: recovery cannot start: {e}", self.id.0));
                            None
                        }
                    }
                } else {
                    None
                };
                let mut targets: Vec<NodeId> = meta
                    .history
                    .iter()
                    .flat_map(|e| e.node_set.nodes().iter().copied())
                    .collect();
                targets.sort_unstable();
                targets.dedup();
                w.stat("activations");
                self.running = Some(Running {
                    seq,
                    recovery,
                    targets,
                    reactivating: false,
                });
                self.serve_waiters(w);
            }
            EsReply::ActivateFailed(EpochStoreError::ConditionFailed { current }) => {
                // Another sequencer took the log: step down.
                self.running = None;
                for wt in std::mem::take(&mut self.waiters) {
                    w.send(
                        self.me(),
                        Actor::Client(wt.client),
                        Msg::SequenceReply {
                            rpc: wt.rpc,
                            reply: SeqReply::Preempted { seal: current },
                        },
                    );
                }
            }
            EsReply::ActivateFailed(_) | EsReply::LceWritten { .. } | EsReply::LceFailed { .. } => {
                for wt in std::mem::take(&mut self.waiters) {
                    w.send(
                        self.me(),
                        Actor::Client(wt.client),
                        Msg::SequenceReply {
                            rpc: wt.rpc,
                            reply: SeqReply::Unavailable,
                        },
                    );
                }
                if let Some(r) = self.running.as_mut() {
                    r.reactivating = false;
                }
            }
        }
        self.drain(w);
    }

    fn serve_waiters(&mut self, w: &mut World) {
        let waiters = std::mem::take(&mut self.waiters);
        for wt in waiters {
            let Some(r) = self.running.as_mut() else {
                self.waiters.push(wt);
                continue;
            };
            let reply = match r.seq.sequence(wt.count, w.now / MS, w.instant()) {
                SequenceOutcome::Granted(g) => SeqReply::Granted(g),
                SequenceOutcome::NoBufs => SeqReply::NoBufs,
                SequenceOutcome::Preempted { seal } => SeqReply::Preempted { seal },
                SequenceOutcome::Reactivating => SeqReply::Unavailable,
            };
            w.send(
                self.me(),
                Actor::Client(wt.client),
                Msg::SequenceReply { rpc: wt.rpc, reply },
            );
        }
    }

    fn recovery_event(&mut self, w: &mut World, event: REvent) {
        if let Some(rec) = self.running.as_mut().and_then(|r| r.recovery.as_mut()) {
            rec.handle(event, w.instant());
        }
    }

    /// Periodic work: request deadlines, the sequencer's tick, recovery's tick.
    pub(crate) fn tick(&mut self, w: &mut World) {
        let expired: Vec<(u64, Rpc)> = self
            .rpcs
            .iter()
            .filter(|(_, r)| r.deadline <= w.now)
            .map(|(id, r)| (*id, *r))
            .collect();
        for (id, call) in expired {
            self.rpcs.remove(&id);
            match call.kind {
                RpcKind::Node { node, .. } => {
                    self.recovery_event(w, REvent::NodeUnreachable { node })
                }
                RpcKind::Lce { epoch } => self.recovery_event(
                    w,
                    REvent::LceWriteFailed {
                        epoch,
                        current: Epoch::INVALID,
                    },
                ),
                RpcKind::Activate => {
                    // No answer: try again (an activation that did apply costs an epoch).
                    if let Some(a) = self.activation.take() {
                        self.activate(w, a.if_current);
                    }
                }
            }
        }
        if let Some(r) = self.running.as_mut() {
            r.seq.tick(w.instant());
            if let Some(rec) = r.recovery.as_mut() {
                rec.handle(REvent::Tick, w.instant());
            }
        }
        self.drain(w);
    }

    /// Executes what the state machines asked for.
    fn drain(&mut self, w: &mut World) {
        loop {
            let Some(r) = self.running.as_mut() else {
                return;
            };
            let seq_actions = r.seq.drain_actions();
            let rec_actions = r
                .recovery
                .as_mut()
                .map(|rec| rec.drain_actions())
                .unwrap_or_default();
            if seq_actions.is_empty() && rec_actions.is_empty() {
                return;
            }
            for a in seq_actions {
                match a {
                    SAction::Release { lsn, .. } => {
                        let Some(r) = self.running.as_ref() else {
                            continue;
                        };
                        let sequencer_epoch = r.seq.recovered_below();
                        w.trace(|| {
                            format!("seq{} releases {lsn} (epoch {sequencer_epoch})", self.id.0)
                        });
                        for n in r.targets.clone() {
                            let msg = Msg::Release {
                                lsn,
                                sequencer_epoch,
                            };
                            w.send(self.me(), Actor::Storage(n), msg);
                        }
                    }
                    SAction::Reactivate { .. } => {
                        let epoch = match self.running.as_mut() {
                            Some(r) => {
                                r.reactivating = true;
                                r.seq.epoch()
                            }
                            None => continue,
                        };
                        self.activate(w, Some(epoch));
                    }
                }
            }
            for a in rec_actions {
                self.recovery_action(w, a);
            }
        }
    }

    fn recovery_action(&mut self, w: &mut World, action: RAction) {
        let me = self.me();
        match action {
            RAction::SendSeal {
                node,
                seal,
                attempt,
                ..
            } => {
                let rpc = self.rpc(
                    w,
                    RpcKind::Node {
                        node,
                        attempt,
                        store: None,
                    },
                );
                w.send(me, Actor::Storage(node), Msg::Seal { rpc, seal });
            }
            RAction::StartDigest {
                node,
                epoch,
                after,
                attempt,
                ..
            } => {
                let rpc = self.rpc(
                    w,
                    RpcKind::Node {
                        node,
                        attempt,
                        store: None,
                    },
                );
                w.send(
                    me,
                    Actor::Storage(node),
                    Msg::StartDigest { rpc, epoch, after },
                );
            }
            RAction::SendStore {
                node,
                attempt,
                seq,
                batch,
            } => {
                let rpc = self.rpc(
                    w,
                    RpcKind::Node {
                        node,
                        attempt,
                        store: Some(seq),
                    },
                );
                w.send(me, Actor::Storage(node), Msg::Store { rpc, batch });
            }
            RAction::SendClean {
                node,
                epoch,
                seal,
                attempt,
                ..
            } => {
                let rpc = self.rpc(
                    w,
                    RpcKind::Node {
                        node,
                        attempt,
                        store: None,
                    },
                );
                w.trace(|| format!("seq{} cleans {epoch} on n{}", self.id.0, node.0));
                w.send(me, Actor::Storage(node), Msg::Clean { rpc, epoch, seal });
            }
            RAction::WriteLastCleanEpoch {
                epoch,
                tail,
                outcome,
                ..
            } => {
                let rpc = self.rpc(w, RpcKind::Lce { epoch });
                w.send(
                    me,
                    Actor::EpochStore,
                    Msg::WriteLce {
                        rpc,
                        epoch,
                        tail,
                        outcome,
                    },
                );
            }
            RAction::EpochRecovered { .. } => w.stat("epochs recovered"),
            RAction::Done { tail } => {
                if let Some(r) = self.running.as_mut() {
                    r.recovery = None;
                    r.seq.recovery_done(tail, w.instant());
                }
            }
            RAction::Aborted(AbortReason::Preempted { seal }) => {
                if let Some(r) = self.running.as_mut() {
                    r.recovery = None;
                    r.seq.preempted(seal);
                }
            }
            RAction::Restart { attempt } => {
                w.stat("recovery attempts restarted");
                // Requests of older attempts are abandoned (their answers are ignored).
                self.rpcs.retain(|_, r| match r.kind {
                    RpcKind::Node { attempt: a, .. } => a >= attempt || a.epoch != attempt.epoch,
                    _ => true,
                });
            }
        }
    }
}

/// Recovery's view of a node's membership state.
pub(crate) fn auth_status(data_loss: bool) -> tally_common::quorum::AuthStatus {
    let state = if data_loss {
        tally_common::meta::StorageState::DataLoss
    } else {
        tally_common::meta::StorageState::ReadWrite
    };
    recovery::auth_status(state)
}
