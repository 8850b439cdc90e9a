//! Drives the appender with random answers, timeouts, transport failures and clock ticks, and
//! checks after every step that what it does is allowed by DESIGN §6, against an independent
//! model of which copies exist:
//!
//! - every wave's stores go to R distinct node-set members of one copyset, with the wave
//!   number set, AMEND exactly for nodes that acknowledged a copy before, payloads and
//!   checksums intact, and the store timeout of that wave;
//! - `Completed` only after every member of that wave's copyset acknowledged in that wave;
//! - a wave timeout graylists only the first outstanding member, and nobody when no member
//!   answered;
//! - a failure is "certainly not appended" exactly when the model says no copy can exist;
//! - after a seal (`Preempted`) no store goes out and nothing completes; the append fails
//!   with `Preempted` once no store is pending, or at its deadline;
//! - exactly one outcome, nothing after it, and always an outcome by the append deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tally_client::appender::{Action, Event};
use tally_client::{
    AppendError, AppendPolicy, Appender, AvoidReason, DomainScope, Graylist, IndeterminateCause,
};
use tally_common::wire::StoreStatus;
use tally_common::wire::client::Grant;
use tally_common::{
    Durability, Epoch, Esn, Limits, LogId, Lsn, NodeId, NodeInfo, NodeSet, RecordFlags,
    payload_crc32,
};

#[derive(Clone, Copy, Debug)]
enum Reply {
    Stored,
    Overloaded,
    NoSpace,
    Disabled,
    Preempted,
    Checksum,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Answer the `pick`-th unresolved store.
    Reply(usize, Reply),
    TimedOut(usize),
    TransportFailed(usize, bool),
    Tick,
}

fn arb_op() -> impl Strategy<Value = Op> {
    let pick = 0usize..16;
    prop_oneof![
        12 => pick.clone().prop_map(|p| Op::Reply(p, Reply::Stored)),
        2 => pick.clone().prop_map(|p| Op::Reply(p, Reply::Overloaded)),
        1 => pick.clone().prop_map(|p| Op::Reply(p, Reply::NoSpace)),
        1 => pick.clone().prop_map(|p| Op::Reply(p, Reply::Disabled)),
        // Rare: both end the append at once.
        1 => (pick.clone(), 0..8u8).prop_map(|(p, x)| if x == 0 {
            Op::Reply(p, Reply::Preempted)
        } else {
            Op::Reply(p, Reply::Stored)
        }),
        1 => (pick.clone(), 0..8u8).prop_map(|(p, x)| if x == 0 {
            Op::Reply(p, Reply::Checksum)
        } else {
            Op::TimedOut(p)
        }),
        4 => pick.clone().prop_map(Op::TimedOut),
        2 => (pick, any::<bool>()).prop_map(|(p, a)| Op::TransportFailed(p, a)),
        1 => Just(Op::Tick),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Send {
    node: NodeId,
    wave: u32,
}

/// What the test knows independently of the appender.
struct Model {
    node_set: NodeSet,
    replication: usize,
    payloads: Vec<Vec<u8>>,
    lsns: std::ops::RangeInclusive<Lsn>,
    policy: AppendPolicy,
    /// Stores sent and not yet given an outcome.
    pending: Vec<Send>,
    /// Nodes that acknowledged any store: they hold a copy.
    holders: BTreeSet<NodeId>,
    /// Payload stores that may have been applied without us knowing.
    in_doubt: BTreeSet<(u32, NodeId)>,
    acked: BTreeSet<(u32, NodeId)>,
    copysets: BTreeMap<u32, Vec<NodeId>>,
    wave: u32,
    /// A node refused a store with a seal: no new wave, and the append fails once no store
    /// is pending (or at the deadline).
    sealed: bool,
    outcome: Option<Action>,
}

impl Model {
    fn may_exist(&self) -> bool {
        !self.holders.is_empty() || !self.in_doubt.is_empty()
    }

    fn slow_count(&self, g: &Graylist, now: Instant) -> usize {
        self.node_set
            .nodes()
            .iter()
            .filter(|&&n| g.reason(n, now) == Some(AvoidReason::Slow))
            .count()
    }

    /// Checks one step's actions and records the new stores.
    fn check(
        &mut self,
        actions: Vec<Action>,
        now: Instant,
        deadline: Instant,
        cause: Option<Reply>,
    ) -> Result<(), TestCaseError> {
        if self.outcome.is_some() {
            prop_assert!(
                actions.is_empty(),
                "actions after the outcome: {:?}",
                actions
            );
            return Ok(());
        }
        let mut new_wave: Option<(u32, Vec<NodeId>)> = None;
        for action in &actions {
            match action {
                Action::SendStore {
                    node,
                    batch,
                    timeout,
                } => {
                    prop_assert!(!self.sealed, "a store sent after a seal");
                    let wave = batch.wave_or_seal;
                    let copyset = batch.copyset.nodes().to_vec();
                    let (w, members) = new_wave.get_or_insert_with(|| (wave, Vec::new()));
                    prop_assert_eq!(*w, wave, "one wave per step");
                    prop_assert_eq!(wave, self.wave + 1, "waves count up by one");
                    members.push(*node);
                    prop_assert_eq!(copyset.len(), self.replication);
                    let distinct: BTreeSet<_> = copyset.iter().collect();
                    prop_assert_eq!(distinct.len(), self.replication, "duplicate members");
                    prop_assert!(copyset.iter().all(|n| self.node_set.contains(*n)));
                    prop_assert!(copyset.contains(node));
                    let amend = self.holders.contains(node);
                    prop_assert_eq!(batch.flags.contains(RecordFlags::AMEND), amend);
                    prop_assert!(batch.flags.contains(RecordFlags::DURABLE));
                    let want_timeout = self.policy.store_timeout(wave).min(deadline - now);
                    prop_assert_eq!(*timeout, want_timeout);
                    prop_assert_eq!(batch.records.len(), self.payloads.len());
                    for (r, p) in batch.records.iter().zip(&self.payloads) {
                        prop_assert_eq!(r.payload_crc32, payload_crc32(p));
                        if amend {
                            prop_assert!(r.payload.is_empty());
                        } else {
                            prop_assert_eq!(&r.payload, p);
                        }
                    }
                    if !amend {
                        self.in_doubt.insert((wave, *node));
                    }
                    self.pending.push(Send { node: *node, wave });
                }
                Action::Completed {
                    lsns,
                    copyset,
                    wave,
                } => {
                    prop_assert_eq!(actions.len(), 1);
                    prop_assert!(!self.sealed, "completed after a seal");
                    prop_assert_eq!(*wave, self.wave);
                    prop_assert_eq!(copyset.nodes(), self.copysets[wave].as_slice());
                    prop_assert_eq!(copyset.len(), self.replication);
                    for n in copyset.nodes() {
                        prop_assert!(
                            self.acked.contains(&(*wave, *n)),
                            "completed without {}'s ack in wave {}",
                            n,
                            wave
                        );
                    }
                    prop_assert_eq!(lsns, &self.lsns);
                    self.outcome = Some(action.clone());
                }
                Action::Failed(err) => {
                    prop_assert_eq!(actions.len(), 1);
                    prop_assert_eq!(
                        err.certainly_not_appended(),
                        !self.may_exist(),
                        "{} while copies may exist: {}",
                        err,
                        self.may_exist()
                    );
                    match err {
                        AppendError::TimedOut
                        | AppendError::Indeterminate {
                            cause: IndeterminateCause::TimedOut,
                        } => prop_assert!(now >= deadline),
                        AppendError::Preempted { .. } => {
                            prop_assert!(self.sealed);
                            prop_assert!(
                                self.pending.is_empty() || now >= deadline,
                                "preempted with stores pending: {:?}",
                                self.pending
                            );
                        }
                        AppendError::ChecksumMismatch { .. }
                        | AppendError::Indeterminate {
                            cause: IndeterminateCause::ChecksumMismatch { .. },
                        } => prop_assert!(matches!(cause, Some(Reply::Checksum))),
                        other => prop_assert!(false, "unexpected failure {other}"),
                    }
                    self.outcome = Some(action.clone());
                }
            }
        }
        if let Some((wave, members)) = new_wave {
            prop_assert_eq!(members.len(), self.replication, "one store per member");
            self.wave = wave;
            self.copysets.insert(wave, members);
        }
        // A corrupt payload ends the append whatever else happens; a seal once no store is
        // pending.
        if matches!(cause, Some(Reply::Checksum)) && !self.sealed {
            prop_assert!(self.outcome.is_some());
        }
        if self.sealed && self.pending.is_empty() {
            prop_assert!(
                self.outcome.is_some(),
                "sealed, nothing pending, no outcome"
            );
        }
        Ok(())
    }
}

fn cluster(locations: &[(u32, u8)]) -> Vec<NodeInfo> {
    locations
        .iter()
        .enumerate()
        .map(|(i, &(weight, rack))| NodeInfo {
            id: NodeId(i as u32 + 1),
            address: String::new(),
            roles: Default::default(),
            location: format!("reg.dc.rack{rack}"),
            weight,
            state: Default::default(),
            incarnation: 0,
        })
        .collect()
}

/// One generated run.
#[derive(Clone, Debug)]
struct Case {
    /// (weight, rack) of nodes 1, 2, …
    nodes: Vec<(u32, u8)>,
    replication: usize,
    count: u32,
    spread: bool,
    seed: u64,
    ops: Vec<(Op, u64)>,
    /// Turn every `Stored` answer into a refusal.
    refuse_all: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn appender_invariants_hold_under_random_faults(
        nodes in prop::collection::vec((0u32..4, 0u8..3), 1..8),
        r_seed in any::<u8>(),
        count in 1u32..4,
        spread in any::<bool>(),
        seed in any::<u64>(),
        ops in prop::collection::vec((arb_op(), 0u64..15), 0..80),
        refuse_all in prop::bool::weighted(0.3),
    ) {
        let replication = (r_seed as usize % nodes.len()) + 1;
        run(Case { nodes, replication, count, spread, seed, ops, refuse_all })?;
    }

    /// One copy on one of few nodes, every store answered at once and never stored: each
    /// step resolves the only open store, so the run reaches its deadline with nothing in
    /// doubt except what the transport could not vouch for. This is where "certainly not
    /// appended" versus `Indeterminate` is decided by single sends.
    #[test]
    fn certainty_follows_every_unresolved_send(
        n in 1usize..4,
        seed in any::<u64>(),
        ops in prop::collection::vec((arb_refusal(), 0u64..40), 0..40),
    ) {
        run(Case {
            nodes: vec![(1, 0); n],
            replication: 1,
            count: 1,
            spread: false,
            seed,
            ops,
            refuse_all: true,
        })?;
    }
}

fn arb_refusal() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Reply(0, Reply::Overloaded)),
        Just(Op::Reply(0, Reply::NoSpace)),
        Just(Op::Reply(0, Reply::Disabled)),
        any::<bool>().prop_map(|a| Op::TransportFailed(0, a)),
        Just(Op::Tick),
    ]
}

fn run(case: Case) -> Result<(), TestCaseError> {
    let Case {
        nodes,
        replication,
        count,
        spread,
        seed,
        ops,
        refuse_all,
    } = case;
    let n = nodes.len() as u32;
    let node_set = NodeSet::new((1..=n).map(NodeId).collect());
    let grant = Grant {
        log: LogId(1),
        first: Lsn::new(Epoch(2), Esn(5)),
        count,
        node_set: node_set.clone(),
        replication: replication as u8,
        durability: Durability::Durable,
        lng: Esn(4),
        timestamp_ms: 1,
        sequencer: NodeId(50),
    };
    let payloads: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; i as usize * 3]).collect();
    let policy = AppendPolicy {
        store_timeout_initial: Duration::from_millis(10),
        store_timeout_max: Duration::from_millis(80),
        append_timeout: Duration::from_millis(300),
        domain_scope: spread.then_some(DomainScope::RACK),
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut graylist = Graylist::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut appender, actions) = Appender::start(
        &grant,
        payloads.clone(),
        &cluster(&nodes),
        policy,
        &Limits::default(),
        now,
        &graylist,
        &mut rng,
    )
    .unwrap();
    let deadline = appender.deadline();
    let mut model = Model {
        node_set,
        replication,
        payloads,
        lsns: grant.first..=Lsn::new(Epoch(2), Esn(5 + count - 1)),
        policy,
        pending: Vec::new(),
        holders: BTreeSet::new(),
        in_doubt: BTreeSet::new(),
        acked: BTreeSet::new(),
        copysets: BTreeMap::new(),
        wave: 0,
        sealed: false,
        outcome: None,
    };
    model.check(actions, now, deadline, None)?;

    for (op, advance_ms) in ops {
        now += Duration::from_millis(advance_ms);
        let pick = |p: usize, pending: &mut Vec<Send>| {
            // Newest first more often than not, so current waves get answered and finish.
            let len = pending.len();
            (len > 0).then(|| pending.remove(len - 1 - p.saturating_sub(8) % len))
        };
        let (event, cause) = match op {
            Op::Tick => (Event::Tick, None),
            Op::Reply(p, reply) => {
                // Runs where no node ever stores exercise the "certainly not appended"
                // side of the outcome, which needs every store resolved as refused.
                let reply = match reply {
                    Reply::Stored if refuse_all => Reply::Overloaded,
                    other => other,
                };
                let Some(s) = pick(p, &mut model.pending) else {
                    continue;
                };
                model.in_doubt.remove(&(s.wave, s.node));
                let status = match reply {
                    Reply::Stored => {
                        model.holders.insert(s.node);
                        model.acked.insert((s.wave, s.node));
                        StoreStatus::Stored
                    }
                    Reply::Overloaded => StoreStatus::Overloaded,
                    Reply::NoSpace => StoreStatus::NoSpace,
                    Reply::Disabled => StoreStatus::Disabled,
                    Reply::Preempted => {
                        model.sealed |= model.outcome.is_none();
                        StoreStatus::Preempted {
                            seal: Epoch(2),
                            sequencer: None,
                        }
                    }
                    Reply::Checksum => StoreStatus::ChecksumMismatch { lsn: grant.first },
                };
                (
                    Event::StoreReply {
                        node: s.node,
                        wave: s.wave,
                        status,
                    },
                    Some(reply),
                )
            }
            Op::TimedOut(p) => {
                let Some(s) = pick(p, &mut model.pending) else {
                    continue;
                };
                let current = s.wave == model.wave && model.outcome.is_none() && !model.sealed;
                let before = model.slow_count(&graylist, now);
                let event = Event::StoreTimedOut {
                    node: s.node,
                    wave: s.wave,
                };
                let actions = appender.handle(now, event, &mut graylist, &mut rng);
                let after = model.slow_count(&graylist, now);
                if current {
                    let members = &model.copysets[&s.wave];
                    let outstanding: Vec<NodeId> = members
                        .iter()
                        .copied()
                        .filter(|n| !model.acked.contains(&(s.wave, *n)))
                        .collect();
                    if outstanding.len() == members.len() {
                        prop_assert_eq!(after, before, "graylisted in a silent wave");
                    } else {
                        prop_assert_eq!(
                            graylist.reason(outstanding[0], now),
                            Some(AvoidReason::Slow)
                        );
                        prop_assert!(after <= before + 1, "graylisted more than one");
                    }
                } else {
                    prop_assert_eq!(after, before, "a stale timeout graylisted a node");
                }
                model.check(actions, now, deadline, None)?;
                continue;
            }
            Op::TransportFailed(p, applied) => {
                let Some(s) = pick(p, &mut model.pending) else {
                    continue;
                };
                if !applied {
                    model.in_doubt.remove(&(s.wave, s.node));
                }
                (
                    Event::TransportFailed {
                        node: s.node,
                        wave: s.wave,
                        may_have_been_applied: applied,
                    },
                    None,
                )
            }
        };
        let actions = appender.handle(now, event, &mut graylist, &mut rng);
        model.check(actions, now, deadline, cause)?;
    }
    // Whatever happened, the append has an outcome by its deadline.
    let end = now.max(deadline);
    let actions = appender.handle(end, Event::Tick, &mut graylist, &mut rng);
    model.check(actions, end, deadline, None)?;
    prop_assert!(model.outcome.is_some());
    prop_assert!(appender.is_done());
    Ok(())
}
