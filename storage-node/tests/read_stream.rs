//! Read streams over real QUIC with real RocksDB (DESIGN §7 read streams): only released
//! records are shipped, in LSN order; `NoRecords` gaps whenever the node proved it has nothing
//! more; `Trim` gaps below the trim point; the window is never overrun and `ReadWindow` widens
//! it; a following stream ships records as they are released; single-copy, time and payload
//! filters; corrupt and removed copies are left out; `StopRead`; the stream limit
//! (`Overloaded`) and typed errors that leave the server up; `Trim`, `FindTime`, `DataSize`.
//!
//! Every message is checked against the stream rules as it arrives ([`Seen::apply`]): LSNs
//! increase, each gap starts right after what was passed, and nothing goes beyond what the
//! node may ship at that moment (the window and the release point the test has set so far —
//! the node cannot know of a later one).

mod server_support;

use std::time::Duration;

use server_support::*;
use tally_common::transport::TransportError;
use tally_common::transport::{ClientProtocol, ClientStream, Connector, NodeProtocol};
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::node::{NodeRequest, NodeResponse, Release};
use tally_common::wire::{
    ErrorCode, FindTimeAccuracy, GapKind, ReadFilter, ReadRecord, StoreBatch, StoreStatus,
};
use tally_common::{LogId, Lsn, NodeId, RecordFlags, payload_crc32};
use tally_storage_node::logsdb::Db;
use tally_storage_node::server::single_copy_shipper;
use tokio::time::Instant;

const SEQ: NodeId = NodeId(9);
/// Timestamp of ESN 0 in [`batch`] (records carry `T0 + esn`).
const T0: u64 = 1_700_000_000_000;

async fn store(fx: &Fixture, client: &Connector<ClientProtocol>, batch: StoreBatch) {
    let resp = client
        .call(fx.addr, &ClientRequest::Store(batch), T)
        .await
        .unwrap();
    assert_eq!(resp, ClientResponse::StoreResult(StoreStatus::Stored));
}

async fn release(fx: &Fixture, peer: &Connector<NodeProtocol>, log: LogId, lsn: Lsn) {
    let req = NodeRequest::Release {
        sequencer: SEQ,
        releases: vec![Release {
            log,
            lsn,
            epoch: lsn.epoch(),
        }],
    };
    assert_eq!(
        peer.call(fx.addr, &req, T).await.unwrap(),
        NodeResponse::Ack
    );
}

fn all() -> ReadFilter {
    ReadFilter {
        max_timestamp_ms: u64::MAX,
        ..ReadFilter::default()
    }
}

async fn open(
    fx: &Fixture,
    client: &Connector<ClientProtocol>,
    log: LogId,
    (from, until, window_until): (Lsn, Lsn, Lsn),
    filter: ReadFilter,
) -> ClientStream<ClientProtocol> {
    let req = ClientRequest::StartRead {
        log,
        from,
        until,
        window_until,
        filter,
    };
    client.open(fx.addr, &req, T).await.unwrap()
}

/// The error a stream ends with.
async fn refused(mut stream: ClientStream<ClientProtocol>) -> ErrorCode {
    match tokio::time::timeout(T, stream.next()).await.unwrap() {
        Err(TransportError::Remote(e)) => {
            assert!(!e.message.is_empty());
            e.code
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What one stream delivered so far, checked message by message.
#[derive(Debug)]
struct Seen {
    log: LogId,
    records: Vec<ReadRecord>,
    gaps: Vec<(GapKind, Lsn, Lsn)>,
    passed: Lsn,
    done: bool,
}

impl Seen {
    fn new(log: LogId, from: Lsn) -> Seen {
        Seen {
            log,
            records: Vec::new(),
            gaps: Vec::new(),
            passed: from.prev(),
            done: false,
        }
    }

    fn lsns(&self) -> Vec<Lsn> {
        self.records.iter().map(|r| r.header.lsn).collect()
    }

    /// Takes one message; `bound` is the last LSN the node may ship at this point.
    fn apply(&mut self, msg: ClientResponse, bound: Lsn) {
        assert!(!self.done, "message after ReadDone: {msg:?}");
        match msg {
            ClientResponse::Records(records) => {
                assert!(!records.is_empty(), "empty Records message");
                for r in records {
                    let lsn = r.header.lsn;
                    assert!(
                        lsn > self.passed,
                        "{lsn} shipped after passing {}",
                        self.passed
                    );
                    assert!(lsn <= bound, "{lsn} shipped beyond {bound}");
                    assert_eq!(r.header.log, self.log);
                    assert_eq!(payload_crc32(&r.payload), r.header.payload_crc32);
                    self.passed = lsn;
                    self.records.push(r);
                }
            }
            ClientResponse::Gap { kind, from, to } => {
                assert_eq!(from, self.passed.next(), "gap {from}..={to} leaves a hole");
                assert!(
                    from <= to && to <= bound,
                    "gap {from}..={to} beyond {bound}"
                );
                self.passed = to;
                self.gaps.push((kind, from, to));
            }
            ClientResponse::ReadDone => self.done = true,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Reads pushes until the stream passed `lsn` or ended.
    async fn read_until(
        &mut self,
        stream: &mut ClientStream<ClientProtocol>,
        lsn: Lsn,
        bound: Lsn,
    ) {
        while self.passed < lsn && !self.done {
            let msg = tokio::time::timeout(T, stream.next())
                .await
                .expect("a push before the deadline")
                .expect("the stream works")
                .expect("the stream is open");
            self.apply(msg, bound);
        }
    }

    /// Reads the rest of a bounded stream: up to `ReadDone`, then the end of the stream.
    async fn read_to_end(&mut self, stream: &mut ClientStream<ClientProtocol>, bound: Lsn) {
        self.read_until(stream, Lsn::MAX, bound).await;
        assert!(self.done);
        let end = tokio::time::timeout(T, stream.next()).await.unwrap();
        assert!(
            matches!(end, Ok(None)),
            "the stream ends after ReadDone: {end:?}"
        );
    }
}

/// Waits until `done()` holds, checking every few ms, for at most [`T`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    let mut every = tokio::time::interval(Duration::from_millis(5));
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        every.tick().await;
    }
}

async fn streams_closed(fx: &Fixture, open: usize) {
    wait_for(&format!("{open} read streams open"), || {
        fx.node.open_read_streams() == open
    })
    .await;
}

fn range(esns: std::ops::RangeInclusive<u32>, epoch: u32) -> Vec<Lsn> {
    esns.map(|e| lsn(epoch, e)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_released_records_only_and_follows_new_releases() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(1);
    store(&fx, &client, batch(log, 1, 1..=10)).await;
    release(&fx, &peer, log, lsn(1, 5)).await;
    let mut stream = open(&fx, &client, log, (lsn(1, 1), Lsn::MAX, Lsn::MAX), all()).await;
    let mut seen = Seen::new(log, lsn(1, 1));
    // 6..=10 are held but not released: never shipped before the release moves.
    seen.read_until(&mut stream, lsn(1, 5), lsn(1, 5)).await;
    assert_eq!(seen.lsns(), range(1..=5, 1));
    for r in &seen.records {
        assert_eq!(r.payload, payload_for(log, r.header.lsn));
    }

    // Following: each release wakes the stream.
    release(&fx, &peer, log, lsn(1, 8)).await;
    seen.read_until(&mut stream, lsn(1, 8), lsn(1, 8)).await;
    store(&fx, &client, batch(log, 1, 11..=12)).await;
    release(&fx, &peer, log, lsn(1, 20)).await;
    seen.read_until(&mut stream, lsn(1, 20), lsn(1, 20)).await;
    assert_eq!(seen.lsns(), range(1..=12, 1));
    assert_eq!(
        seen.gaps,
        vec![(GapKind::NoRecords, lsn(1, 13), lsn(1, 20))]
    );
    // Into the next epoch.
    store(&fx, &client, batch(log, 2, 1..=3)).await;
    release(&fx, &peer, log, lsn(2, 2)).await;
    seen.read_until(&mut stream, lsn(2, 2), lsn(2, 2)).await;
    assert_eq!(&seen.lsns()[12..], &range(1..=2, 2)[..]);
    assert!(!seen.done, "a following stream does not end by itself");

    // StopRead ends it normally, and the node lets go of the stream and its watch.
    stream.control(&ClientRequest::StopRead).await.unwrap();
    let end = tokio::time::timeout(T, stream.next()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    streams_closed(&fx, 0).await;
    wait_for("the log's watch to go", || {
        fx.node.logsdb().watched_logs() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_nothing_proves_it_with_gaps_up_to_the_release_point() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(2);
    release(&fx, &peer, log, lsn(1, 7)).await;
    let (from, until) = (lsn(1, 1), lsn(1, 9));
    let mut stream = open(&fx, &client, log, (from, until, until), all()).await;
    let mut seen = Seen::new(log, from);
    seen.read_until(&mut stream, lsn(1, 7), lsn(1, 7)).await;
    assert_eq!(seen.gaps, vec![(GapKind::NoRecords, from, lsn(1, 7))]);
    assert!(!seen.done);
    // Reaching `until` is ReadDone (not another gap), then the end of the stream.
    release(&fx, &peer, log, lsn(1, 30)).await;
    seen.read_to_end(&mut stream, until).await;
    assert_eq!(seen.gaps.len(), 1);
    assert!(seen.records.is_empty());
    streams_closed(&fx, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_never_overrun_and_read_window_widens_it() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(3);
    store(&fx, &client, batch(log, 1, 1..=20)).await;
    release(&fx, &peer, log, lsn(1, 20)).await;
    let (from, until) = (lsn(1, 1), lsn(1, 20));
    let mut stream = open(&fx, &client, log, (from, until, lsn(1, 5)), all()).await;
    let mut seen = Seen::new(log, from);
    seen.read_until(&mut stream, lsn(1, 5), lsn(1, 5)).await;
    assert_eq!(seen.lsns(), range(1..=5, 1));
    // A narrower window is ignored (windows never shrink); a wider one moves the stream on.
    let window = |until| ClientRequest::ReadWindow { until };
    stream.control(&window(lsn(1, 3))).await.unwrap();
    stream.control(&window(lsn(1, 12))).await.unwrap();
    seen.read_until(&mut stream, lsn(1, 12), lsn(1, 12)).await;
    assert_eq!(seen.lsns(), range(1..=12, 1));
    stream.control(&window(lsn(1, 40))).await.unwrap();
    seen.read_to_end(&mut stream, until).await;
    assert_eq!(seen.lsns(), range(1..=20, 1));
    assert!(seen.gaps.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_ranges_are_trim_gaps_and_admin_lookups_work() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(4);
    store(&fx, &client, batch(log, 1, 1..=10)).await;
    let trim = ClientRequest::Trim {
        log,
        upto: lsn(1, 4),
    };
    assert_eq!(
        client.call(fx.addr, &trim, T).await.unwrap(),
        ClientResponse::Trimmed {
            trim_point: lsn(1, 4)
        }
    );
    // The trim gap does not wait for releases; records do.
    let (from, until) = (lsn(1, 1), lsn(1, 10));
    let mut stream = open(&fx, &client, log, (from, until, until), all()).await;
    let mut seen = Seen::new(log, from);
    seen.read_until(&mut stream, lsn(1, 4), lsn(1, 4)).await;
    assert_eq!(seen.gaps, vec![(GapKind::Trim, from, lsn(1, 4))]);
    release(&fx, &peer, log, lsn(1, 10)).await;
    seen.read_to_end(&mut stream, until).await;
    assert_eq!(seen.lsns(), range(5..=10, 1));

    // FindTime: the LSN after the last record older than the time (never below the trim).
    let find = |timestamp_ms| ClientRequest::FindTime {
        log,
        timestamp_ms,
        accuracy: FindTimeAccuracy::Strict,
    };
    assert_eq!(
        client.call(fx.addr, &find(T0 + 7), T).await.unwrap(),
        ClientResponse::FoundTime { lsn: lsn(1, 7) }
    );
    let resp = client.call(fx.addr, &find(T0), T).await.unwrap();
    assert_eq!(resp, ClientResponse::FoundTime { lsn: lsn(1, 5) });
    // A trim that overtakes a following stream is a trim gap too.
    let mut follow = open(&fx, &client, log, (lsn(1, 1), Lsn::MAX, Lsn::MAX), all()).await;
    let mut seen = Seen::new(log, lsn(1, 1));
    seen.read_until(&mut follow, lsn(1, 10), lsn(1, 10)).await;
    let trim = ClientRequest::Trim {
        log,
        upto: lsn(1, 15),
    };
    client.call(fx.addr, &trim, T).await.unwrap();
    seen.read_until(&mut follow, lsn(1, 15), lsn(1, 15)).await;
    assert_eq!(
        seen.gaps.last(),
        Some(&(GapKind::Trim, lsn(1, 11), lsn(1, 15)))
    );

    // DataSize: some bytes for a range with records, none for one without.
    let size = |from_ms, until_ms| ClientRequest::DataSize {
        log,
        from_ms,
        until_ms,
    };
    let resp = client.call(fx.addr, &size(T0, T0 + 100), T).await.unwrap();
    assert_eq!(resp, ClientResponse::DataSize { bytes: 0 }, "all trimmed");
    let mut newer = batch(log, 2, 1..=5);
    for r in &mut newer.records {
        r.timestamp_ms += 100;
    }
    store(&fx, &client, newer).await;
    let resp = client
        .call(fx.addr, &size(T0 + 102, T0 + 104), T)
        .await
        .unwrap();
    assert!(
        matches!(resp, ClientResponse::DataSize { bytes } if bytes > 0),
        "{resp:?}"
    );
    let resp = client
        .call(fx.addr, &size(T0 + 50, T0 + 60), T)
        .await
        .unwrap();
    assert_eq!(resp, ClientResponse::DataSize { bytes: 0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_copy_delivery_ships_exactly_the_records_this_node_is_first_for() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(5);
    let cs = [NodeId(1), NodeId(2), NodeId(3)];
    let mut b = batch(log, 1, 1..=60);
    b.copyset = copyset(&[1, 2, 3]);
    store(&fx, &client, b).await;
    release(&fx, &peer, log, lsn(1, 60)).await;
    let (from, until) = (lsn(1, 1), lsn(1, 60));
    let mut counts = Vec::new();
    for (seed, down) in [
        (11, vec![]),
        (11, vec![NodeId(2)]),
        (12, vec![NodeId(2), NodeId(3)]),
        (12, vec![ME]),
    ] {
        let filter = ReadFilter {
            single_copy: true,
            shuffle_seed: seed,
            known_down: down.clone(),
            ..all()
        };
        let mut stream = open(&fx, &client, log, (from, until, until), filter).await;
        let mut seen = Seen::new(log, from);
        seen.read_to_end(&mut stream, until).await;
        let expected: Vec<Lsn> = range(1..=60, 1)
            .into_iter()
            .filter(|l| single_copy_shipper(&cs, seed, *l, &down) == Some(ME))
            .collect();
        assert_eq!(seen.lsns(), expected, "seed {seed}, down {down:?}");
        counts.push(expected.len());
    }
    assert!(counts[0] > 0 && counts[0] < 60, "{counts:?}");
    assert!(counts[1] > counts[0], "node 2 down: node 1 ships more");
    assert_eq!(counts[2], 60, "the others down: node 1 ships all");
    assert_eq!(counts[3], 0, "a node the reader thinks down ships nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_payload_filters_skip_records_but_pass_them() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(6);
    let mut b = batch(log, 1, 1..=30);
    for r in &mut b.records {
        let esn = r.lsn.esn().0;
        let text = if esn % 3 == 0 { "error" } else { "ok" };
        r.payload = format!("request {esn}: {text}").into_bytes().into();
        r.payload_crc32 = payload_crc32(&r.payload);
    }
    store(&fx, &client, b).await;
    // Epoch 1's sequencer released all of it (a release by a later epoch would otherwise
    // make the node settle epoch 1 first, asking the epoch store what its recovery decided).
    release(&fx, &peer, log, lsn(1, 30)).await;
    // Recovery plugged e2n1 and bridged the rest of epoch 2: hole plugs and bridges are
    // records (flags in the header) and describe gaps, so the time and payload filters,
    // which they would fail, do not apply to them.
    for (esn, flag) in [(1, RecordFlags::HOLE), (2, RecordFlags::BRIDGE)] {
        let mut plug = batch(log, 2, esn..=esn);
        plug.flags = flag | RecordFlags::WRITTEN_BY_RECOVERY;
        plug.wave_or_seal = 3;
        plug.records[0].payload = Default::default();
        plug.records[0].payload_crc32 = payload_crc32(&[]);
        store(&fx, &client, plug).await;
    }
    release(&fx, &peer, log, lsn(2, 2)).await;
    let filter = ReadFilter {
        min_timestamp_ms: T0 + 5,
        max_timestamp_ms: T0 + 20,
        payload_regex: "^request [0-9]+: err".into(),
        ..ReadFilter::default()
    };
    let (from, until) = (lsn(1, 1), lsn(2, 2));
    let mut stream = open(&fx, &client, log, (from, until, until), filter).await;
    let mut seen = Seen::new(log, from);
    seen.read_to_end(&mut stream, until).await;
    let mut expected: Vec<Lsn> = (5..=20).filter(|e| e % 3 == 0).map(|e| lsn(1, e)).collect();
    expected.extend([lsn(2, 1), lsn(2, 2)]);
    assert_eq!(seen.lsns(), expected);
    let flags: Vec<RecordFlags> = seen.records[expected.len() - 2..]
        .iter()
        .map(|r| r.header.flags)
        .collect();
    assert!(flags[0].contains(RecordFlags::HOLE) && flags[1].contains(RecordFlags::BRIDGE));
    assert!(
        seen.gaps.is_empty(),
        "skipped records are passed by the next record"
    );

    // A pattern that does not compile is refused with the reason; the node stays up.
    let bad = ReadFilter {
        payload_regex: "(unclosed".into(),
        ..all()
    };
    let stream = open(&fx, &client, log, (from, until, until), bad).await;
    assert_eq!(refused(stream).await, ErrorCode::BadRequest);
    let mut stream = open(&fx, &client, log, (from, until, until), all()).await;
    let mut seen = Seen::new(log, from);
    seen.read_to_end(&mut stream, until).await;
    let mut everything = range(1..=30, 1);
    everything.extend(range(1..=2, 2));
    assert_eq!(seen.lsns(), everything);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_removed_copies_are_left_out() {
    let fx = start(|_| {}).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(7);
    store(&fx, &client, batch(log, 1, 1..=6)).await;
    release(&fx, &peer, log, lsn(1, 6)).await;
    fx.node.logsdb().remove_copy(log, lsn(1, 2)).await.unwrap();
    let (dir, epoch_store) = fx.stop().await;

    // Flip a payload byte of e1n4 behind LogsDB's back.
    {
        let db_path = dir.path().join("data").join("db");
        let opts = rocksdb::Options::default();
        let cfs = Db::list_cf(&opts, &db_path).unwrap();
        let raw = Db::open_cf(&opts, &db_path, &cfs).unwrap();
        let mut key = vec![b'd'];
        key.extend_from_slice(&log.to_be_bytes());
        key.extend_from_slice(&lsn(1, 4).to_be_bytes());
        let mut flipped = 0;
        for name in cfs.iter().filter(|n| n.starts_with('p')) {
            let cf = raw.cf_handle(name).unwrap();
            if let Some(mut value) = raw.get_cf(&cf, &key).unwrap() {
                let at = value.len() - 10;
                value[at] ^= 0x01;
                raw.put_cf(&cf, &key, &value).unwrap();
                flipped += 1;
            }
        }
        assert_eq!(flipped, 1);
    }

    let fx = restart(dir, epoch_store, |_| {}).await;
    let client = fx.client();
    let (from, until) = (lsn(1, 1), lsn(1, 6));
    for single_copy in [false, true] {
        let filter = ReadFilter {
            single_copy,
            ..all()
        };
        let mut stream = open(&fx, &client, log, (from, until, until), filter).await;
        let mut seen = Seen::new(log, from);
        seen.read_to_end(&mut stream, until).await;
        let expected: Vec<Lsn> = [1, 3, 5, 6]
            .into_iter()
            .map(|e| lsn(1, e))
            .filter(|l| {
                !single_copy || single_copy_shipper(&[NodeId(1), NodeId(2)], 0, *l, &[]) == Some(ME)
            })
            .collect();
        assert_eq!(seen.lsns(), expected, "single copy: {single_copy}");
        for r in &seen.records {
            assert_eq!(r.payload, payload_for(log, r.header.lsn));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_and_typed_errors_leave_the_server_up() {
    let fx = start(|c| c.max_read_streams = 2).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(8);
    release(&fx, &peer, log, lsn(1, 3)).await;
    let follow = (lsn(1, 1), Lsn::MAX, Lsn::MAX);
    let mut a = open(&fx, &client, log, follow, all()).await;
    let mut b = open(&fx, &client, log, follow, all()).await;
    for s in [&mut a, &mut b] {
        Seen::new(log, lsn(1, 1))
            .read_until(s, lsn(1, 3), lsn(1, 3))
            .await;
    }
    let c = open(&fx, &client, log, follow, all()).await;
    assert_eq!(refused(c).await, ErrorCode::Overloaded);
    assert_eq!(fx.node.open_read_streams(), 2);

    a.control(&ClientRequest::StopRead).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(T, a.next()).await.unwrap(),
        Ok(None)
    ));
    streams_closed(&fx, 1).await;

    // A log nobody knows.
    let s = open(&fx, &client, LogId(999), follow, all()).await;
    assert_eq!(refused(s).await, ErrorCode::NotFound);
    // A range the decoder refuses.
    let s = open(&fx, &client, log, (lsn(1, 5), lsn(1, 1), lsn(1, 5)), all()).await;
    assert_eq!(refused(s).await, ErrorCode::BadRequest);
    // Only StartRead opens a stream.
    let s = client
        .open(fx.addr, &ClientRequest::GetClusterState, T)
        .await
        .unwrap();
    assert_eq!(refused(s).await, ErrorCode::BadRequest);
    // Control messages that do not belong on a read stream end it.
    b.control(&ClientRequest::GetClusterState).await.unwrap();
    assert_eq!(refused(b).await, ErrorCode::BadRequest);
    streams_closed(&fx, 0).await;

    // The server is up and serves streams again.
    let resp = client
        .call(fx.addr, &ClientRequest::GetClusterState, T)
        .await
        .unwrap();
    assert!(matches!(resp, ClientResponse::ClusterState { .. }));
    let (from, until) = (lsn(1, 1), lsn(1, 3));
    let mut s = open(&fx, &client, log, (from, until, until), all()).await;
    let mut seen = Seen::new(log, from);
    seen.read_to_end(&mut s, until).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_backlogs_come_in_bounded_messages() {
    // Payloads are 100..150 bytes, counted with 64 bytes of overhead each: a 1000-byte budget
    // makes messages of at most seven records.
    let fx = start(|c| c.read_batch_bytes = 1000).await;
    let (client, peer) = (fx.client(), fx.peer());
    let log = LogId(9);
    for first in (1..=400).step_by(100) {
        store(&fx, &client, batch(log, 1, first..=first + 99)).await;
    }
    release(&fx, &peer, log, lsn(1, 400)).await;
    let (from, until) = (lsn(1, 1), lsn(1, 400));
    let mut stream = open(&fx, &client, log, (from, until, until), all()).await;
    let mut seen = Seen::new(log, from);
    let mut messages = 0;
    while !seen.done {
        let msg = tokio::time::timeout(T, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let ClientResponse::Records(r) = &msg {
            assert!(r.len() <= 7, "{} records in one message", r.len());
            messages += 1;
        }
        seen.apply(msg, until);
    }
    assert!(messages >= 400 / 7);
    assert_eq!(seen.lsns(), range(1..=400, 1));
}
