//! A simulated client: appends with unique payloads through the real `Appender`, grants from
//! the simulated sequencers, and every outcome recorded in the history.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use tally_client::appender::{Action as AAction, Event as AEvent};
use tally_client::{AppendPolicy, Appender, Graylist};
use tally_common::wire::client::Grant;
use tally_common::{Limits, Lsn, NodeId};

use super::net::{Actor, MS, Msg, NodeReply, SeqReply, Time};
use super::world::World;

/// An append's whole budget, grant included.
const APPEND_TIMEOUT: Time = 1_500 * MS;
/// How long each client waits for a grant before trying the other sequencer: an impatient
/// client makes the other sequencer take over (and seal), a patient one still takes the grant
/// of a sequencer that wakes from a pause — a zombie grant in an epoch that may be sealed.
const SEQUENCE_TIMEOUTS: [Time; 3] = [150 * MS, 1_200 * MS, 400 * MS];

fn policy(remaining: Time) -> AppendPolicy {
    AppendPolicy {
        store_timeout_initial: Duration::from_millis(20),
        store_timeout_max: Duration::from_millis(400),
        append_timeout: Duration::from_micros(remaining),
        domain_scope: None,
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for a grant (`rpc`), or to ask again at `retry_at`.
    Sequencing { rpc: Option<u64>, retry_at: Time },
    Storing {
        appender: Box<Appender>,
        grant: Grant,
    },
}

#[derive(Debug)]
struct Append {
    /// History ids of the payloads, in LSN order.
    ids: Vec<u64>,
    payloads: Vec<Vec<u8>>,
    deadline: Time,
    state: State,
    /// First send time of each wave.
    wave_sent: BTreeMap<u32, Time>,
}

#[derive(Debug, Clone, Copy)]
enum RpcKind {
    Sequence,
    Store { node: NodeId, wave: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Rpc {
    append: u64,
    deadline: Time,
    kind: RpcKind,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: u32,
    target: NodeId,
    no_redirect: bool,
    graylist: Graylist,
    appends: BTreeMap<u64, Append>,
    next_append: u64,
    rpcs: BTreeMap<u64, Rpc>,
    next_rpc: u64,
    max_in_flight: usize,
    sequence_timeout: Time,
}

impl Client {
    pub(crate) fn new(id: u32, first_sequencer: NodeId, max_in_flight: usize) -> Client {
        Client {
            id,
            target: first_sequencer,
            no_redirect: false,
            graylist: Graylist::default(),
            appends: BTreeMap::new(),
            next_append: 0,
            rpcs: BTreeMap::new(),
            next_rpc: 1,
            max_in_flight,
            sequence_timeout: SEQUENCE_TIMEOUTS[id as usize % SEQUENCE_TIMEOUTS.len()],
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.appends.len()
    }

    fn me(&self) -> Actor {
        Actor::Client(self.id)
    }

    /// Starts a new append of one to three unique payloads.
    pub(crate) fn start_append(&mut self, w: &mut World) {
        let count = w.rng.random_range(1..=3);
        let mut ids = Vec::new();
        let mut payloads = Vec::new();
        for _ in 0..count {
            let id = w.history.invoke(self.id, w.now);
            let filler = w.rng.random_range(0..24);
            let mut p = format!("append-{id}/").into_bytes();
            p.extend(std::iter::repeat_n(b'x', filler));
            ids.push(id);
            payloads.push(p);
        }
        let key = self.next_append;
        self.next_append += 1;
        self.appends.insert(
            key,
            Append {
                ids,
                payloads,
                deadline: w.now + APPEND_TIMEOUT,
                state: State::Sequencing {
                    rpc: None,
                    retry_at: w.now,
                },
                wave_sent: BTreeMap::new(),
            },
        );
        self.ask_grant(w, key);
    }

    fn ask_grant(&mut self, w: &mut World, key: u64) {
        let Some(a) = self.appends.get_mut(&key) else {
            return;
        };
        if w.now >= a.deadline {
            self.finish_failed(w, key, true, "no sequencer granted LSNs");
            return;
        }
        let rpc = self.next_rpc;
        self.next_rpc += 1;
        a.state = State::Sequencing {
            rpc: Some(rpc),
            retry_at: Time::MAX,
        };
        let count = a.payloads.len() as u32;
        self.rpcs.insert(
            rpc,
            Rpc {
                append: key,
                deadline: w.now + self.sequence_timeout,
                kind: RpcKind::Sequence,
            },
        );
        w.send(
            self.me(),
            Actor::Seq(self.target),
            Msg::Sequence {
                client: self.id,
                rpc,
                count,
                no_redirect: self.no_redirect,
            },
        );
    }

    /// Switches to the other sequencer, asking it to take over.
    fn fail_over(&mut self) {
        self.target = if self.target == NodeId(101) {
            NodeId(102)
        } else {
            NodeId(101)
        };
        self.no_redirect = true;
    }

    fn retry_grant_at(&mut self, key: u64, at: Time) {
        if let Some(a) = self.appends.get_mut(&key) {
            a.state = State::Sequencing {
                rpc: None,
                retry_at: at,
            };
        }
    }

    pub(crate) fn handle(&mut self, w: &mut World, msg: Msg) {
        match msg {
            Msg::SequenceReply { rpc, reply } => {
                let Some(call) = self.rpcs.remove(&rpc) else {
                    return;
                };
                let key = call.append;
                match reply {
                    SeqReply::Granted(grant) => {
                        w.stat("grants");
                        self.on_grant(w, key, grant)
                    }
                    SeqReply::Redirect { owner } => {
                        self.target = owner;
                        self.no_redirect = false;
                        self.ask_grant(w, key);
                    }
                    SeqReply::NoBufs => self.retry_grant_at(key, w.now + 20 * MS),
                    SeqReply::Preempted { seal } => {
                        w.trace(|| {
                            format!("client {}: sequencer preempted by seal {seal}", self.id)
                        });
                        self.fail_over();
                        self.retry_grant_at(key, w.now + 10 * MS);
                    }
                    SeqReply::Unavailable => {
                        self.fail_over();
                        self.retry_grant_at(key, w.now + 10 * MS);
                    }
                }
            }
            Msg::NodeReply {
                rpc,
                node,
                reply: NodeReply::Stored(status),
            } => {
                let Some(call) = self.rpcs.remove(&rpc) else {
                    return;
                };
                if let RpcKind::Store { wave, .. } = call.kind {
                    self.appender_event(w, call.append, AEvent::StoreReply { node, wave, status });
                }
            }
            Msg::TransportFailed { rpc } => {
                let Some(call) = self.rpcs.remove(&rpc) else {
                    return;
                };
                if let RpcKind::Store { node, wave } = call.kind {
                    self.appender_event(
                        w,
                        call.append,
                        AEvent::TransportFailed {
                            node,
                            wave,
                            may_have_been_applied: false,
                        },
                    );
                }
            }
            other => panic!("client {} got {other:?}", self.id),
        }
    }

    fn on_grant(&mut self, w: &mut World, key: u64, grant: Grant) {
        let Some(a) = self.appends.get_mut(&key) else {
            return;
        };
        if !matches!(a.state, State::Sequencing { .. }) {
            return;
        }
        for (i, id) in a.ids.iter().enumerate() {
            w.history
                .granted(*id, Lsn(grant.first.0 + i as u64), grant.sequencer);
        }
        let remaining = a.deadline.saturating_sub(w.now).max(1);
        let started = Appender::start(
            &grant,
            a.payloads.clone(),
            &[],
            policy(remaining),
            &Limits::default(),
            w.instant(),
            &self.graylist,
            &mut w.rng,
        );
        match started {
            Ok((appender, actions)) => {
                a.state = State::Storing {
                    appender: Box::new(appender),
                    grant,
                };
                self.run_actions(w, key, actions);
            }
            Err(e) => {
                let certain = e.certainly_not_appended();
                self.finish_failed(w, key, certain, &e.to_string());
            }
        }
    }

    fn appender_event(&mut self, w: &mut World, key: u64, event: AEvent) {
        let Some(a) = self.appends.get_mut(&key) else {
            return;
        };
        let State::Storing { appender, .. } = &mut a.state else {
            return;
        };
        let actions = appender.handle(w.instant(), event, &mut self.graylist, &mut w.rng);
        self.run_actions(w, key, actions);
    }

    fn run_actions(&mut self, w: &mut World, key: u64, actions: Vec<AAction>) {
        for action in actions {
            match action {
                AAction::SendStore {
                    node,
                    batch,
                    timeout,
                } => {
                    let rpc = self.next_rpc;
                    self.next_rpc += 1;
                    let wave = batch.wave_or_seal;
                    if let Some(a) = self.appends.get_mut(&key) {
                        a.wave_sent.entry(wave).or_insert(w.now);
                    }
                    let timeout = (timeout.as_micros() as Time).max(1);
                    self.rpcs.insert(
                        rpc,
                        Rpc {
                            append: key,
                            deadline: w.now + timeout,
                            kind: RpcKind::Store { node, wave },
                        },
                    );
                    if w.storage_is_up(node) {
                        w.send(self.me(), Actor::Storage(node), Msg::Store { rpc, batch });
                    } else {
                        // A refused connection: the store certainly never arrived.
                        w.local(self.me(), 500, Msg::TransportFailed { rpc });
                    }
                }
                AAction::Completed { lsns, wave, .. } => {
                    let Some(a) = self.appends.remove(&key) else {
                        continue;
                    };
                    let State::Storing { grant, .. } = &a.state else {
                        continue;
                    };
                    let sent = a.wave_sent.get(&wave).copied().unwrap_or(0);
                    for (i, id) in a.ids.iter().enumerate() {
                        w.history
                            .acked(*id, Lsn(lsns.start().0 + i as u64), sent, w.now);
                    }
                    let count = a.ids.len() as u32;
                    w.send(
                        self.me(),
                        Actor::Seq(grant.sequencer),
                        Msg::ReportStored {
                            first: *lsns.start(),
                            count,
                        },
                    );
                    self.rpcs.retain(|_, r| r.append != key);
                }
                AAction::Failed(err) => {
                    if matches!(err, tally_client::AppendError::Preempted { .. }) {
                        self.fail_over();
                    }
                    let certain = err.certainly_not_appended();
                    self.finish_failed(w, key, certain, &err.to_string());
                }
            }
        }
    }

    fn finish_failed(&mut self, w: &mut World, key: u64, certain: bool, why: &str) {
        if let Some(a) = self.appends.remove(&key) {
            for id in a.ids {
                w.history.failed(id, certain, w.now, why);
            }
        }
        self.rpcs.retain(|_, r| r.append != key);
    }

    /// Deadlines, retries and the appenders' timers.
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
                RpcKind::Sequence => {
                    self.fail_over();
                    self.ask_grant(w, call.append);
                }
                RpcKind::Store { node, wave } => {
                    self.appender_event(w, call.append, AEvent::StoreTimedOut { node, wave })
                }
            }
        }
        let keys: Vec<u64> = self.appends.keys().copied().collect();
        for key in keys {
            let Some(a) = self.appends.get(&key) else {
                continue;
            };
            match &a.state {
                State::Sequencing {
                    rpc: None,
                    retry_at,
                } if *retry_at <= w.now => self.ask_grant(w, key),
                State::Storing { appender, .. } if w.instant() >= appender.wake_at() => {
                    self.appender_event(w, key, AEvent::Tick)
                }
                _ => {}
            }
        }
    }

    /// Whether this client may start another append now.
    pub(crate) fn has_room(&self) -> bool {
        self.appends.len() < self.max_in_flight
    }
}
