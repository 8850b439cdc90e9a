//! Unit tests of epoch recovery, one rule each, driven by hand or through the simulated
//! cluster in `sim`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_common::quorum::AuthStatus;
use tally_common::wire::{StoreBatch, StoreStatus};
use tally_common::{Epoch, Esn, Lsn, NodeId, RecordFlags};

use super::sim::{Cluster, EPOCH, LOG, SEAL, SimNode, check_store_shape, config, copy, ids, sim};
use super::*;

fn t0() -> Instant {
    Instant::now()
}

fn start(cfg: EpochRecoveryConfig, now: Instant) -> (EpochRecovery, Vec<Action>) {
    let mut r = EpochRecovery::new(cfg, RecoveryTiming::default(), now).unwrap();
    let a = r.drain_actions();
    (r, a)
}

fn attempt0() -> Attempt {
    Attempt {
        epoch: EPOCH,
        number: 0,
    }
}

fn sealed(node: u32, lng: u32, tail: Lsn) -> Event {
    Event::Sealed {
        node: NodeId(node),
        attempt: attempt0(),
        seal: SEAL,
        lng: Esn(lng),
        tail,
        data_loss: false,
    }
}

fn digest_starts(actions: &[Action]) -> Vec<(NodeId, Esn)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartDigest { node, after, .. } => Some((*node, *after)),
            _ => None,
        })
        .collect()
}

#[test]
fn seals_go_to_the_whole_node_set_and_digest_waits_for_an_f_majority() {
    let now = t0();
    let (mut r, actions) = start(config(5, 3, &[]), now);
    let seals: Vec<_> = actions
        .iter()
        .map(|a| match a {
            Action::SendSeal { node, seal, .. } => (*node, *seal),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        seals,
        ids(5).into_iter().map(|n| (n, SEAL)).collect::<Vec<_>>()
    );
    let in_epoch = Lsn::new(EPOCH, Esn(9));
    r.handle(sealed(1, 7, in_epoch), now);
    r.handle(sealed(2, 3, in_epoch), now);
    assert!(
        r.drain_actions().is_empty(),
        "2 of 5 sealed: an append may still complete"
    );
    // A node whose tail is in a later epoch says nothing about this epoch's LNG.
    r.handle(sealed(3, 9, Lsn::new(Epoch(4), Esn(2))), now);
    assert_eq!(
        digest_starts(&r.drain_actions()),
        vec![
            (NodeId(1), Esn(7)),
            (NodeId(2), Esn(7)),
            (NodeId(3), Esn(7))
        ]
    );
    r.handle(sealed(4, 0, in_epoch), now);
    assert_eq!(digest_starts(&r.drain_actions()), vec![(NodeId(4), Esn(7))]);
}

#[test]
fn preempted_at_seal_aborts_and_nothing_more_is_sent() {
    let now = t0();
    let (mut r, _) = start(config(3, 2, &[]), now);
    r.handle(
        Event::Preempted {
            node: NodeId(2),
            seal: Epoch(6),
        },
        now,
    );
    assert_eq!(
        r.drain_actions(),
        vec![Action::Aborted(AbortReason::Preempted { seal: Epoch(6) })]
    );
    assert!(r.is_finished());
    for n in 1..=3 {
        r.handle(sealed(n, 0, Lsn::new(EPOCH, Esn(1))), now);
    }
    r.handle(Event::Tick, now + Duration::from_secs(60));
    assert!(r.drain_actions().is_empty());
}

#[test]
fn sealed_above_our_seal_is_preemption_and_a_lower_preempted_is_not() {
    let now = t0();
    let (mut r, _) = start(config(3, 2, &[]), now);
    r.handle(
        Event::Preempted {
            node: NodeId(1),
            seal: SEAL,
        },
        now,
    );
    assert!(!r.is_finished(), "our own seal does not preempt us");
    r.handle(
        Event::Sealed {
            node: NodeId(1),
            attempt: attempt0(),
            seal: Epoch(7),
            lng: Esn(0),
            tail: Lsn::INVALID,
            data_loss: false,
        },
        now,
    );
    assert_eq!(
        r.drain_actions(),
        vec![Action::Aborted(AbortReason::Preempted { seal: Epoch(7) })]
    );
}

#[test]
fn full_recovery_rereplicates_plugs_holes_and_bridges_then_cleans() {
    let nodes: BTreeMap<_, _> = [
        (
            NodeId(1),
            sim(true, vec![copy(2, RecordFlags::NONE, 1, b"a")]),
        ),
        (
            NodeId(2),
            sim(true, vec![copy(2, RecordFlags::NONE, 2, b"b")]),
        ),
        (
            NodeId(3),
            sim(true, vec![copy(4, RecordFlags::NONE, 1, b"c")]),
        ),
    ]
    .into_iter()
    .collect();
    let mut c = Cluster::new(nodes);
    let mut r = EpochRecovery::new(config(3, 2, &[]), RecoveryTiming::default(), c.now).unwrap();
    c.run(&mut r, 10);
    check_store_shape(&c.stores, &ids(3), 2);
    let kinds = |esn| {
        c.stores_at(esn)
            .iter()
            .map(|s| (s.node, s.batch.flags, s.batch.records[0].payload.clone()))
            .collect::<Vec<_>>()
    };
    let rec = RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::DURABLE;
    let plug = rec | RecordFlags::HOLE;
    let bridge = plug | RecordFlags::BRIDGE;
    for esn in [1, 3] {
        assert!(kinds(esn).iter().all(|(_, f, _)| *f == plug), "esn {esn}");
        assert_eq!(kinds(esn).len(), 2);
    }
    // Both holders of ESN 2 get the winning (wave 2) copy.
    let k2 = kinds(2);
    assert_eq!(
        k2.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
        vec![NodeId(1), NodeId(2)]
    );
    assert!(k2.iter().all(|(_, f, p)| *f == rec && p[..] == b"b"[..]));
    assert!(
        kinds(4)
            .iter()
            .all(|(_, f, p)| *f == rec && p[..] == b"c"[..])
    );
    assert!(
        kinds(4).iter().any(|(n, _, _)| *n == NodeId(3)),
        "holder first"
    );
    assert!(kinds(5).iter().all(|(_, f, _)| *f == bridge));
    assert_eq!(kinds(5).len(), 2);
    assert!(kinds(6).is_empty());
    let tail = Lsn::new(EPOCH, Esn(5));
    assert!(c.all_actions.iter().any(|a| matches!(
        a,
        Action::WriteLastCleanEpoch { log: LOG, epoch: EPOCH, tail: t, outcome: Some(o) }
            if *t == tail && o.tail == tail && o.epoch == EPOCH && o.authoritative
    )));
    assert_eq!(
        c.all_actions.last(),
        Some(&Action::EpochRecovered { epoch: EPOCH, tail })
    );
    // Clean went out before the LCE write, with the tail.
    let clean_at = c
        .all_actions
        .iter()
        .position(
            |a| matches!(a, Action::SendClean { tail: t, seal, .. } if *t == tail && *seal == SEAL),
        )
        .unwrap();
    let lce_at = c
        .all_actions
        .iter()
        .position(|a| matches!(a, Action::WriteLastCleanEpoch { .. }))
        .unwrap();
    assert!(clean_at < lce_at);
}

#[test]
fn empty_epoch_gets_only_a_bridge() {
    let nodes = ids(3).into_iter().map(|n| (n, sim(true, vec![]))).collect();
    let mut c = Cluster::new(nodes);
    let mut r = EpochRecovery::new(config(3, 2, &[]), RecoveryTiming::default(), c.now).unwrap();
    c.run(&mut r, 10);
    assert!(!c.stores.is_empty());
    assert!(c.stores.iter().all(|s| {
        s.batch.flags.contains(RecordFlags::BRIDGE)
            && s.batch.records[0].lsn == Lsn::new(EPOCH, Esn(1))
    }));
    assert!(c.all_actions.contains(&Action::EpochRecovered {
        epoch: EPOCH,
        tail: Lsn::new(EPOCH, Esn(1))
    }));
}

#[test]
fn grace_period_lets_a_straggler_contribute() {
    let now = t0();
    let (mut r, _) = start(config(5, 3, &[]), now);
    let tail = Lsn::new(EPOCH, Esn(2));
    for n in 1..=5 {
        r.handle(sealed(n, 0, tail), now);
    }
    r.drain_actions();
    for n in 1..=3 {
        r.handle(
            Event::DigestDone {
                node: NodeId(n),
                attempt: attempt0(),
            },
            now,
        );
    }
    assert!(
        r.drain_actions().is_empty(),
        "f-majority: grace period starts"
    );
    r.handle(Event::Tick, now + Duration::from_millis(50));
    assert!(r.drain_actions().is_empty(), "still in the grace period");
    // Node 4 answers within the grace period with a record nobody else has.
    r.handle(
        Event::DigestRecords {
            node: NodeId(4),
            attempt: attempt0(),
            records: vec![copy(2, RecordFlags::NONE, 1, b"late")],
        },
        now + Duration::from_millis(60),
    );
    r.handle(
        Event::DigestDone {
            node: NodeId(4),
            attempt: attempt0(),
        },
        now + Duration::from_millis(60),
    );
    assert!(r.drain_actions().is_empty(), "node 5 may still answer");
    r.handle(Event::Tick, now + Duration::from_millis(100));
    let plan = r.plan().expect("grace expired: the plan is made");
    assert!(plan.authoritative);
    assert_eq!(plan.bridge, Some(Esn(3)));
    let stores: Vec<_> = r
        .drain_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::SendStore { batch, .. } => Some(batch),
            _ => None,
        })
        .collect();
    assert!(
        stores
            .iter()
            .any(|b| b.records[0].lsn.esn() == Esn(2) && b.records[0].payload[..] == b"late"[..])
    );
}

#[test]
fn no_f_majority_of_digests_waits_then_restarts() {
    let now = t0();
    let (mut r, _) = start(config(5, 3, &[]), now);
    for n in 1..=5 {
        r.handle(sealed(n, 0, Lsn::new(EPOCH, Esn(1))), now);
    }
    r.handle(
        Event::DigestDone {
            node: NodeId(1),
            attempt: attempt0(),
        },
        now,
    );
    r.handle(Event::Tick, now + Duration::from_secs(5));
    assert!(r.plan().is_none());
    r.drain_actions();
    r.handle(Event::Tick, now + Duration::from_secs(30));
    let actions = r.drain_actions();
    let next = Attempt {
        epoch: EPOCH,
        number: 1,
    };
    assert_eq!(actions[0], Action::Restart { attempt: next });
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::SendSeal { attempt, .. } if *attempt == next))
            .count(),
        5
    );
    // Answers to the old attempt are ignored.
    for n in 1..=5 {
        r.handle(sealed(n, 0, Lsn::new(EPOCH, Esn(1))), now);
    }
    assert!(digest_starts(&r.drain_actions()).is_empty());
}

#[test]
fn non_authoritative_digest_plugs_nothing_and_bridges_after_the_known_tail() {
    use AuthStatus::Unavailable;
    // 4 nodes, R = 2: an f-majority is 3. Nodes 3 and 4 are being rebuilt; node 3 still
    // answers (it seals and says it holds ESN 6) but its digest proves nothing.
    let mut n3 = sim(true, vec![copy(6, RecordFlags::NONE, 1, b"x")]);
    n3.answers_digest = false;
    let nodes = [
        (
            NodeId(1),
            sim(true, vec![copy(2, RecordFlags::NONE, 1, b"a")]),
        ),
        (NodeId(2), sim(true, vec![])),
        (NodeId(3), n3),
        (NodeId(4), sim(false, vec![])),
    ]
    .into_iter()
    .collect();
    let mut c = Cluster::new(nodes);
    let cfg = config(4, 2, &[(3, Unavailable), (4, Unavailable)]);
    let mut r = EpochRecovery::new(cfg, RecoveryTiming::default(), c.now).unwrap();
    c.run(&mut r, 10);
    let plan = r.plan().unwrap().clone();
    assert!(!plan.authoritative);
    assert_eq!(plan.bridge, Some(Esn(7)));
    assert!(
        c.stores
            .iter()
            .all(|s| !s.batch.flags.contains(RecordFlags::HOLE)
                || s.batch.flags.contains(RecordFlags::BRIDGE)),
        "no hole plugs"
    );
    assert!(
        c.stores_at(2)
            .iter()
            .all(|s| s.batch.records[0].payload[..] == b"a"[..])
    );
    // Unavailable nodes take no recovery writes.
    assert!(
        c.stores
            .iter()
            .all(|s| s.node == NodeId(1) || s.node == NodeId(2))
    );
    assert!(r.is_finished());
}

#[test]
fn a_node_that_says_it_lost_data_does_not_make_the_digest_authoritative() {
    // 4 nodes, R = 2: an f-majority is 3. Membership still says every node is fine, but node
    // 3 restarted after losing `fast` writes and says so when sealed; node 4 is down. Nodes 1
    // to 3 answering is then no f-majority of nodes whose "no record" counts: recovery must
    // wait for node 4 rather than plug holes where node 3's lost copy of an acknowledged
    // record could have been.
    let run = |n3_lost_data: bool| {
        let mut n3 = sim(true, vec![]);
        n3.data_loss = n3_lost_data;
        let nodes = [
            (
                NodeId(1),
                sim(true, vec![copy(3, RecordFlags::NONE, 1, b"c")]),
            ),
            (NodeId(2), sim(true, vec![])),
            (NodeId(3), n3),
            (NodeId(4), sim(false, vec![])),
        ]
        .into_iter()
        .collect();
        let mut c = Cluster::new(nodes);
        let mut r =
            EpochRecovery::new(config(4, 2, &[]), RecoveryTiming::default(), c.now).unwrap();
        c.run(&mut r, 10);
        let plan = r.plan().map(|p| p.authoritative);
        let plugs = c
            .stores
            .iter()
            .filter(|s| {
                s.batch.flags.contains(RecordFlags::HOLE)
                    && !s.batch.flags.contains(RecordFlags::BRIDGE)
            })
            .count();
        (plan, plugs)
    };
    assert_eq!(
        run(true),
        (None, 0),
        "no plan, no hole plugs while node 4 is away"
    );
    // The control: the same answers without the data-loss flag are an authoritative digest
    // that plugs ESNs 1 and 2.
    let (plan, plugs) = run(false);
    assert_eq!(plan, Some(true));
    assert!(plugs >= 2, "{plugs} plugs");
}

#[test]
fn failed_store_moves_the_esn_to_a_new_copyset_and_stale_acks_do_not_count() {
    let now = t0();
    let (mut r, _) = start(config(4, 2, &[]), now);
    for n in 1..=4 {
        r.handle(sealed(n, 0, Lsn::new(Epoch(2), Esn(1))), now);
    }
    r.drain_actions();
    for n in 1..=4 {
        r.handle(
            Event::DigestDone {
                node: NodeId(n),
                attempt: attempt0(),
            },
            now,
        );
    }
    // Empty epoch: one bridge at ESN 1, rotated copyset {2, 3}.
    let sends: Vec<(NodeId, u64, StoreBatch)> = r
        .drain_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::SendStore {
                node, seq, batch, ..
            } => Some((node, seq, batch)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sends.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![NodeId(2), NodeId(3)]
    );
    let reply = |node: NodeId, seq: u64, status: StoreStatus| Event::StoreReply {
        node,
        attempt: attempt0(),
        seq,
        status,
    };
    r.handle(reply(NodeId(3), sends[1].1, StoreStatus::NoSpace), now);
    let resent: Vec<(NodeId, u64, StoreBatch)> = r
        .drain_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::SendStore {
                node, seq, batch, ..
            } => Some((node, seq, batch)),
            _ => None,
        })
        .collect();
    assert_eq!(
        resent.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![NodeId(2), NodeId(4)]
    );
    assert_eq!(resent[0].2.copyset.nodes(), &[NodeId(2), NodeId(4)]);
    // Node 2's ack of the superseded store does not count.
    r.handle(reply(NodeId(2), sends[0].1, StoreStatus::Stored), now);
    r.handle(reply(NodeId(4), resent[1].1, StoreStatus::Stored), now);
    assert!(
        r.drain_actions().is_empty(),
        "node 2's new copy is not acked yet"
    );
    r.handle(reply(NodeId(2), resent[0].1, StoreStatus::Stored), now);
    assert!(
        r.drain_actions()
            .iter()
            .any(|a| matches!(a, Action::SendClean { .. }))
    );
}

#[test]
fn preempted_store_aborts_with_no_further_stores() {
    let mut nodes: BTreeMap<NodeId, SimNode> = ids(3)
        .into_iter()
        .map(|n| (n, sim(true, vec![copy(1, RecordFlags::NONE, 1, b"a")])))
        .collect();
    nodes.get_mut(&NodeId(2)).unwrap().store_status = Some(StoreStatus::Preempted {
        seal: Epoch(9),
        sequencer: None,
    });
    let mut c = Cluster::new(nodes);
    let mut r = EpochRecovery::new(config(3, 2, &[]), RecoveryTiming::default(), c.now).unwrap();
    c.run(&mut r, 10);
    assert!(r.is_finished());
    assert!(
        c.all_actions
            .contains(&Action::Aborted(AbortReason::Preempted { seal: Epoch(9) }))
    );
    assert!(!c.all_actions.iter().any(|a| matches!(
        a,
        Action::SendClean { .. } | Action::WriteLastCleanEpoch { .. }
    )));
}

#[test]
fn unreachable_seal_is_retried_after_the_interval() {
    let now = t0();
    let (mut r, _) = start(config(3, 2, &[]), now);
    r.handle(Event::NodeUnreachable { node: NodeId(2) }, now);
    r.handle(Event::Tick, now + Duration::from_millis(100));
    assert!(r.drain_actions().is_empty());
    r.handle(Event::Tick, now + Duration::from_millis(500));
    assert_eq!(
        r.drain_actions(),
        vec![Action::SendSeal {
            node: NodeId(2),
            log: LOG,
            seal: SEAL,
            attempt: attempt0()
        }]
    );
}

#[test]
fn lce_write_failure_is_retried_and_a_newer_lce_counts_as_done() {
    for current in [Epoch(2), Epoch(3)] {
        let nodes = ids(3).into_iter().map(|n| (n, sim(true, vec![]))).collect();
        let mut c = Cluster::new(nodes);
        let mut r =
            EpochRecovery::new(config(3, 2, &[]), RecoveryTiming::default(), c.now).unwrap();
        // Run until the LCE write, answering it with a failure by hand.
        let mut queue: Vec<Event> = Vec::new();
        loop {
            let actions = r.drain_actions();
            if actions
                .iter()
                .any(|a| matches!(a, Action::WriteLastCleanEpoch { .. }))
            {
                break;
            }
            for a in &actions {
                queue.extend(c.answer(a));
            }
            assert!(!queue.is_empty(), "stalled");
            for ev in std::mem::take(&mut queue) {
                r.handle(ev, c.now);
            }
        }
        r.handle(
            Event::LceWriteFailed {
                epoch: EPOCH,
                current,
            },
            c.now,
        );
        if current >= EPOCH {
            assert!(r.is_finished());
            continue;
        }
        assert!(!r.is_finished());
        r.handle(Event::Tick, c.now + Duration::from_millis(600));
        assert!(
            r.drain_actions()
                .iter()
                .any(|a| matches!(a, Action::WriteLastCleanEpoch { .. }))
        );
        r.handle(Event::LceWritten { epoch: EPOCH }, c.now);
        assert!(r.is_finished());
    }
}

#[test]
fn preemption_drops_requests_not_yet_taken() {
    let now = t0();
    let (mut r, _) = start(config(3, 2, &[]), now);
    for n in 1..=3 {
        r.handle(sealed(n, 0, Lsn::new(EPOCH, Esn(1))), now);
    }
    for n in 1..=3 {
        r.handle(
            Event::DigestDone {
                node: NodeId(n),
                attempt: attempt0(),
            },
            now,
        );
    }
    // Digests and stores were produced but the runtime has not taken them yet.
    r.handle(
        Event::Preempted {
            node: NodeId(3),
            seal: Epoch(5),
        },
        now,
    );
    assert_eq!(
        r.drain_actions(),
        vec![Action::Aborted(AbortReason::Preempted { seal: Epoch(5) })]
    );
}

#[test]
fn only_nodes_without_their_data_are_unavailable_to_recovery() {
    use tally_common::meta::StorageState;
    for (state, status) in [
        (StorageState::Provisioning, AuthStatus::FullyAuthoritative),
        (StorageState::ReadWrite, AuthStatus::FullyAuthoritative),
        (StorageState::ReadOnly, AuthStatus::FullyAuthoritative),
        (StorageState::Disabled, AuthStatus::FullyAuthoritative),
        (StorageState::DataLoss, AuthStatus::Unavailable),
        (StorageState::Gone, AuthStatus::Unavailable),
    ] {
        assert_eq!(auth_status(state), status, "{state:?}");
    }
}

#[test]
fn ticks_come_at_half_the_shortest_timer() {
    let timing = RecoveryTiming {
        digest_grace: Duration::from_millis(100),
        retry_interval: Duration::from_millis(500),
        ..RecoveryTiming::default()
    };
    assert_eq!(timing.tick_interval(), Duration::from_millis(50));
    let tiny = RecoveryTiming {
        digest_grace: Duration::from_micros(10),
        ..timing
    };
    assert_eq!(tiny.tick_interval(), Duration::from_millis(1));
}
