//! Scenario tests of the appender: each drives it through one situation of DESIGN §6 with
//! hand-picked events and checks the actions it returns.

use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tally_common::Epoch;

struct Fixture {
    appender: Appender,
    graylist: Graylist,
    rng: StdRng,
    t0: Instant,
}

fn grant(nodes: u32, replication: u8, count: u32) -> Grant {
    Grant {
        log: LogId(7),
        first: Lsn::new(Epoch(3), Esn(10)),
        count,
        node_set: NodeSet::new((1..=nodes).map(NodeId).collect()),
        replication,
        durability: Durability::Durable,
        lng: Esn(9),
        timestamp_ms: 1_700_000_000_000,
        sequencer: NodeId(100),
    }
}

fn payloads(count: u32) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("record {i}").into_bytes())
        .collect()
}

fn policy() -> AppendPolicy {
    AppendPolicy {
        append_timeout: Duration::from_secs(600),
        ..AppendPolicy::default()
    }
}

fn start(nodes: u32, replication: u8) -> (Fixture, Vec<Action>) {
    let t0 = Instant::now();
    let graylist = Graylist::default();
    let mut rng = StdRng::seed_from_u64(17);
    let (appender, actions) = Appender::start(
        &grant(nodes, replication, 2),
        payloads(2),
        &[],
        policy(),
        &Limits::default(),
        t0,
        &graylist,
        &mut rng,
    )
    .unwrap();
    (
        Fixture {
            appender,
            graylist,
            rng,
            t0,
        },
        actions,
    )
}

impl Fixture {
    fn at(&mut self, ms: u64, event: Event) -> Vec<Action> {
        let now = self.t0 + Duration::from_millis(ms);
        self.appender
            .handle(now, event, &mut self.graylist, &mut self.rng)
    }

    fn reply(&mut self, node: NodeId, status: StoreStatus) -> Vec<Action> {
        let wave = self.appender.wave();
        self.at(1, Event::StoreReply { node, wave, status })
    }

    fn members(&self) -> Vec<NodeId> {
        self.appender.copyset().nodes().to_vec()
    }
}

/// The (node, batch, timeout) of every SendStore, in order.
fn sends(actions: &[Action]) -> Vec<(NodeId, &StoreBatch, Duration)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendStore {
                node,
                batch,
                timeout,
            } => Some((*node, batch, *timeout)),
            _ => None,
        })
        .collect()
}

#[test]
fn first_wave_sends_one_full_store_per_member() {
    let (f, actions) = start(5, 3);
    let sends = sends(&actions);
    assert_eq!(sends.len(), 3);
    assert_eq!(
        sends.iter().map(|s| s.0).collect::<Vec<_>>(),
        f.members(),
        "one store per copyset member, in copyset order"
    );
    for (_, batch, timeout) in &sends {
        assert_eq!(batch.wave_or_seal, 1);
        assert_eq!(batch.copyset.nodes(), f.members().as_slice());
        assert_eq!(batch.flags, RecordFlags::DURABLE);
        assert_eq!(batch.lng, Esn(9));
        assert_eq!(*timeout, Duration::from_millis(10));
        assert_eq!(batch.records.len(), 2);
        for (i, r) in batch.records.iter().enumerate() {
            assert_eq!(r.lsn, Lsn::new(Epoch(3), Esn(10 + i as u32)));
            assert_eq!(r.payload, format!("record {i}").into_bytes());
            assert_eq!(r.payload_crc32, payload_crc32(&r.payload));
        }
    }
}

#[test]
fn completes_after_exactly_r_acks_of_one_wave() {
    let (mut f, _) = start(5, 3);
    let m = f.members();
    assert!(f.reply(m[0], StoreStatus::Stored).is_empty());
    assert!(
        f.reply(m[0], StoreStatus::Stored).is_empty(),
        "a duplicate ack"
    );
    assert!(f.reply(m[1], StoreStatus::Stored).is_empty());
    let done = f.reply(m[2], StoreStatus::Stored);
    assert_eq!(
        done,
        vec![Action::Completed {
            lsns: Lsn::new(Epoch(3), Esn(10))..=Lsn::new(Epoch(3), Esn(11)),
            copyset: Copyset::new(m.clone()).unwrap(),
            wave: 1,
        }]
    );
    assert!(f.appender.is_done());
    assert!(f.reply(m[0], StoreStatus::Overloaded).is_empty());
}

#[test]
fn an_ack_from_outside_the_copyset_does_not_count() {
    let (mut f, _) = start(5, 2);
    let m = f.members();
    let outsider = (1..=5).map(NodeId).find(|n| !m.contains(n)).unwrap();
    assert!(f.reply(m[0], StoreStatus::Stored).is_empty());
    assert!(f.reply(outsider, StoreStatus::Stored).is_empty());
    assert!(!f.appender.is_done());
}

#[test]
fn a_refusal_starts_a_new_wave_with_amends_for_stored_copies() {
    // Four nodes, R = 3: once the refusing node is avoided, the next copyset is the other
    // three, so the node that stored in wave 1 is certainly in wave 2.
    let (mut f, _) = start(4, 3);
    let m = f.members();
    assert!(f.reply(m[0], StoreStatus::Stored).is_empty());
    let next = f.reply(m[1], StoreStatus::Overloaded);
    assert_eq!(f.appender.wave(), 2);
    assert_eq!(
        f.graylist.reason(m[1], f.t0 + Duration::from_millis(1)),
        Some(AvoidReason::Overloaded)
    );
    let sends = sends(&next);
    assert_eq!(sends.len(), 3);
    assert!(
        sends.iter().all(|s| s.0 != m[1]),
        "routes around the refusal"
    );
    for (node, batch, timeout) in &sends {
        assert_eq!(batch.wave_or_seal, 2);
        assert_eq!(*timeout, Duration::from_millis(20));
        let amend = batch.flags.contains(RecordFlags::AMEND);
        assert_eq!(amend, *node == m[0], "AMEND exactly for the earlier holder");
        assert!(batch.flags.contains(RecordFlags::DURABLE));
        assert_eq!(batch.records.len(), 2);
        for r in &batch.records {
            assert_eq!(r.payload.is_empty(), amend);
            assert_eq!(
                r.payload_crc32,
                payload_crc32(&payloads(2)[(r.lsn.esn().0 - 10) as usize])
            );
        }
    }
}

#[test]
fn late_acks_of_an_old_wave_do_not_complete_the_new_one() {
    let (mut f, _) = start(6, 2);
    let m1 = f.members();
    f.at(
        1,
        Event::StoreTimedOut {
            node: m1[0],
            wave: 1,
        },
    );
    assert_eq!(f.appender.wave(), 2);
    // Both wave-1 members answer late: two Stored acks, but of the wrong wave.
    for &n in &m1 {
        let a = f.at(
            2,
            Event::StoreReply {
                node: n,
                wave: 1,
                status: StoreStatus::Stored,
            },
        );
        assert!(a.is_empty());
    }
    assert!(!f.appender.is_done());
    // They are holders now: a later wave that picks them sends AMENDs.
    let m2 = f.members();
    let next = f.at(
        3,
        Event::StoreTimedOut {
            node: m2[0],
            wave: 2,
        },
    );
    for (node, batch, _) in sends(&next) {
        assert_eq!(batch.flags.contains(RecordFlags::AMEND), m1.contains(&node));
    }
}

#[test]
fn a_timeout_graylists_only_the_first_outstanding_member() {
    let (mut f, _) = start(6, 3);
    let m = f.members();
    f.reply(m[1], StoreStatus::Stored);
    // The timer of the last member fires first; still the first outstanding one is blamed.
    let next = f.at(
        10,
        Event::StoreTimedOut {
            node: m[2],
            wave: 1,
        },
    );
    let now = f.t0 + Duration::from_millis(10);
    assert_eq!(f.graylist.reason(m[0], now), Some(AvoidReason::Slow));
    assert_eq!(f.graylist.reason(m[2], now), None);
    assert_eq!(f.graylist.active_len(now), 1);
    assert_eq!(f.appender.wave(), 2);
    assert!(sends(&next).iter().all(|s| s.0 != m[0]));
    // The other outstanding member's timer of wave 1 fires too: stale, ignored.
    assert!(
        f.at(
            10,
            Event::StoreTimedOut {
                node: m[0],
                wave: 1
            }
        )
        .is_empty()
    );
    assert_eq!(f.appender.wave(), 2);
}

#[test]
fn when_every_member_timed_out_nobody_is_graylisted() {
    let (mut f, _) = start(6, 3);
    let m = f.members();
    f.at(
        10,
        Event::StoreTimedOut {
            node: m[0],
            wave: 1,
        },
    );
    assert_eq!(f.appender.wave(), 2);
    assert_eq!(f.graylist.active_len(f.t0), 0);
}

#[test]
fn store_timeout_doubles_per_wave_up_to_the_cap() {
    let p = AppendPolicy {
        store_timeout_initial: Duration::from_millis(10),
        store_timeout_max: Duration::from_secs(60),
        ..AppendPolicy::default()
    };
    assert_eq!(p.store_timeout(1), Duration::from_millis(10));
    assert_eq!(p.store_timeout(2), Duration::from_millis(20));
    assert_eq!(p.store_timeout(13), Duration::from_millis(40_960));
    assert_eq!(p.store_timeout(14), Duration::from_secs(60));
    assert_eq!(p.store_timeout(1000), Duration::from_secs(60));

    let (mut f, first) = start(6, 3);
    let mut timeouts = vec![sends(&first)[0].2];
    for _ in 0..5 {
        let node = f.members()[0];
        let wave = f.appender.wave();
        let next = f.at(1, Event::StoreTimedOut { node, wave });
        timeouts.push(sends(&next)[0].2);
    }
    let ms: Vec<u128> = timeouts.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, vec![10, 20, 40, 80, 160, 320]);
}

#[test]
fn store_timeout_never_outlives_the_append() {
    let t0 = Instant::now();
    let g = Graylist::default();
    let mut rng = StdRng::seed_from_u64(1);
    let p = AppendPolicy {
        store_timeout_initial: Duration::from_secs(5),
        append_timeout: Duration::from_secs(2),
        ..AppendPolicy::default()
    };
    let (_, actions) = Appender::start(
        &grant(3, 2, 1),
        payloads(1),
        &[],
        p,
        &Limits::default(),
        t0,
        &g,
        &mut rng,
    )
    .unwrap();
    assert_eq!(sends(&actions)[0].2, Duration::from_secs(2));
}

#[test]
fn no_space_and_disabled_nodes_are_routed_around() {
    let (mut f, _) = start(5, 2);
    let m = f.members();
    let next = f.reply(m[0], StoreStatus::NoSpace);
    assert!(sends(&next).iter().all(|s| s.0 != m[0]));
    let m2 = f.members();
    let next = f.reply(m2[0], StoreStatus::Disabled);
    let now = f.t0 + Duration::from_millis(1);
    assert_eq!(f.graylist.reason(m[0], now), Some(AvoidReason::NoSpace));
    assert_eq!(f.graylist.reason(m2[0], now), Some(AvoidReason::Disabled));
    assert!(sends(&next).iter().all(|s| s.0 != m[0] && s.0 != m2[0]));
    assert_eq!(f.appender.wave(), 3);
}

#[test]
fn preempted_says_whether_copies_may_exist() {
    // R = 1 on one node: the only store is refused, so no copy can exist.
    let (mut f, _) = start(1, 1);
    let seal = StoreStatus::Preempted {
        seal: Epoch(4),
        sequencer: Some(NodeId(9)),
    };
    let m = f.members();
    assert_eq!(
        f.reply(m[0], seal.clone()),
        vec![Action::Failed(AppendError::Preempted {
            seal: Epoch(4),
            sequencer: Some(NodeId(9)),
            may_be_stored: false,
        })]
    );
    // R = 2: one copy stored, then a seal.
    let (mut f, _) = start(3, 2);
    let m = f.members();
    f.reply(m[0], StoreStatus::Stored);
    let out = f.reply(m[1], seal);
    assert!(matches!(
        out.as_slice(),
        [Action::Failed(AppendError::Preempted {
            may_be_stored: true,
            ..
        })]
    ));
    let Action::Failed(err) = &out[0] else {
        unreachable!()
    };
    assert!(!err.certainly_not_appended());
}

#[test]
fn a_seal_learned_from_an_old_wave_still_preempts() {
    let (mut f, _) = start(5, 2);
    let m = f.members();
    let wave2 = sends(&f.reply(m[0], StoreStatus::Overloaded))
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>();
    assert_eq!(wave2.len(), 2);
    let preempted = StoreStatus::Preempted {
        seal: Epoch(3),
        sequencer: None,
    };
    let out = f.at(
        2,
        Event::StoreReply {
            node: m[1],
            wave: 1,
            status: preempted.clone(),
        },
    );
    // Wave 2's payload stores are unresolved: the append waits for them, starts nothing.
    assert_eq!(out, vec![]);
    // One of them stored a copy before the seal: copies may exist.
    assert_eq!(f.reply(wave2[0], StoreStatus::Stored), vec![]);
    let out = f.reply(wave2[1], preempted);
    assert!(matches!(
        out.as_slice(),
        [Action::Failed(AppendError::Preempted {
            may_be_stored: true,
            ..
        })]
    ));
}

#[test]
fn a_preempted_append_waits_for_its_stores_and_knows_when_nothing_was_stored() {
    let seal = StoreStatus::Preempted {
        seal: Epoch(4),
        sequencer: Some(NodeId(9)),
    };
    // R = 3: the first refusal ends nothing while two stores are on their way; when they are
    // refused too, no copy can exist and the append may be retried.
    let (mut f, _) = start(3, 3);
    let m = f.members();
    assert_eq!(f.reply(m[0], seal.clone()), vec![]);
    assert_eq!(f.reply(m[1], seal.clone()), vec![]);
    let out = f.reply(m[2], seal.clone());
    assert_eq!(
        out,
        vec![Action::Failed(AppendError::Preempted {
            seal: Epoch(4),
            sequencer: Some(NodeId(9)),
            may_be_stored: false,
        })]
    );
    let Action::Failed(err) = &out[0] else {
        unreachable!()
    };
    assert!(err.certainly_not_appended());
    assert!(f.appender.is_done());

    // A store that timed out may have been applied: copies may exist.
    let (mut f, _) = start(3, 3);
    let m = f.members();
    let wave = f.appender.wave();
    assert_eq!(f.reply(m[0], seal.clone()), vec![]);
    assert_eq!(f.at(5, Event::StoreTimedOut { node: m[1], wave }), vec![]);
    let out = f.at(
        6,
        Event::TransportFailed {
            node: m[2],
            wave,
            may_have_been_applied: false,
        },
    );
    assert!(matches!(
        out.as_slice(),
        [Action::Failed(AppendError::Preempted {
            may_be_stored: true,
            ..
        })]
    ));

    // The append timeout ends the wait even if a store never answers.
    let (mut f, _) = start(3, 3);
    let m = f.members();
    assert_eq!(f.reply(m[0], seal), vec![]);
    let late = policy().append_timeout.as_millis() as u64 + 1;
    let out = f.at(late, Event::Tick);
    assert!(matches!(
        out.as_slice(),
        [Action::Failed(AppendError::Preempted {
            may_be_stored: true,
            ..
        })]
    ));
}

#[test]
fn checksum_mismatch_is_terminal() {
    let (mut f, _) = start(1, 1);
    let m = f.members();
    let lsn = Lsn::new(Epoch(3), Esn(10));
    let out = f.reply(m[0], StoreStatus::ChecksumMismatch { lsn });
    assert_eq!(
        out,
        vec![Action::Failed(AppendError::ChecksumMismatch {
            node: m[0],
            lsn
        })]
    );
    // With other stores in flight, copies may exist: the outcome is unknown.
    let (mut f, _) = start(4, 2);
    let m = f.members();
    let out = f.reply(m[0], StoreStatus::ChecksumMismatch { lsn });
    assert!(matches!(
        out.as_slice(),
        [Action::Failed(AppendError::Indeterminate {
            cause: IndeterminateCause::ChecksumMismatch { .. }
        })]
    ));
}

#[test]
fn append_timeout_with_unresolved_stores_is_indeterminate() {
    let (mut f, _) = start(3, 2);
    let m = f.members();
    f.reply(m[0], StoreStatus::Stored);
    assert!(f.at(599_999, Event::Tick).is_empty(), "not yet");
    let out = f.at(600_000, Event::Tick);
    assert_eq!(
        out,
        vec![Action::Failed(AppendError::Indeterminate {
            cause: IndeterminateCause::TimedOut
        })]
    );
    assert!(f.at(700_000, Event::Tick).is_empty(), "reports once");
}

#[test]
fn append_timeout_when_nothing_was_applied_is_certain() {
    let (mut f, _) = start(2, 1);
    // The wave's only store never left the client; the next wave's neither, and by then the
    // append timeout has passed: certainly not appended.
    let m = f.members();
    let next = f.at(
        1,
        Event::TransportFailed {
            node: m[0],
            wave: 1,
            may_have_been_applied: false,
        },
    );
    let (node, _, _) = sends(&next)[0];
    let out = f.at(
        600_000,
        Event::TransportFailed {
            node,
            wave: 2,
            may_have_been_applied: false,
        },
    );
    assert_eq!(out, vec![Action::Failed(AppendError::TimedOut)]);
    let Action::Failed(err) = &out[0] else {
        unreachable!()
    };
    assert!(err.certainly_not_appended());
    let then = f.t0 + Duration::from_millis(1);
    assert_eq!(
        f.graylist.reason(m[0], then),
        Some(AvoidReason::Unreachable)
    );
}

#[test]
fn a_transport_failure_that_may_have_applied_keeps_the_doubt() {
    let (mut f, _) = start(1, 1);
    let m = f.members();
    f.at(
        1,
        Event::TransportFailed {
            node: m[0],
            wave: 1,
            may_have_been_applied: true,
        },
    );
    // The only node failed: wave 2 waits one store timeout (10 ms), then goes to it again.
    assert_eq!(f.appender.wave(), 1);
    assert_eq!(f.appender.wake_at(), f.t0 + Duration::from_millis(11));
    assert_eq!(sends(&f.at(11, Event::Tick)).len(), 1);
    // Wave 2 is refused right at the deadline: the wave-1 store that may have been applied
    // keeps the outcome open.
    assert_eq!(f.appender.wave(), 2);
    let out = f.at(
        600_000,
        Event::StoreReply {
            node: m[0],
            wave: 2,
            status: StoreStatus::Overloaded,
        },
    );
    assert_eq!(
        out,
        vec![Action::Failed(AppendError::Indeterminate {
            cause: IndeterminateCause::TimedOut
        })]
    );
}

#[test]
fn oversized_payloads_fail_before_any_action() {
    let t0 = Instant::now();
    let g = Graylist::default();
    let mut rng = StdRng::seed_from_u64(1);
    let limits = Limits {
        max_payload_bytes: 8,
        ..Limits::default()
    };
    let err = Appender::start(
        &grant(3, 2, 2),
        vec![b"short".to_vec(), b"far too long".to_vec()],
        &[],
        policy(),
        &limits,
        t0,
        &g,
        &mut rng,
    )
    .unwrap_err();
    assert_eq!(
        err,
        AppendError::PayloadTooLarge {
            index: 1,
            size: 12,
            max: 8
        }
    );
    assert!(err.certainly_not_appended());
}

#[test]
fn the_batch_must_match_its_grant_and_fit_a_frame() {
    let t0 = Instant::now();
    let g = Graylist::default();
    let mut rng = StdRng::seed_from_u64(1);
    let mut start_with = |grant: Grant, payloads: Vec<Vec<u8>>, limits: Limits| {
        Appender::start(&grant, payloads, &[], policy(), &limits, t0, &g, &mut rng).map(|_| ())
    };
    let l = Limits::default();
    assert!(matches!(
        start_with(grant(3, 2, 3), payloads(2), l),
        Err(AppendError::InvalidBatch { .. })
    ));
    assert!(matches!(
        start_with(grant(3, 2, 1), vec![], l),
        Err(AppendError::InvalidBatch { .. })
    ));
    let mut past_epoch_end = grant(3, 2, 2);
    past_epoch_end.first = Lsn::new(Epoch(3), Esn(u32::MAX));
    assert!(matches!(
        start_with(past_epoch_end, payloads(2), l),
        Err(AppendError::InvalidBatch { .. })
    ));
    // 20 payloads of 1 MiB do not fit one 16 MiB frame.
    let big = vec![vec![0u8; l.max_payload_bytes]; 20];
    assert!(matches!(
        start_with(grant(3, 2, 20), big, l),
        Err(AppendError::InvalidBatch { .. })
    ));
    assert_eq!(
        start_with(grant(2, 3, 2), payloads(2), l),
        Err(AppendError::Placement(
            crate::PlacementError::NotEnoughNodes {
                needed: 3,
                available: 2
            }
        ))
    );
}

#[test]
fn fast_durability_sends_no_durable_flag() {
    let t0 = Instant::now();
    let g = Graylist::default();
    let mut rng = StdRng::seed_from_u64(1);
    let mut gr = grant(3, 2, 1);
    gr.durability = Durability::Fast;
    let (_, actions) = Appender::start(
        &gr,
        payloads(1),
        &[],
        policy(),
        &Limits::default(),
        t0,
        &g,
        &mut rng,
    )
    .unwrap();
    for (_, batch, _) in sends(&actions) {
        assert_eq!(batch.flags, RecordFlags::NONE);
        assert_eq!(batch.durability, Durability::Fast);
    }
}

#[test]
fn graylisted_nodes_are_avoided_from_the_first_wave() {
    let t0 = Instant::now();
    let mut g = Graylist::default();
    g.add(NodeId(1), AvoidReason::NoSpace, t0);
    g.add(NodeId(2), AvoidReason::Unreachable, t0);
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (a, _) = Appender::start(
            &grant(4, 2, 1),
            payloads(1),
            &[],
            policy(),
            &Limits::default(),
            t0,
            &g,
            &mut rng,
        )
        .unwrap();
        assert_eq!(a.copyset().nodes().len(), 2);
        assert!(!a.copyset().contains(NodeId(1)) && !a.copyset().contains(NodeId(2)));
    }
}

#[test]
fn with_too_few_healthy_nodes_the_next_wave_waits_a_store_timeout() {
    // R = 3 of 4: after two refusals only two nodes are left to use.
    let (mut f, _) = start(4, 3);
    let m = f.members();
    let next = f.reply(m[0], StoreStatus::Disabled);
    assert_eq!(sends(&next).len(), 3, "three usable nodes: wave 2 at once");
    let m2 = f.members();
    let refused = m2.iter().copied().find(|n| *n != m[0]).unwrap();
    let next = f.reply(refused, StoreStatus::Overloaded);
    assert!(next.is_empty(), "no tight loop over refusing nodes");
    assert_eq!(f.appender.wave(), 2);
    // Wave 2's store timeout is 20 ms; the refusal came at 1 ms.
    assert_eq!(f.appender.wake_at(), f.t0 + Duration::from_millis(21));
    // Other answers of the waiting wave start nothing; an early tick neither.
    let other = m2.iter().copied().find(|n| *n != refused).unwrap();
    assert!(f.reply(other, StoreStatus::NoSpace).is_empty());
    assert!(f.at(20, Event::Tick).is_empty());
    let next = f.at(21, Event::Tick);
    assert_eq!(
        sends(&next).len(),
        3,
        "the wave starts when due, reusing avoided nodes"
    );
    assert_eq!(f.appender.wave(), 3);
}

#[test]
fn refusals_everywhere_end_certain_when_no_store_is_in_flight() {
    let t0 = Instant::now();
    let mut g = Graylist::default();
    let mut rng = StdRng::seed_from_u64(3);
    let p = AppendPolicy {
        store_timeout_initial: Duration::from_millis(100),
        append_timeout: Duration::from_millis(250),
        ..AppendPolicy::default()
    };
    let (mut a, actions) = Appender::start(
        &grant(2, 2, 1),
        payloads(1),
        &[],
        p,
        &Limits::default(),
        t0,
        &g,
        &mut rng,
    )
    .unwrap();
    let ms = |n| t0 + Duration::from_millis(n);
    let refuse = |node, wave| Event::StoreReply {
        node,
        wave,
        status: StoreStatus::Disabled,
    };
    let nodes: Vec<NodeId> = sends(&actions).iter().map(|s| s.0).collect();
    assert!(
        a.handle(ms(1), refuse(nodes[0], 1), &mut g, &mut rng)
            .is_empty()
    );
    assert!(
        a.handle(ms(2), refuse(nodes[1], 1), &mut g, &mut rng)
            .is_empty()
    );
    assert_eq!(a.wake_at(), ms(101));
    assert_eq!(
        sends(&a.handle(ms(101), Event::Tick, &mut g, &mut rng)).len(),
        2
    );
    assert!(
        a.handle(ms(102), refuse(nodes[0], 2), &mut g, &mut rng)
            .is_empty()
    );
    assert!(
        a.handle(ms(103), refuse(nodes[1], 2), &mut g, &mut rng)
            .is_empty()
    );
    // The next wave would start after the deadline: the append just times out, and with
    // every store refused no copy can exist.
    assert_eq!(a.wake_at(), ms(250));
    let out = a.handle(ms(250), Event::Tick, &mut g, &mut rng);
    assert_eq!(out, vec![Action::Failed(AppendError::TimedOut)]);
}

/// A node set of R nodes: a timed-out member cannot be avoided, so the next wave waits a store
/// timeout, and the timed-out STORE's late `Stored` (the driver keeps awaiting it past the
/// store timeout) completes the wave it belongs to — no second wave resends the batch to the
/// same busy nodes.
#[test]
fn a_late_store_completes_its_wave_when_no_other_copyset_exists() {
    let (mut f, actions) = start(3, 3);
    assert_eq!(sends(&actions).len(), 3);
    let m = f.members();
    assert!(f.reply(m[0], StoreStatus::Stored).is_empty());
    assert!(f.reply(m[1], StoreStatus::Stored).is_empty());
    // The third is slow: its store timeout (10 ms) passes.
    let wave = f.appender.wave();
    let next = f.at(10, Event::StoreTimedOut { node: m[2], wave });
    assert!(
        sends(&next).is_empty(),
        "no copyset avoids it: the wave waits"
    );
    assert_eq!(f.appender.wave(), 1);
    // Its answer comes late, before the next wave is due: the wave completes with it.
    let done = f.at(
        15,
        Event::StoreReply {
            node: m[2],
            wave,
            status: StoreStatus::Stored,
        },
    );
    assert!(
        matches!(done.as_slice(), [Action::Completed { wave: 1, .. }]),
        "{done:?}"
    );
}
