//! Property test of epoch recovery against an independent model of its rules: random digests
//! (per-ESN copies on random subsets of nodes, normal waves, earlier recoveries' records and
//! plugs), nodes that are unavailable, silent or seal-only, and `Preempted` injected at a
//! random answer. The model decides per ESN the winning copy and the bridge; the run must
//! write exactly that, and never anything it must not.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tally_common::quorum::AuthStatus;
use tally_common::wire::ReadRecord;
use tally_common::{Epoch, Esn, Lsn, NodeId, Precedence, RecordFlags};

use super::sim::{Cluster, EPOCH, SEAL, SimNode, check_store_shape, config, copy, ids};
use super::{AbortReason, Action, EpochRecovery, RecoveryTiming};

const MAX_ESN: u32 = 10;

/// How a node behaves in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Seals, digests, stores, cleans.
    Answers,
    /// Seals and takes stores, but its digest never finishes.
    SealOnly,
    /// Unreachable throughout.
    Silent,
}

/// One copy in the generated digest.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Normal {
        wave: u32,
    },
    /// Written by an earlier recovery sealed at `seal` (< ours): a plug or a record, fixed per
    /// (ESN, seal) since one recovery decides one thing per ESN.
    Recovery {
        seal: u32,
    },
}

fn make_copy(esn: u32, kind: Kind) -> ReadRecord {
    match kind {
        Kind::Normal { wave } => copy(
            esn,
            RecordFlags::NONE,
            wave,
            format!("e{esn}w{wave}").as_bytes(),
        ),
        Kind::Recovery { seal } if (esn + seal).is_multiple_of(3) => copy(
            esn,
            RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::HOLE,
            seal,
            b"",
        ),
        Kind::Recovery { seal } => copy(
            esn,
            RecordFlags::WRITTEN_BY_RECOVERY,
            seal,
            format!("e{esn}s{seal}").as_bytes(),
        ),
    }
}

/// The model's verdict for one ESN: the winning copy among answering nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Win {
    Record(Vec<u8>),
    Hole,
}

fn model_winner(copies: &[&ReadRecord]) -> Option<Win> {
    copies
        .iter()
        .map(|c| {
            let hole = c.header.flags.contains(RecordFlags::HOLE);
            // Records beat plugs at equal precedence (never lose data).
            let key: (Precedence, bool) = (c.header.precedence(), !hole);
            let win = if hole {
                Win::Hole
            } else {
                Win::Record(c.payload.clone())
            };
            (key, win)
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, w)| w)
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => (1u32..4).prop_map(|wave| Kind::Normal { wave }),
        1 => (1u32..SEAL.0).prop_map(|seal| Kind::Recovery { seal }),
    ]
}

fn behaviour_strategy() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => Just(Behaviour::Answers),
        1 => Just(Behaviour::SealOnly),
        1 => Just(Behaviour::Silent),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    n: u32,
    r: u8,
    behaviours: Vec<Behaviour>,
    unavailable: Vec<bool>,
    /// (esn, node index, kind)
    copies: Vec<(u32, usize, Kind)>,
    preempt_at: Option<usize>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (3u32..=6)
        .prop_flat_map(|n| {
            (
                Just(n),
                1u8..=3,
                proptest::collection::vec(behaviour_strategy(), n as usize),
                proptest::collection::vec(proptest::bool::weighted(0.2), n as usize),
                proptest::collection::vec((1u32..=MAX_ESN, 0..n as usize, kind_strategy()), 0..24),
                proptest::option::weighted(0.3, 0usize..40),
            )
        })
        .prop_map(|(n, r, behaviours, unavailable, copies, preempt_at)| Case {
            n,
            r: r.min(n as u8),
            behaviours,
            unavailable,
            copies,
            preempt_at,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn recovery_writes_exactly_what_the_digest_decides(case in case_strategy()) {
        let n = case.n;
        let r = case.r as usize;
        let node = |i: usize| NodeId(i as u32 + 1);
        let mut nodes: BTreeMap<NodeId, SimNode> = BTreeMap::new();
        for i in 0..n as usize {
            let b = case.behaviours[i];
            nodes.insert(node(i), SimNode {
                answers_seal: b != Behaviour::Silent,
                answers_digest: b == Behaviour::Answers,
                copies: Vec::new(),
                store_status: None,
                data_loss: false,
            });
        }
        for (esn, i, kind) in &case.copies {
            let sim = nodes.get_mut(&node(*i)).unwrap();
            // One copy per node and ESN (a node's merge keeps one).
            if sim.copies.iter().all(|c| c.header.lsn.esn() != Esn(*esn)) {
                sim.copies.push(make_copy(*esn, *kind));
            }
        }
        for sim in nodes.values_mut() {
            sim.copies.sort_by_key(|c| c.header.lsn);
        }
        let statuses: Vec<(u32, AuthStatus)> = (0..n as usize)
            .filter(|i| case.unavailable[*i])
            .map(|i| (node(i).0, AuthStatus::Unavailable))
            .collect();

        let mut cluster = Cluster::new(nodes.clone());
        cluster.preempt_at = case.preempt_at;
        let mut rec =
            EpochRecovery::new(config(n, case.r, &statuses), RecoveryTiming::default(), cluster.now)
                .unwrap();
        cluster.run(&mut rec, 60);
        check_store_shape(&cluster.stores, &ids(n), r);

        let recovered = cluster.all_actions.iter().any(|a| matches!(a, Action::EpochRecovered { .. }));
        let aborted = cluster.all_actions.iter().any(|a| matches!(a, Action::Aborted(_)));
        prop_assert!(!(recovered && aborted));

        if cluster.preempted {
            // Preemption at any point: no store after it, and the recovery ends aborted
            // (unless it had already finished).
            prop_assert_eq!(cluster.stores_after_preemption, 0);
            if !recovered {
                let want = Action::Aborted(AbortReason::Preempted { seal: Epoch(SEAL.0 + 1) });
                prop_assert!(cluster.all_actions.contains(&want), "not aborted");
            }
            return Ok(());
        }

        // The model. Seal: a plain f-majority must answer.
        let f_majority = n as usize - r + 1;
        let sealing = nodes.values().filter(|s| s.answers_seal).count();
        let full = |i: usize| !case.unavailable[i];
        let answering: Vec<usize> =
            (0..n as usize).filter(|i| case.behaviours[*i] == Behaviour::Answers).collect();
        let counted = answering.iter().filter(|i| full(**i)).count();
        let could = (0..n as usize).filter(|i| full(*i)).count();
        let authoritative = counted >= f_majority;
        let decidable = sealing >= f_majority && (authoritative || counted == could);
        let writable = (0..n as usize)
            .filter(|i| full(*i) && case.behaviours[*i] != Behaviour::Silent)
            .count();
        if !decidable || writable < r {
            prop_assert!(!recovered, "recovered without the quorums it needs");
            if !decidable {
                prop_assert!(cluster.stores.is_empty());
            }
            return Ok(());
        }
        prop_assert!(recovered, "should have recovered: {:?}", cluster.all_actions.last());

        // Winners among answering nodes' copies.
        let mut winners: BTreeMap<u32, Win> = BTreeMap::new();
        for esn in 1..=MAX_ESN {
            let copies: Vec<&ReadRecord> = answering
                .iter()
                .flat_map(|i| nodes[&node(*i)].copies.iter())
                .filter(|c| c.header.lsn.esn() == Esn(esn))
                .collect();
            if let Some(w) = model_winner(&copies) {
                winners.insert(esn, w);
            }
        }
        let last_record = winners
            .iter()
            .filter(|(_, w)| matches!(w, Win::Record(_)))
            .map(|(e, _)| *e)
            .max()
            .unwrap_or(0);
        let bridge = if authoritative {
            last_record + 1
        } else {
            let known_tail = nodes
                .values()
                .filter(|s| s.answers_seal)
                .map(Cluster::tail_of)
                .filter(|t| t.epoch() == EPOCH)
                .map(|t| t.esn().0)
                .max()
                .unwrap_or(0);
            last_record.max(known_tail) + 1
        };

        // Per ESN: what was written, on how many nodes (the final copyset, all members sent).
        let written = |esn: u32| {
            let at: Vec<_> = cluster.stores_at(esn);
            let last_copyset = at.last().map(|s| s.batch.copyset.clone());
            (at, last_copyset)
        };
        for esn in 1..=MAX_ESN + 1 {
            let (at, copyset) = written(esn);
            let plugs = at.iter().filter(|s| s.batch.flags.contains(RecordFlags::HOLE)
                && !s.batch.flags.contains(RecordFlags::BRIDGE)).count();
            let bridges = at.iter().filter(|s| s.batch.flags.contains(RecordFlags::BRIDGE)).count();
            if esn > bridge {
                prop_assert!(at.is_empty(), "store past the bridge at {}", esn);
                continue;
            }
            if esn == bridge {
                prop_assert_eq!(bridges, at.len(), "only the bridge at {}", esn);
            } else {
                prop_assert_eq!(bridges, 0, "a bridge at {} (bridge is {})", esn, bridge);
                match winners.get(&esn) {
                    Some(Win::Record(payload)) => {
                        prop_assert_eq!(plugs, 0, "plug over a record at {}", esn);
                        prop_assert!(at.iter().all(|s| s.batch.records[0].payload == payload));
                    }
                    Some(Win::Hole) => {
                        prop_assert_eq!(plugs, at.len());
                    }
                    None if authoritative => prop_assert_eq!(plugs, at.len()),
                    None => {
                        prop_assert!(at.is_empty(), "non-authoritative write at {}", esn);
                        continue;
                    }
                }
            }
            // The ESN ended on a full copyset of writable nodes, every member written; nodes
            // not available for writes are in it only as holders (their copy is overwritten).
            let copyset = copyset.expect("written");
            let members: BTreeSet<NodeId> = copyset.nodes().iter().copied().collect();
            let holder = |i: usize| {
                answering.contains(&i)
                    && nodes[&node(i)].copies.iter().any(|c| c.header.lsn.esn() == Esn(esn))
            };
            let mut writable_members = 0;
            for m in &members {
                let i = m.0 as usize - 1;
                if full(i) {
                    prop_assert!(case.behaviours[i] != Behaviour::Silent);
                    writable_members += 1;
                } else {
                    prop_assert!(holder(i), "unavailable non-holder written at {}", esn);
                }
                prop_assert!(at.iter().any(|s| s.node == *m && s.batch.copyset == copyset));
            }
            prop_assert!(writable_members >= r);
        }
        let want = Action::EpochRecovered { epoch: EPOCH, tail: Lsn::new(EPOCH, Esn(bridge)) };
        prop_assert!(cluster.all_actions.contains(&want), "tail is not the bridge {}", bridge);
    }
}
