//! One unit test per rule of the read stream, each driving [`ReadStream`] by hand with a few
//! nodes and checking deliveries and actions exactly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_common::meta::{LogAttributes, LogMetadata, NodeSet, NodeSetEntry};
use tally_common::quorum::AuthStatus;
use tally_common::wire::{GapKind, ReadRecord};
use tally_common::{
    Copyset, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader, payload_crc32,
};

use super::*;

pub(super) const LOG: LogId = LogId(7);

pub(super) fn lsn(epoch: u32, esn: u32) -> Lsn {
    Lsn::new(Epoch(epoch), Esn(esn))
}

pub(super) fn metadata(entries: &[(u32, &[u32], u8)], current: u32) -> LogMetadata {
    LogMetadata {
        next_epoch: Epoch(current + 1),
        history: entries
            .iter()
            .map(|(since, nodes, r)| NodeSetEntry {
                since: Epoch(*since),
                node_set: NodeSet::new(nodes.iter().copied().map(NodeId).collect()),
                replication: *r,
            })
            .collect(),
        last_clean_epoch: Epoch(current.saturating_sub(1)),
        last_clean_tail: Lsn::INVALID,
        recovered: Vec::new(),
        attributes: LogAttributes::default(),
    }
}

pub(super) fn record_with(at: Lsn, flags: RecordFlags, payload: Vec<u8>) -> ReadRecord {
    ReadRecord {
        header: RecordHeader {
            log: LOG,
            lsn: at,
            timestamp_ms: 1,
            lng: Esn(0),
            wave_or_seal: 1,
            flags,
            copyset: Copyset::new(vec![NodeId(0)]).unwrap(),
            payload_crc32: payload_crc32(&payload),
        },
        payload,
    }
}

fn rec(at: Lsn) -> ReadRecord {
    record_with(at, RecordFlags::NONE, format!("r{at}").into_bytes())
}

fn plug(at: Lsn) -> ReadRecord {
    record_with(
        at,
        RecordFlags::HOLE | RecordFlags::WRITTEN_BY_RECOVERY,
        vec![],
    )
}

fn bridge(at: Lsn) -> ReadRecord {
    record_with(
        at,
        RecordFlags::BRIDGE | RecordFlags::WRITTEN_BY_RECOVERY,
        vec![],
    )
}

fn gap(kind: GapKind, from: Lsn, to: Lsn) -> Delivery {
    Delivery::Gap { kind, from, to }
}

/// A hand-driven reader: records the streams it opened and everything it emitted.
struct Harness {
    rs: ReadStream,
    streams: BTreeMap<NodeId, StreamId>,
    out: Vec<Delivery>,
    actions: Vec<Action>,
    now: Instant,
}

impl Harness {
    fn new(config: ReadStreamConfig, meta: &LogMetadata) -> Harness {
        let mut h = Harness {
            rs: ReadStream::new(config, meta).unwrap(),
            streams: BTreeMap::new(),
            out: Vec::new(),
            actions: Vec::new(),
            now: Instant::now(),
        };
        h.pump();
        h
    }

    fn pump(&mut self) {
        while let Some(a) = self.rs.poll_action() {
            match &a {
                Action::OpenStream {
                    stream,
                    from,
                    until,
                    window_until,
                    ..
                } => {
                    // What a node would refuse as a bad read range.
                    assert!(
                        from <= until && window_until >= from,
                        "bad StartRead {from}..={until}, window until {window_until}"
                    );
                    self.streams.insert(stream.node, *stream);
                }
                Action::CloseStream { stream }
                    if self.streams.get(&stream.node) == Some(stream) =>
                {
                    self.streams.remove(&stream.node);
                }
                _ => {}
            }
            self.actions.push(a);
        }
        while let Some(d) = self.rs.poll_delivery() {
            self.out.push(d);
        }
        // Taking deliveries may have produced window actions.
        while let Some(a) = self.rs.poll_action() {
            self.actions.push(a);
        }
    }

    fn sid(&self, node: u32) -> StreamId {
        self.streams[&NodeId(node)]
    }

    fn records(&mut self, node: u32, recs: Vec<ReadRecord>) {
        let s = self.sid(node);
        self.rs.on_records(s, recs);
        self.pump();
    }

    fn no_records(&mut self, node: u32, from: Lsn, to: Lsn) {
        let s = self.sid(node);
        self.rs.on_gap(s, GapKind::NoRecords, from, to);
        self.pump();
    }

    fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.rs.on_tick(self.now);
        self.pump();
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn lsns(&self) -> Vec<Lsn> {
        self.out.iter().map(|d| d.from()).collect()
    }
}

/// A config whose window is `window` LSNs whatever the records weigh (the byte bound has
/// its own tests).
fn config(from: Lsn, until: Lsn) -> ReadStreamConfig {
    let mut cfg = ReadStreamConfig::new(LOG, from, until);
    cfg.window_bytes = u64::MAX;
    cfg
}

fn three_nodes() -> LogMetadata {
    metadata(&[(1, &[0, 1, 2], 2)], 1)
}

#[test]
fn opens_one_stream_per_node_of_the_node_set() {
    let h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    let opened: Vec<(NodeId, Lsn, Lsn)> = h
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::OpenStream {
                stream,
                from,
                window_until,
                filter,
                ..
            } => {
                assert!(!filter.single_copy);
                Some((stream.node, *from, *window_until))
            }
            _ => None,
        })
        .collect();
    let window_end = Lsn(lsn(1, 0).0 + ReadStreamConfig::DEFAULT_WINDOW);
    assert_eq!(
        opened,
        vec![
            (NodeId(0), lsn(1, 1), window_end),
            (NodeId(1), lsn(1, 1), window_end),
            (NodeId(2), lsn(1, 1), window_end)
        ]
    );
    let start = h.actions[0].request(LOG).unwrap();
    assert!(matches!(
        start,
        tally_common::wire::client::ClientRequest::StartRead { from, .. } if from == lsn(1, 1)
    ));
}

#[test]
fn merges_by_lsn_and_drops_duplicates() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(1, vec![rec(lsn(1, 2)), rec(lsn(1, 3))]);
    assert!(h.out.is_empty(), "LSN 1 is not known yet");
    h.records(0, vec![rec(lsn(1, 1)), rec(lsn(1, 2))]);
    h.records(2, vec![rec(lsn(1, 1)), rec(lsn(1, 3)), rec(lsn(1, 3))]);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2), lsn(1, 3)]);
    assert!(h.out.iter().all(|d| matches!(d, Delivery::Record(_))));
    assert_eq!(h.rs.stats().duplicates, 4);
    assert_eq!(h.rs.next_lsn(), lsn(1, 4));
}

#[test]
fn a_bad_copy_counts_as_missing_from_that_node() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    let mut bad = rec(lsn(1, 1));
    bad.payload[0] ^= 1;
    h.records(0, vec![bad]);
    assert!(h.out.is_empty());
    assert_eq!(h.rs.stats().bad_copies, 1);
    h.records(1, vec![rec(lsn(1, 1))]);
    assert_eq!(h.out, vec![Delivery::Record(rec(lsn(1, 1)))]);
}

#[test]
fn every_copy_bad_is_data_loss_once_proved() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    let mut bad = rec(lsn(1, 1));
    bad.payload[0] ^= 1;
    h.records(0, vec![bad.clone(), rec(lsn(1, 2))]);
    h.records(1, vec![bad.clone(), rec(lsn(1, 2))]);
    h.no_records(2, lsn(1, 1), lsn(1, 5));
    assert_eq!(
        h.out,
        vec![
            gap(GapKind::DataLoss, lsn(1, 1), lsn(1, 1)),
            Delivery::Record(rec(lsn(1, 2)))
        ]
    );
}

#[test]
fn of_two_buffered_copies_the_higher_precedence_one_is_delivered() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    let old = record_with(lsn(1, 2), RecordFlags::NONE, b"first wave".to_vec());
    let recovered = record_with(
        lsn(1, 2),
        RecordFlags::WRITTEN_BY_RECOVERY,
        b"kept".to_vec(),
    );
    h.records(0, vec![old]);
    h.records(1, vec![recovered.clone()]);
    h.records(2, vec![rec(lsn(1, 1))]);
    assert_eq!(h.out[1], Delivery::Record(recovered));
}

#[test]
fn hole_plugs_become_hole_gaps() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(0, vec![rec(lsn(1, 1)), plug(lsn(1, 2)), rec(lsn(1, 3))]);
    assert_eq!(
        h.out,
        vec![
            Delivery::Record(rec(lsn(1, 1))),
            gap(GapKind::Hole, lsn(1, 2), lsn(1, 2)),
            Delivery::Record(rec(lsn(1, 3)))
        ]
    );
}

#[test]
fn trim_gaps_from_a_node_become_trim_gaps_but_never_hide_a_record() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(1, vec![rec(lsn(1, 3))]);
    let s = h.sid(0);
    h.rs.on_gap(s, GapKind::Trim, lsn(1, 1), lsn(1, 5));
    h.pump();
    assert_eq!(
        h.out,
        vec![
            gap(GapKind::Trim, lsn(1, 1), lsn(1, 2)),
            Delivery::Record(rec(lsn(1, 3))),
            gap(GapKind::Trim, lsn(1, 4), lsn(1, 5)),
        ]
    );
}

#[test]
fn data_loss_needs_an_f_majority_and_then_the_grace_period() {
    // n = 3, R = 2: an f-majority is 2 nodes.
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(0, vec![rec(lsn(1, 1)), rec(lsn(1, 3))]);
    assert_eq!(h.lsns(), vec![lsn(1, 1)]);
    h.tick(1_000);
    assert_eq!(h.lsns(), vec![lsn(1, 1)], "one node proves nothing");
    h.records(1, vec![rec(lsn(1, 1))]);
    h.no_records(1, lsn(1, 2), lsn(1, 2));
    assert_eq!(
        h.lsns(),
        vec![lsn(1, 1)],
        "f-majority, but the grace period runs"
    );
    h.tick(0); // the grace period starts at the first tick after the f-majority
    h.tick(99);
    assert_eq!(h.lsns(), vec![lsn(1, 1)]);
    h.tick(1);
    assert_eq!(
        h.out[1..],
        [
            gap(GapKind::DataLoss, lsn(1, 2), lsn(1, 2)),
            Delivery::Record(rec(lsn(1, 3)))
        ]
    );
}

#[test]
fn a_complete_answer_needs_no_grace_period() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(0, vec![rec(lsn(1, 4))]);
    h.no_records(1, lsn(1, 1), lsn(1, 9));
    assert!(h.out.is_empty());
    h.no_records(2, lsn(1, 1), lsn(1, 2));
    // Everyone passed 1..=2; only nodes 0 and 1 passed 3: that part waits for grace.
    assert_eq!(h.out, vec![gap(GapKind::DataLoss, lsn(1, 1), lsn(1, 2))]);
    h.tick(0);
    h.tick(100);
    assert_eq!(
        h.out[1..],
        [
            gap(GapKind::DataLoss, lsn(1, 3), lsn(1, 3)),
            Delivery::Record(rec(lsn(1, 4)))
        ]
    );
}

#[test]
fn absence_without_anything_after_it_is_not_typed() {
    // Nodes proved nothing is at 2..=5 but nothing follows yet (tail): wait, do not guess.
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    for n in 0..3 {
        h.records(n, vec![rec(lsn(1, 1))]);
        h.no_records(n, lsn(1, 2), lsn(1, 5));
    }
    h.tick(0);
    h.tick(1_000);
    assert_eq!(h.lsns(), vec![lsn(1, 1)]);
    assert!(
        h.rs.stalled().is_none(),
        "caught up at the tail is not stalled"
    );
}

#[test]
fn non_authoritative_answers_stall_and_never_report_data_loss() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.rs.on_node_status(NodeId(1), AuthStatus::Unavailable);
    h.rs.on_node_status(NodeId(2), AuthStatus::Unavailable);
    h.pump();
    h.records(0, vec![rec(lsn(1, 2))]);
    h.no_records(1, lsn(1, 1), lsn(1, 9));
    h.no_records(2, lsn(1, 1), lsn(1, 9));
    h.tick(0);
    h.tick(10_000);
    assert!(h.out.is_empty());
    assert_eq!(
        h.rs.stalled(),
        Some((lsn(1, 1), &[NodeId(1), NodeId(2)][..]))
    );
    assert!(h.actions.contains(&Action::Stalled {
        at: lsn(1, 1),
        waiting_for: vec![NodeId(1), NodeId(2)]
    }));
    // A rebuilt-empty node counts as having answered.
    h.rs.on_node_status(NodeId(1), AuthStatus::Empty);
    h.pump();
    assert!(h.rs.stalled().is_none());
    h.tick(0);
    h.tick(100);
    assert_eq!(h.out[0], gap(GapKind::DataLoss, lsn(1, 1), lsn(1, 1)));
}

#[test]
fn too_many_down_nodes_stall_until_one_comes_back() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(0, vec![rec(lsn(1, 2))]);
    h.rs.on_node_down(NodeId(1));
    h.rs.on_node_down(NodeId(2));
    h.pump();
    assert!(h.actions.contains(&Action::Stalled {
        at: lsn(1, 1),
        waiting_for: vec![NodeId(1), NodeId(2)]
    }));
    assert!(!h.streams.contains_key(&NodeId(1)), "stream closed");
    h.tick(0);
    h.tick(10_000);
    assert!(h.out.is_empty());
    h.take_actions();
    h.rs.on_node_up(NodeId(1));
    h.pump();
    let reopened = h.take_actions();
    assert!(matches!(
        reopened[..],
        [Action::OpenStream { stream, from, .. }] if stream.node == NodeId(1) && from == lsn(1, 1)
    ));
    assert!(h.rs.stalled().is_none());
    h.no_records(1, lsn(1, 1), lsn(1, 1));
    h.tick(0);
    h.tick(100);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2)]);
}

#[test]
fn messages_of_closed_streams_are_ignored() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    let old = h.sid(1);
    h.rs.on_node_down(NodeId(1));
    h.rs.on_node_up(NodeId(1));
    h.pump();
    assert_ne!(h.sid(1), old);
    h.rs.on_gap(old, GapKind::NoRecords, lsn(1, 1), lsn(1, 9));
    h.records(0, vec![rec(lsn(1, 2))]);
    h.tick(0);
    h.tick(1_000);
    assert!(h.out.is_empty(), "the stale gap must not count");
    assert_eq!(h.rs.stats().stale_messages, 1);
}

#[test]
fn windows_bound_buffering_and_slide_as_the_application_consumes() {
    let mut cfg = config(lsn(1, 1), Lsn::MAX);
    cfg.window = 4;
    let mut h = Harness::new(cfg, &three_nodes());
    assert_eq!(h.rs.window_until(), lsn(1, 4));
    // Beyond the window: refused, not buffered.
    h.records(0, vec![rec(lsn(1, 2)), rec(lsn(1, 5))]);
    assert_eq!(h.rs.buffered(), 1);
    assert_eq!(h.rs.stats().out_of_window, 1);
    h.take_actions();
    h.records(1, vec![rec(lsn(1, 1))]);
    // Two LSNs consumed = half a window: every stream gets the new window.
    let slides: Vec<Lsn> = h
        .take_actions()
        .iter()
        .filter_map(|a| match a {
            Action::SendWindow { until, .. } => Some(*until),
            _ => None,
        })
        .collect();
    assert_eq!(slides, vec![lsn(1, 6); 3]);
    h.records(0, vec![rec(lsn(1, 5))]);
    assert_eq!(h.rs.buffered(), 1);
}

#[test]
fn stops_at_until_and_closes_every_stream() {
    let mut h = Harness::new(config(lsn(1, 1), lsn(1, 2)), &three_nodes());
    h.records(0, vec![rec(lsn(1, 1)), rec(lsn(1, 2))]);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2)]);
    assert!(h.rs.is_done());
    let closes = h
        .actions
        .iter()
        .filter(|a| matches!(a, Action::CloseStream { .. }))
        .count();
    assert_eq!(closes, 3);
    assert_eq!(h.actions.last(), Some(&Action::Done));
}

#[test]
fn missing_records_right_before_until_are_data_loss_once_proved() {
    let mut h = Harness::new(config(lsn(1, 1), lsn(1, 3)), &three_nodes());
    h.records(0, vec![rec(lsn(1, 1))]);
    for n in 0..3 {
        let s = h.sid(n);
        h.rs.on_stream_done(s);
    }
    h.pump();
    assert_eq!(h.out[1..], [gap(GapKind::DataLoss, lsn(1, 2), lsn(1, 3))]);
    assert!(h.rs.is_done());
}

#[test]
fn a_bridge_record_ends_the_epoch_and_the_next_node_set_takes_over() {
    let meta = metadata(&[(1, &[0, 1, 2], 2), (2, &[1, 2, 3], 2)], 2);
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &meta);
    h.records(0, vec![rec(lsn(1, 1)), bridge(lsn(1, 2))]);
    assert_eq!(
        h.out,
        vec![
            Delivery::Record(rec(lsn(1, 1))),
            gap(GapKind::Bridge, lsn(1, 2), lsn(2, 0))
        ]
    );
    let acts = h.take_actions();
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::CloseStream { stream } if stream.node == NodeId(0)))
    );
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::OpenStream { stream, from, .. } if stream.node == NodeId(3) && *from == lsn(2, 1)
    )));
    h.records(3, vec![rec(lsn(2, 1))]);
    assert_eq!(h.out[2], Delivery::Record(rec(lsn(2, 1))));
}

#[test]
fn an_unknown_epoch_fetches_metadata_first() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(1, vec![bridge(lsn(1, 1))]);
    assert_eq!(h.out, vec![gap(GapKind::Bridge, lsn(1, 1), lsn(2, 0))]);
    assert!(
        h.actions
            .contains(&Action::FetchMetadata { epoch: Epoch(2) })
    );
    // The windows slid past the bridge: records of epoch 2 may come in.
    assert!(h.rs.window_until() > lsn(2, 1));
    h.records(1, vec![rec(lsn(2, 1))]);
    assert_eq!(h.out.len(), 1, "no node set for epoch 2 yet");
    h.rs.on_epoch_metadata(&metadata(&[(1, &[0, 1, 2], 2)], 2));
    h.pump();
    assert_eq!(h.out[1], Delivery::Record(rec(lsn(2, 1))));
}

#[test]
fn metadata_fetches_are_repeated_soon_then_less_often() {
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &three_nodes());
    h.records(1, vec![bridge(lsn(1, 1))]);
    let fetches = |h: &mut Harness| {
        h.take_actions()
            .iter()
            .filter(|a| matches!(a, Action::FetchMetadata { epoch } if *epoch == Epoch(2)))
            .count()
    };
    assert_eq!(fetches(&mut h), 1);
    // The wait starts at the first tick, then doubles: 100 ms, 200 ms, 400 ms, 800 ms, 1 s.
    h.tick(0);
    let mut asked_after = Vec::new();
    let mut waited = 0;
    for _ in 0..400 {
        h.tick(10);
        waited += 10;
        if fetches(&mut h) == 1 {
            asked_after.push(waited);
            waited = 0;
        }
    }
    assert_eq!(asked_after[..6], [100, 200, 400, 800, 1000, 1000]);
}

#[test]
fn the_end_of_an_epoch_without_a_bridge_is_bridge_only_if_the_reader_started_past_it() {
    let meta = metadata(&[(1, &[0, 1, 2], 2)], 2);
    // Started past the bridge: benign.
    // A record of the next epoch is no evidence that this one continued.
    let mut wide = config(lsn(1, 7), Lsn::MAX);
    wide.window = 1 << 33;
    let mut h = Harness::new(wide, &meta);
    h.records(0, vec![rec(lsn(2, 1))]);
    h.no_records(1, lsn(1, 7), lsn(2, 0));
    h.no_records(2, lsn(1, 7), lsn(2, 0));
    assert_eq!(
        h.out,
        vec![
            gap(GapKind::Bridge, lsn(1, 7), lsn(2, 0)),
            Delivery::Record(rec(lsn(2, 1)))
        ]
    );
    // Entered at the epoch's start and found nothing, not even a bridge: something is lost.
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &meta);
    for n in 0..3 {
        h.no_records(n, lsn(1, 1), lsn(2, 0));
    }
    assert_eq!(h.out, vec![gap(GapKind::DataLoss, lsn(1, 1), lsn(2, 0))]);
    // Records of the epoch were read and then it ends with no bridge: its tail may be lost.
    // Nodes may prove absence beyond the window (it bounds buffered records, not proofs).
    let mut h = Harness::new(config(lsn(1, 1), Lsn::MAX), &meta);
    h.records(0, vec![rec(lsn(1, 1))]);
    for n in 0..3 {
        h.no_records(n, lsn(1, 1), lsn(2, 0));
    }
    h.records(0, vec![rec(lsn(2, 1))]);
    assert_eq!(
        h.out,
        vec![
            Delivery::Record(rec(lsn(1, 1))),
            gap(GapKind::DataLoss, lsn(1, 2), lsn(2, 0)),
            Delivery::Record(rec(lsn(2, 1)))
        ]
    );
}

#[test]
fn epochs_before_the_first_node_set_are_bridged() {
    let meta = metadata(&[(3, &[0, 1, 2], 2)], 3);
    let mut h = Harness::new(config(Lsn::OLDEST, Lsn::MAX), &meta);
    assert_eq!(h.out, vec![gap(GapKind::Bridge, Lsn::OLDEST, lsn(3, 0))]);
    h.records(2, vec![rec(lsn(3, 1))]);
    assert_eq!(h.out[1], Delivery::Record(rec(lsn(3, 1))));
}

fn scd_config() -> ReadStreamConfig {
    let mut cfg = config(lsn(1, 1), Lsn::MAX);
    cfg.single_copy = true;
    cfg.shuffle_seed = 42;
    cfg
}

#[test]
fn single_copy_rewinds_in_all_send_all_before_believing_a_gap() {
    let mut h = Harness::new(scd_config(), &three_nodes());
    assert!(h.actions.iter().all(|a| match a {
        Action::OpenStream { filter, .. } => filter.single_copy && filter.shuffle_seed == 42,
        _ => true,
    }));
    h.take_actions();
    // Record 2's shipper is silent; the others skip it.
    h.records(0, vec![rec(lsn(1, 1)), rec(lsn(1, 3))]);
    h.no_records(1, lsn(1, 1), lsn(1, 3));
    h.no_records(2, lsn(1, 1), lsn(1, 3));
    assert_eq!(
        h.lsns(),
        vec![lsn(1, 1)],
        "no gap believed in single-copy mode"
    );
    let acts = h.take_actions();
    assert_eq!(
        acts[0],
        Action::Rewind {
            from: lsn(1, 2),
            single_copy: false,
            known_down: vec![],
            reason: RewindReason::SuspectedGap
        }
    );
    let reopened: Vec<bool> = acts
        .iter()
        .filter_map(|a| match a {
            Action::OpenStream { filter, from, .. } => {
                assert_eq!(*from, lsn(1, 2));
                Some(filter.single_copy)
            }
            _ => None,
        })
        .collect();
    assert_eq!(reopened, vec![false; 3]);
    // In all-send-all the copy shows up.
    h.records(2, vec![rec(lsn(1, 2))]);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2), lsn(1, 3)]);
}

#[test]
fn single_copy_ships_around_a_silent_node_before_doubting_the_data() {
    let mut h = Harness::new(scd_config(), &three_nodes());
    h.take_actions();
    // Node 2 (the shipper of record 2) is dead without the reader knowing; an f-majority
    // (nodes 0 and 1) moved past record 2 in single-copy mode.
    h.records(0, vec![rec(lsn(1, 1)), rec(lsn(1, 3))]);
    h.no_records(1, lsn(1, 1), lsn(1, 3));
    assert_eq!(h.lsns(), vec![lsn(1, 1)]);
    assert!(h.take_actions().is_empty(), "waits for the grace period");
    h.tick(1);
    h.tick(100);
    let acts = h.take_actions();
    assert_eq!(
        acts[0],
        Action::Rewind {
            from: lsn(1, 2),
            single_copy: true,
            known_down: vec![NodeId(2)],
            reason: RewindReason::SlowShippers
        }
    );
    let reopened: Vec<(NodeId, bool, Vec<NodeId>)> = acts
        .iter()
        .filter_map(|a| match a {
            Action::OpenStream { stream, filter, .. } => {
                Some((stream.node, filter.single_copy, filter.known_down.clone()))
            }
            _ => None,
        })
        .collect();
    // Its stream stays open (it still counts), but others ship for it.
    assert_eq!(
        reopened,
        (0..3)
            .map(|n| (NodeId(n), true, vec![NodeId(2)]))
            .collect::<Vec<_>>()
    );
    assert!(h.rs.single_copy_now());
    h.records(1, vec![rec(lsn(1, 2))]);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2), lsn(1, 3)]);
    assert_eq!(h.rs.stats().rewinds, 1);

    // A record nobody ships even then: the all-send-all check still comes before any gap.
    h.take_actions();
    h.records(0, vec![rec(lsn(1, 5))]);
    h.no_records(1, lsn(1, 3), lsn(1, 5));
    h.tick(1);
    h.tick(100);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2), lsn(1, 3)]);
    assert!(h.take_actions().iter().any(|a| matches!(
        a,
        Action::Rewind {
            reason: RewindReason::SuspectedGap,
            single_copy: false,
            ..
        }
    )));
    // A node coming back up is shipped for again.
    h.rs.on_node_down(NodeId(2));
    h.rs.on_node_up(NodeId(2));
    h.pump();
    assert!(h.take_actions().iter().all(|a| match a {
        Action::OpenStream { filter, .. } => filter.known_down.is_empty(),
        _ => true,
    }));
}

#[test]
fn single_copy_reports_data_loss_only_after_the_all_send_all_rewind_confirms_it() {
    let mut h = Harness::new(scd_config(), &three_nodes());
    h.records(0, vec![rec(lsn(1, 2))]);
    h.no_records(1, lsn(1, 1), lsn(1, 2));
    h.no_records(2, lsn(1, 1), lsn(1, 2));
    assert!(h.out.is_empty());
    assert!(!h.rs.single_copy_now());
    // The rewound streams say the same: now it is believed.
    h.records(0, vec![rec(lsn(1, 2))]);
    h.no_records(1, lsn(1, 1), lsn(1, 2));
    h.no_records(2, lsn(1, 1), lsn(1, 2));
    assert_eq!(
        h.out,
        vec![
            gap(GapKind::DataLoss, lsn(1, 1), lsn(1, 1)),
            Delivery::Record(rec(lsn(1, 2)))
        ]
    );
    assert_eq!(h.rs.stats().rewinds, 1);
}

#[test]
fn single_copy_resumes_at_the_next_window_slide_after_the_suspected_gap() {
    let mut cfg = scd_config();
    cfg.window = 4;
    let mut h = Harness::new(cfg, &three_nodes());
    h.records(0, vec![rec(lsn(1, 2))]);
    h.no_records(1, lsn(1, 1), lsn(1, 2));
    h.no_records(2, lsn(1, 1), lsn(1, 2));
    assert!(!h.rs.single_copy_now());
    h.records(1, vec![rec(lsn(1, 1)), rec(lsn(1, 2))]);
    assert_eq!(h.lsns(), vec![lsn(1, 1), lsn(1, 2)]);
    assert!(h.rs.single_copy_now());
    assert!(h.actions.iter().any(|a| matches!(
        a,
        Action::Rewind {
            reason: RewindReason::BackToSingleCopy,
            single_copy: true,
            ..
        }
    )));
}

#[test]
fn single_copy_fails_over_when_every_live_node_moved_past_even_without_proof() {
    // n = 4, R = 2: an f-majority is 3 nodes, and two are down, so nothing can be proved.
    let meta = metadata(&[(1, &[0, 1, 2, 3], 2)], 1);
    let mut h = Harness::new(scd_config(), &meta);
    h.rs.on_node_down(NodeId(2));
    h.rs.on_node_down(NodeId(3));
    h.pump();
    h.take_actions();
    // The shipper's copy is bad; the other holder skips the record as a non-shipper.
    let mut bad = rec(lsn(1, 1));
    bad.payload[0] ^= 1;
    h.records(0, vec![bad]);
    assert!(h.take_actions().is_empty());
    h.no_records(1, lsn(1, 1), lsn(1, 1));
    let acts = h.take_actions();
    assert!(matches!(
        acts[0],
        Action::Rewind {
            reason: RewindReason::SuspectedGap,
            single_copy: false,
            ..
        }
    ));
    assert!(h.rs.stalled().is_some(), "still undecidable, and says so");
    h.records(1, vec![rec(lsn(1, 1))]);
    assert_eq!(h.out, vec![Delivery::Record(rec(lsn(1, 1)))]);
}

#[test]
fn single_copy_rewinds_when_the_down_list_changes() {
    let mut h = Harness::new(scd_config(), &three_nodes());
    h.take_actions();
    h.rs.on_node_down(NodeId(2));
    h.pump();
    let acts = h.take_actions();
    assert_eq!(
        acts[0],
        Action::Rewind {
            from: lsn(1, 1),
            single_copy: true,
            known_down: vec![NodeId(2)],
            reason: RewindReason::DownNodesChanged
        }
    );
    let opened: Vec<(NodeId, Vec<NodeId>)> = acts
        .iter()
        .filter_map(|a| match a {
            Action::OpenStream { stream, filter, .. } => {
                Some((stream.node, filter.known_down.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        opened,
        vec![(NodeId(0), vec![NodeId(2)]), (NodeId(1), vec![NodeId(2)])]
    );
    h.rs.on_node_up(NodeId(2));
    h.pump();
    assert!(matches!(
        h.take_actions()[0],
        Action::Rewind { reason: RewindReason::DownNodesChanged, ref known_down, .. } if known_down.is_empty()
    ));
}

#[test]
fn bad_configs_are_refused() {
    let meta = three_nodes();
    assert!(matches!(
        ReadStream::new(config(lsn(1, 5), lsn(1, 4)), &meta),
        Err(ReadStreamError::EmptyRange { .. })
    ));
    let mut cfg = config(lsn(1, 1), Lsn::MAX);
    cfg.window = 0;
    assert_eq!(
        ReadStream::new(cfg, &meta).unwrap_err(),
        ReadStreamError::ZeroWindow
    );
    let mut cfg = config(lsn(1, 1), Lsn::MAX);
    cfg.window_bytes = 0;
    assert_eq!(
        ReadStream::new(cfg, &meta).unwrap_err(),
        ReadStreamError::ZeroWindowBytes
    );
}

/// The window is bounded in bytes as well as LSNs: before the first record a record is
/// assumed as large as the default payload limit, so the first window is small; once records
/// arrive it is sized by their weight, up to `window` LSNs for small records, and stays small
/// for large ones.
#[test]
fn the_window_is_bounded_in_bytes_by_the_records_weight() {
    let meta = three_nodes();
    let mut cfg = config(lsn(1, 1), Lsn::MAX);
    cfg.window = 1000;
    cfg.window_bytes = 4 * 1024 * 1024;
    let mut h = Harness::new(cfg.clone(), &meta);
    // 4 MiB over an assumed 1 MiB per record: a window of 4 LSNs.
    assert_eq!(h.rs.window_until(), lsn(1, 4));
    // Small records: the window grows to its LSN bound at the next slide.
    for n in 0..3 {
        h.records(n, vec![rec(lsn(1, 1)), rec(lsn(1, 2))]);
    }
    h.take_actions();
    assert!(h.lsns().len() >= 2);
    assert_eq!(h.rs.window_until(), lsn(1, 1002));
    // Large records: 4 MiB spans a few of them, so the window stays at a few LSNs.
    let mut h = Harness::new(cfg, &meta);
    let big = |at: Lsn| record_with(at, RecordFlags::NONE, vec![7; 1024 * 1024]);
    for n in 0..3 {
        h.records(n, vec![big(lsn(1, 1)), big(lsn(1, 2))]);
    }
    h.take_actions();
    assert_eq!(h.lsns().len(), 2);
    assert!(
        h.rs.window_until() <= lsn(1, 6),
        "window {} with 1 MiB records and 4 MiB of window",
        h.rs.window_until()
    );
}

/// A filtered read (`tally grep`): nodes skip what does not match, so ranges every node
/// passed without a record are `Filtered`, never `DataLoss`; the read runs all-send-all
/// (no rewinds, every stream carries the filter), and hole plugs are still holes.
#[test]
fn filtered_reads_type_skipped_ranges_as_filtered_and_run_all_send_all() {
    let mut config = config(lsn(1, 1), lsn(1, 8));
    config.single_copy = true;
    config.record_filter = crate::reader::RecordFilter {
        min_timestamp_ms: 0,
        max_timestamp_ms: 99,
        payload_regex: "r".into(),
    };
    let mut h = Harness::new(config, &three_nodes());
    let filters: Vec<_> = h
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::OpenStream { filter, .. } => Some(filter),
            _ => None,
        })
        .collect();
    assert_eq!(filters.len(), 3);
    for f in &filters {
        assert!(!f.single_copy, "filtered reads are all-send-all");
        assert_eq!(
            (
                f.min_timestamp_ms,
                f.max_timestamp_ms,
                f.payload_regex.as_str()
            ),
            (0, 99, "r")
        );
    }
    // LSN 3 matches (two copies); 1, 2 and 4 did not; 5 is a hole plug; 6..8 did not.
    h.records(0, vec![rec(lsn(1, 3)), plug(lsn(1, 5))]);
    h.records(1, vec![rec(lsn(1, 3))]);
    h.no_records(1, lsn(1, 4), lsn(1, 8));
    h.records(2, vec![plug(lsn(1, 5))]);
    h.no_records(2, lsn(1, 6), lsn(1, 8));
    h.no_records(0, lsn(1, 6), lsn(1, 8));
    assert_eq!(
        h.out,
        vec![
            gap(GapKind::Filtered, lsn(1, 1), lsn(1, 2)),
            Delivery::Record(rec(lsn(1, 3))),
            gap(GapKind::Filtered, lsn(1, 4), lsn(1, 4)),
            gap(GapKind::Hole, lsn(1, 5), lsn(1, 5)),
            gap(GapKind::Filtered, lsn(1, 6), lsn(1, 8)),
        ]
    );
    assert_eq!(h.rs.stats().rewinds, 0);
    assert!(h.rs.is_done());
}

/// A filtered read proves a gap at every run of non-matching records: with a node known
/// down it does not wait out the grace period at each (the other two are an f-majority and
/// every live node answered), while an unfiltered read still does.
#[test]
fn filtered_reads_do_not_wait_for_down_nodes_at_every_gap() {
    let mut config = config(lsn(1, 1), lsn(1, 4));
    config.record_filter.payload_regex = "r".into();
    let mut h = Harness::new(config, &three_nodes());
    h.rs.on_node_down(NodeId(2));
    h.pump();
    h.records(0, vec![rec(lsn(1, 2))]);
    h.no_records(0, lsn(1, 3), lsn(1, 4));
    h.no_records(1, lsn(1, 1), lsn(1, 4));
    assert_eq!(
        h.out,
        vec![
            gap(GapKind::Filtered, lsn(1, 1), lsn(1, 1)),
            Delivery::Record(rec(lsn(1, 2))),
            gap(GapKind::Filtered, lsn(1, 3), lsn(1, 4)),
        ],
        "no tick needed"
    );

    let mut h = Harness::new(config_unfiltered(), &three_nodes());
    h.rs.on_node_down(NodeId(2));
    h.pump();
    h.records(0, vec![rec(lsn(1, 2))]);
    h.no_records(1, lsn(1, 1), lsn(1, 4));
    assert!(
        h.out.is_empty(),
        "an unfiltered read waits for the grace period"
    );
    h.tick(1);
    h.tick(ReadStreamConfig::DEFAULT_GRACE.as_millis() as u64 + 1);
    assert_eq!(h.out[0], gap(GapKind::DataLoss, lsn(1, 1), lsn(1, 1)));
}

fn config_unfiltered() -> ReadStreamConfig {
    config(lsn(1, 1), lsn(1, 4))
}
