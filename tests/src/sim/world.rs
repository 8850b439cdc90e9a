//! The simulation engine: one ordered event queue over virtual time, the network between the
//! actors, fault injection, and the run from workload through healing, the final recovery and
//! the final reads to the checks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_common::meta::{NodeInfo, Roles, StorageState};
use tally_common::quorum::AuthStatus;
use tally_common::{Durability, LogId, Lsn, NodeId};

use super::check::History;
use super::client::Client;
use super::epochstore::EpochStoreSim;
use super::net::{Actor, Fault, FaultPlan, MS, Msg, Time};
use super::sequencer::{SeqNode, auth_status};
use super::storage::StorageNode;
use super::{FaultKind, RunReport, SimConfig};

/// The one simulated log.
pub(crate) const LOG: LogId = LogId(1);
/// Sequencer node ids; the first one that is up owns the log.
pub(crate) const SEQUENCERS: [NodeId; 2] = [NodeId(101), NodeId(102)];

const SEQ_TICK: Time = 10 * MS;
const CLIENT_TICK: Time = 5 * MS;
/// A paused node loses its membership lease after this long.
const LEASE: Time = 300 * MS;
/// Appends each client keeps in flight.
const CLIENT_IN_FLIGHT: usize = 4;
/// Bound on events per run (a livelock guard).
pub(crate) const MAX_EVENTS: u64 = 3_000_000;

#[derive(Debug)]
enum Ev {
    Deliver { from: Actor, to: Actor, msg: Msg },
    Tick(Actor),
    Sync { node: NodeId, incarnation: u64 },
    Fault(Fault),
    Restart(Actor),
    Resume(Actor),
    Reconnect(Actor),
}

/// The whole simulated world.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) now: Time,
    pub(crate) base: Instant,
    pub(crate) rng: StdRng,
    queue: BTreeMap<(Time, u64), Ev>,
    pub(crate) next_event: u64,
    pub(crate) plan: FaultPlan,
    pub(crate) config: SimConfig,
    pub(crate) healed: bool,
    pub(crate) issuing: bool,
    pub(crate) issued: u32,
    pub(crate) storage: BTreeMap<NodeId, StorageNode>,
    pub(crate) seqs: BTreeMap<NodeId, SeqNode>,
    pub(crate) clients: BTreeMap<u32, Client>,
    /// Up-ness of every node, kept here so it is known while a node is being handled.
    pub(crate) up: BTreeMap<Actor, bool>,
    pub(crate) data_loss: BTreeMap<NodeId, bool>,
    /// Paused actors: (since, until).
    pub(crate) paused: BTreeMap<Actor, (Time, Time)>,
    pub(crate) held: BTreeMap<Actor, Vec<(Actor, Msg)>>,
    pub(crate) isolated: BTreeMap<Actor, Time>,
    pub(crate) es: EpochStoreSim,
    pub(crate) history: History,
    pub(crate) report: RunReport,
    pub(crate) events: u64,
}

impl World {
    pub(crate) fn new(seed: u64, config: &SimConfig) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let plan = FaultPlan::draw(&mut rng, config);
        let es = EpochStoreSim::new(LOG, config.replication, plan.durability);
        let mut w = World {
            now: 0,
            base: Instant::now(),
            rng,
            queue: BTreeMap::new(),
            next_event: 0,
            config: config.clone(),
            healed: false,
            issuing: true,
            issued: 0,
            storage: BTreeMap::new(),
            seqs: BTreeMap::new(),
            clients: BTreeMap::new(),
            up: BTreeMap::new(),
            data_loss: BTreeMap::new(),
            paused: BTreeMap::new(),
            held: BTreeMap::new(),
            isolated: BTreeMap::new(),
            es,
            history: History::default(),
            report: RunReport {
                seed,
                fault_mix: plan.describe(),
                fast_mode: plan.durability == Durability::Fast,
                ..RunReport::default()
            },
            plan,
            events: 0,
        };
        for i in 1..=config.storage_nodes {
            let id = NodeId(i);
            w.storage.insert(
                id,
                StorageNode::new(id, config.disable_sealing, config.purge_missed_recoveries),
            );
            w.up.insert(Actor::Storage(id), true);
            w.data_loss.insert(id, false);
        }
        for id in SEQUENCERS {
            w.seqs.insert(id, SeqNode::new(id));
            w.up.insert(Actor::Seq(id), true);
            let first = w.rng.random_range(0..SEQ_TICK);
            w.schedule(first, Ev::Tick(Actor::Seq(id)));
        }
        for c in 0..config.clients {
            w.clients
                .insert(c, Client::new(c, SEQUENCERS[0], CLIENT_IN_FLIGHT));
            let first = w.rng.random_range(0..CLIENT_TICK);
            w.schedule(first, Ev::Tick(Actor::Client(c)));
        }
        for (at, fault) in w.plan.faults.clone() {
            w.schedule_at(at, Ev::Fault(fault));
        }
        w
    }

    /// The virtual time as an `Instant` for the state machines.
    pub(crate) fn instant(&self) -> Instant {
        self.instant_at(self.now)
    }

    pub(crate) fn instant_at(&self, t: Time) -> Instant {
        self.base + Duration::from_micros(t)
    }

    fn schedule(&mut self, delay: Time, ev: Ev) {
        self.schedule_at(self.now + delay, ev);
    }

    fn schedule_at(&mut self, at: Time, ev: Ev) {
        self.next_event += 1;
        self.queue.insert((at.max(self.now), self.next_event), ev);
    }

    pub(crate) fn schedule_sync(&mut self, node: NodeId, incarnation: u64, delay: Time) {
        self.schedule(delay, Ev::Sync { node, incarnation });
    }

    pub(crate) fn storage_nodes(&self) -> &BTreeMap<NodeId, StorageNode> {
        &self.storage
    }

    pub(crate) fn storage_is_up(&self, node: NodeId) -> bool {
        self.up.get(&Actor::Storage(node)).copied().unwrap_or(false)
    }

    /// Counts one event of `kind` for the report.
    pub(crate) fn stat(&mut self, kind: &'static str) {
        *self.report.stats.entry(kind).or_default() += 1;
    }

    pub(crate) fn liveness(&mut self, note: String) {
        self.report.liveness.push(note);
    }

    pub(crate) fn cut(&self, a: Actor) -> bool {
        self.isolated.get(&a).is_some_and(|until| *until > self.now)
    }

    fn delay(&mut self) -> Time {
        let p = &self.plan;
        let (lo, hi, spike, spike_max) = (p.delay_min, p.delay_max, p.spike, p.spike_max);
        if !self.healed && spike > 0.0 && self.rng.random_bool(spike) {
            return self.rng.random_range(hi..spike_max.max(hi + 1));
        }
        self.rng.random_range(lo..=hi)
    }

    /// Sends `msg` over the simulated network.
    pub(crate) fn send(&mut self, from: Actor, to: Actor, msg: Msg) {
        if !self.healed {
            if self.cut(from) || self.cut(to) {
                return;
            }
            if self.plan.loss > 0.0 && self.rng.random_bool(self.plan.loss) {
                *self
                    .report
                    .faults
                    .entry(FaultKind::MessagesLost)
                    .or_default() += 1;
                return;
            }
            if msg.is_request()
                && self.plan.duplication > 0.0
                && self.rng.random_bool(self.plan.duplication)
            {
                *self
                    .report
                    .faults
                    .entry(FaultKind::MessagesDuplicated)
                    .or_default() += 1;
                let d = self.delay();
                self.schedule(
                    d,
                    Ev::Deliver {
                        from,
                        to,
                        msg: msg.clone(),
                    },
                );
            }
        }
        let d = self.delay();
        self.schedule(d, Ev::Deliver { from, to, msg });
    }

    /// A message that does not cross the network (a local failure notice).
    pub(crate) fn local(&mut self, to: Actor, delay: Time, msg: Msg) {
        self.schedule(delay, Ev::Deliver { from: to, to, msg });
    }

    /// The sequencer node that owns the log: the first one that is up and holds its lease.
    pub(crate) fn sequencer_owner(&self) -> Option<NodeId> {
        SEQUENCERS.into_iter().find(|id| {
            let a = Actor::Seq(*id);
            let up = self.up.get(&a).copied().unwrap_or(false);
            let lease_lost = self
                .paused
                .get(&a)
                .is_some_and(|(since, _)| self.now >= since + LEASE);
            up && !lease_lost
        })
    }

    /// Storage nodes registered in membership (up), as the epoch store's node-set selection
    /// sees them.
    fn members(&self) -> Vec<NodeInfo> {
        self.storage
            .keys()
            .filter(|id| self.storage_is_up(**id))
            .map(|id| NodeInfo {
                id: *id,
                address: String::new(),
                roles: Roles {
                    sequencer: false,
                    storage: true,
                },
                location: String::new(),
                weight: 1,
                state: if self.data_loss[id] {
                    StorageState::DataLoss
                } else {
                    StorageState::ReadWrite
                },
                incarnation: 0,
            })
            .collect()
    }

    /// Recovery's authoritative statuses, from membership at activation.
    pub(crate) fn recovery_statuses(&self) -> BTreeMap<NodeId, AuthStatus> {
        self.storage
            .keys()
            .filter(|id| self.storage_is_up(**id))
            .map(|id| (*id, auth_status(self.data_loss[id])))
            .collect()
    }

    fn fault_count(&mut self, kind: FaultKind) {
        *self.report.faults.entry(kind).or_default() += 1;
    }

    /// Prints a line of the run's story with `--verbose` (built only then).
    pub(crate) fn trace(&self, what: impl FnOnce() -> String) {
        if self.config.verbose {
            eprintln!("[{:>8.3}ms] {}", self.now as f64 / MS as f64, what());
        }
    }

    /// Takes and handles the next event. False when the queue is empty.
    fn step(&mut self) -> bool {
        let Some(((at, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now = at;
        self.events += 1;
        match ev {
            Ev::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Ev::Tick(actor) => self.tick(actor),
            Ev::Sync { node, incarnation } => {
                if let Some(mut n) = self.storage.remove(&node) {
                    n.sync(self, incarnation);
                    self.storage.insert(node, n);
                }
            }
            Ev::Fault(f) => self.inject(f),
            Ev::Restart(actor) => self.restart(actor),
            Ev::Resume(actor) => self.resume(actor),
            Ev::Reconnect(actor) => {
                self.isolated.remove(&actor);
            }
        }
        true
    }

    fn deliver(&mut self, from: Actor, to: Actor, msg: Msg) {
        if !self.healed && (self.cut(from) || self.cut(to)) {
            return;
        }
        if self.paused.contains_key(&to) {
            self.held.entry(to).or_default().push((from, msg));
            return;
        }
        match to {
            Actor::Storage(id) => {
                if !self.storage_is_up(id) {
                    return;
                }
                let mut n = self.storage.remove(&id).expect("known node");
                n.handle(self, from, msg);
                self.storage.insert(id, n);
            }
            Actor::Seq(id) => {
                if !self.up[&to] {
                    return;
                }
                let mut s = self.seqs.remove(&id).expect("known sequencer");
                s.handle(self, from, msg);
                self.seqs.insert(id, s);
            }
            Actor::Client(c) => {
                let mut client = self.clients.remove(&c).expect("known client");
                client.handle(self, msg);
                self.clients.insert(c, client);
            }
            Actor::EpochStore => self.epoch_store(from, msg),
        }
    }

    fn epoch_store(&mut self, from: Actor, msg: Msg) {
        let (rpc, reply) = match msg {
            Msg::Activate { rpc, if_current } => {
                let members = self.members();
                (rpc, self.es.activate(LOG, &members, if_current))
            }
            Msg::WriteLce {
                rpc,
                epoch,
                tail,
                outcome,
            } => {
                let now = self.now;
                self.trace(|| format!("epoch store: last clean epoch {epoch} (tail {tail})"));
                (rpc, self.es.write_lce(epoch, tail, outcome, now))
            }
            other => panic!("epoch store got {other:?}"),
        };
        self.send(Actor::EpochStore, from, Msg::EsReply { rpc, reply });
    }

    fn tick(&mut self, actor: Actor) {
        let (period, runs) = match actor {
            Actor::Seq(_) => (
                SEQ_TICK,
                self.up[&actor] && !self.paused.contains_key(&actor),
            ),
            Actor::Client(_) => (CLIENT_TICK, true),
            _ => return,
        };
        if runs {
            match actor {
                Actor::Seq(id) => {
                    let mut s = self.seqs.remove(&id).expect("known sequencer");
                    s.tick(self);
                    self.seqs.insert(id, s);
                }
                Actor::Client(c) => {
                    let mut client = self.clients.remove(&c).expect("known client");
                    client.tick(self);
                    if self.issuing
                        && self.issued < self.config.appends
                        && client.has_room()
                        && self.rng.random_bool(0.5)
                    {
                        self.issued += 1;
                        client.start_append(self);
                    }
                    self.clients.insert(c, client);
                }
                _ => {}
            }
        }
        self.schedule(period, Ev::Tick(actor));
    }

    fn inject(&mut self, fault: Fault) {
        if self.healed {
            return;
        }
        match fault {
            Fault::Crash { actor, down_for } => {
                if !self.up[&actor] {
                    return;
                }
                self.trace(|| format!("crash {actor:?} for {}ms", down_for / MS));
                self.crash(actor);
                self.schedule(down_for, Ev::Restart(actor));
            }
            Fault::Pause { actor, paused_for } => {
                if self.paused.contains_key(&actor) {
                    return;
                }
                self.trace(|| format!("pause {actor:?} for {}ms", paused_for / MS));
                self.fault_count(match actor {
                    Actor::Seq(_) => FaultKind::SequencerPause,
                    _ => FaultKind::StoragePause,
                });
                self.paused.insert(actor, (self.now, self.now + paused_for));
                self.schedule(paused_for, Ev::Resume(actor));
            }
            Fault::Isolate { actor, cut_for } => {
                self.trace(|| format!("isolate {actor:?} for {}ms", cut_for / MS));
                self.fault_count(FaultKind::Isolation);
                self.isolated.insert(actor, self.now + cut_for);
                self.schedule(cut_for, Ev::Reconnect(actor));
            }
        }
    }

    fn crash(&mut self, actor: Actor) {
        self.up.insert(actor, false);
        self.paused.remove(&actor);
        self.held.remove(&actor);
        match actor {
            Actor::Storage(id) => {
                self.fault_count(FaultKind::StorageCrash);
                let mut n = self.storage.remove(&id).expect("known node");
                let lost = n.crash(self);
                if lost > 0 {
                    self.fault_count(FaultKind::LostUnsynced);
                }
                self.data_loss.insert(id, n.data_loss);
                self.storage.insert(id, n);
            }
            Actor::Seq(id) => {
                self.fault_count(FaultKind::SequencerCrash);
                if let Some(s) = self.seqs.get_mut(&id) {
                    s.crash();
                }
            }
            _ => {}
        }
    }

    fn restart(&mut self, actor: Actor) {
        if self.up.get(&actor) == Some(&true) {
            return;
        }
        self.trace(|| format!("restart {actor:?}"));
        self.up.insert(actor, true);
        match actor {
            Actor::Storage(id) => {
                if let Some(n) = self.storage.get_mut(&id) {
                    n.restart();
                }
            }
            Actor::Seq(id) => {
                if let Some(s) = self.seqs.get_mut(&id) {
                    s.restart();
                }
            }
            _ => {}
        }
    }

    fn resume(&mut self, actor: Actor) {
        if self.paused.remove(&actor).is_none() {
            return;
        }
        self.trace(|| format!("resume {actor:?}"));
        // Everything sent to it while it slept arrives now, in order.
        for (from, msg) in self.held.remove(&actor).unwrap_or_default() {
            self.schedule(
                0,
                Ev::Deliver {
                    from,
                    to: actor,
                    msg,
                },
            );
        }
    }

    /// Ends every fault: crashed nodes restart, paused ones wake, the network stops losing.
    pub(crate) fn heal(&mut self) {
        self.trace(|| "heal".to_string());
        self.healed = true;
        self.issuing = false;
        let paused: Vec<Actor> = self.paused.keys().copied().collect();
        for a in paused {
            self.resume(a);
        }
        self.isolated.clear();
        let down: Vec<Actor> = self
            .up
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(a, _)| *a)
            .collect();
        for a in down {
            self.restart(a);
        }
    }

    /// Runs events until virtual time `until`, or `stop` holds.
    pub(crate) fn run_until(&mut self, until: Time, stop: &dyn Fn(&World) -> bool) -> bool {
        while let Some(((at, _), _)) = self.queue.first_key_value() {
            if *at > until || self.events >= MAX_EVENTS {
                break;
            }
            self.step();
            if stop(self) {
                return true;
            }
        }
        self.now = self.now.max(until);
        false
    }

    pub(crate) fn all_appends_ended(&self) -> bool {
        self.clients.values().all(|c| c.in_flight() == 0)
    }

    /// The final epoch's sequencer, once it recovered everything before it.
    pub(crate) fn final_tail(&self) -> Option<Lsn> {
        self.seqs[&SEQUENCERS[0]].settled_tail().map(|(_, l)| l)
    }
}
