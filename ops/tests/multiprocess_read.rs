//! The multi-process acceptance test of the read path (issue 6): etcd, 5 storage-only nodes
//! and 2 sequencer-only nodes, each its own `tally server` process; readers use the client
//! library in this process.
//!
//! 10 logs × 100,000 records (R = 3) are appended, then read back from the oldest LSN to the
//! last acknowledged one by 4 concurrent readers (each its own client, reading every log) three
//! times: with every node up, with one storage node SIGKILLed, and with R − 1 = 2 killed. Each
//! reader must deliver exactly the acknowledged records, in LSN order, with their payloads,
//! every LSN covered once (records or gaps), and no `DataLoss`. Then the two nodes come back
//! and a backfill reader started at the oldest LSN while a writer appends reaches the tail and
//! follows it to the writer's last record.
//!
//! With single-copy delivery (the default) the nodes must ship at most 1.2 payload bytes per
//! payload byte delivered; one all-send-all pass shows the ≈ R it costs without. Each phase
//! prints its throughput and that ratio. Last, on the same cluster: a trim of log 2 reads back
//! as `Trim` gaps through the trim point followed by exactly the records after it, and one
//! record of log 3 whose every copy was removed (nodes stopped, their LogsDBs opened directly)
//! reads back as exactly one `DataLoss` at its LSN. Waits are for conditions (ready lines,
//! deliveries); the reads themselves are bounded by their `until`.

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use support::{Cluster, T, serial};
use tally_client::{
    Client, ClientConfig, Delivery, GapKind, ReadFrom, ReadOptions, ReadUntil, ReaderStats,
};
use tally_common::{LogId, Lsn};

const LOGS: u64 = 10;
const RECORDS_PER_LOG: u32 = 100_000;
const BATCH: u32 = 100;
const READERS: usize = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn payload(log: LogId, seq: u32) -> Vec<u8> {
    format!("log {:02} seq {seq:07}", log.0).into_bytes()
}

/// What was acknowledged, per log, in LSN order.
type Acked = BTreeMap<LogId, Vec<(Lsn, Vec<u8>)>>;

/// Appends `records` records to `log` from `first_seq` in batches, one call at a time.
async fn append_log(
    client: &Client,
    log: LogId,
    first_seq: u32,
    records: u32,
) -> Vec<(Lsn, Vec<u8>)> {
    let mut acked = Vec::with_capacity(records as usize);
    let mut seq = first_seq;
    while seq < first_seq + records {
        let n = BATCH.min(first_seq + records - seq);
        let payloads: Vec<Vec<u8>> = (seq..seq + n).map(|s| payload(log, s)).collect();
        let lsns = client
            .append_batch(log, payloads.clone())
            .await
            .unwrap_or_else(|e| panic!("{log}: append_batch at seq {seq}: {e}"));
        let (first, last) = (*lsns.start(), *lsns.end());
        assert_eq!(last.0 - first.0 + 1, u64::from(n), "one LSN per record");
        for (i, p) in payloads.into_iter().enumerate() {
            acked.push((Lsn(first.0 + i as u64), p));
        }
        seq += n;
    }
    acked
}

/// Reads `log` from the oldest LSN through `until` and checks the deliveries against `acked`.
async fn read_and_check(
    client: &Client,
    log: LogId,
    until: Lsn,
    acked: &[(Lsn, Vec<u8>)],
    single_copy: bool,
) -> ReaderStats {
    let options = ReadOptions {
        single_copy,
        ..ReadOptions::range(ReadFrom::Oldest, ReadUntil::Lsn(until))
    };
    let mut reader = client.read(log, options).await.expect("start a reader");
    let mut next = reader.from_lsn();
    let mut expected = acked.iter();
    while let Some(item) = tokio::time::timeout(T, reader.next())
        .await
        .unwrap_or_else(|_| panic!("{log}: no delivery within {T:?} after {next}"))
    {
        let delivery = item.unwrap_or_else(|e| panic!("{log}: read failed at {next}: {e}"));
        assert_eq!(
            delivery.from(),
            next,
            "{log}: deliveries must be contiguous"
        );
        match &delivery {
            Delivery::Record(r) => {
                let (lsn, payload) = expected.next().unwrap_or_else(|| {
                    panic!("{log}: record at {} beyond the acked ones", r.header.lsn)
                });
                assert_eq!(r.header.lsn, *lsn, "{log}: a record missing or extra");
                assert_eq!(&r.payload, payload, "{log}: payload at {lsn}");
            }
            Delivery::Gap { kind, from, to } => {
                assert_ne!(*kind, GapKind::DataLoss, "{log}: DataLoss {from}..={to}");
                if let Some((lsn, _)) = expected.as_slice().first() {
                    assert!(
                        *lsn > *to,
                        "{log}: a {kind:?} gap {from}..={to} over acked {lsn}"
                    );
                }
            }
        }
        next = Lsn(delivery.to().0 + 1);
    }
    assert!(
        next > until,
        "{log}: the reader ended at {next} before {until}"
    );
    assert!(
        expected.next().is_none(),
        "{log}: acknowledged records not delivered"
    );
    reader.stats()
}

/// Every delivery of `log` from the oldest LSN through `until`.
async fn read_range(client: &Client, log: LogId, until: Lsn) -> Vec<Delivery> {
    let options = ReadOptions::range(ReadFrom::Oldest, ReadUntil::Lsn(until));
    let mut reader = client.read(log, options).await.expect("start a reader");
    let mut deliveries = Vec::new();
    while let Some(item) = tokio::time::timeout(T, reader.next())
        .await
        .unwrap_or_else(|_| panic!("{log}: no delivery within {T:?}"))
    {
        deliveries.push(item.unwrap_or_else(|e| panic!("{log}: read failed: {e}")));
    }
    deliveries
}

fn record_lsns(deliveries: &[Delivery]) -> Vec<Lsn> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Record(r) => Some(r.header.lsn),
            _ => None,
        })
        .collect()
}

/// `readers` concurrent readers, each its own client reading every log; returns the payload
/// bytes shipped by nodes per payload byte delivered.
async fn read_phase(
    name: &str,
    config: &ClientConfig,
    acked: &Acked,
    readers: usize,
    single_copy: bool,
) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (config, acked) = (config.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(config).await.expect("connect a reader");
            let (mut shipped, mut delivered) = (0, 0);
            for (log, records) in &acked {
                let until = records.last().expect("records").0;
                let stats = read_and_check(&client, *log, until, records, single_copy).await;
                shipped += stats.payload_bytes_received;
                delivered += stats.payload_bytes_delivered;
            }
            client.close().await;
            (shipped, delivered)
        }));
    }
    let (mut shipped, mut delivered) = (0u64, 0u64);
    for t in tasks {
        let (s, d) = t.await.expect("reader task");
        shipped += s;
        delivered += d;
    }
    let records: usize = acked.values().map(Vec::len).sum::<usize>() * readers;
    let secs = started.elapsed().as_secs_f64();
    let ratio = shipped as f64 / delivered.max(1) as f64;
    eprintln!(
        "{name}: {readers} readers (single copy {single_copy}) delivered {records} records \
         ({:.1} MB) in {secs:.1} s: {:.0} records/s; {ratio:.3} bytes shipped per payload \
         byte delivered",
        delivered as f64 / 1e6,
        records as f64 / secs
    );
    ratio
}

#[test]
fn ten_logs_read_back_by_four_readers_with_nodes_down_then_a_backfill_follows() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = Cluster::start("read", 5, 2).await;
        let logs: Vec<LogId> = (1..=LOGS).map(LogId).collect();
        for log in &logs {
            cluster.create_log(log.0, 3);
        }
        let config = cluster.client_config();
        let writer = Client::connect(config.clone()).await.expect("connect");

        let started = Instant::now();
        let mut tasks = Vec::new();
        for log in logs.clone() {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                (log, append_log(&writer, log, 0, RECORDS_PER_LOG).await)
            }));
        }
        let mut acked = Acked::new();
        for t in tasks {
            let (log, records) = t.await.expect("writer task");
            acked.insert(log, records);
        }
        eprintln!(
            "load: {} records in {:.1} s",
            LOGS * u64::from(RECORDS_PER_LOG),
            started.elapsed().as_secs_f64()
        );

        let single = read_phase("all nodes up", &config, &acked, READERS, true).await;
        assert!(single <= 1.2, "single-copy delivery shipped {single:.3}× the payload");
        let all = read_phase("all nodes up, all send all", &config, &acked, 1, false).await;
        assert!(all > 2.0, "without single-copy delivery every copy ships: {all:.3}×");
        cluster.take_storage(1).kill();
        read_phase("one storage node down", &config, &acked, READERS, true).await;
        cluster.take_storage(2).kill();
        read_phase("R - 1 = 2 storage nodes down", &config, &acked, READERS, true).await;
        cluster.start_storage(1);
        cluster.start_storage(2);

        // Backfill: a reader from the oldest LSN, following, while the writer appends more.
        let log = LogId(1);
        let options = ReadOptions::range(ReadFrom::Oldest, ReadUntil::Forever);
        let mut reader = writer.read(log, options).await.expect("start the backfill reader");
        let more = {
            let writer = writer.clone();
            tokio::spawn(async move { append_log(&writer, log, RECORDS_PER_LOG, 20_000).await })
        };
        let mut expected: Vec<(Lsn, Vec<u8>)> = acked[&log].clone();
        let mut got: Vec<(Lsn, Vec<u8>)> = Vec::with_capacity(expected.len() + 20_000);
        let mut next = reader.from_lsn();
        let mut more = Some(more);
        loop {
            if more.is_none() && got.len() >= expected.len() {
                break;
            }
            tokio::select! {
                records = async { more.as_mut().unwrap().await }, if more.is_some() => {
                    expected.extend(records.expect("writer task"));
                    more = None;
                }
                item = tokio::time::timeout(T, reader.next()) => {
                    let item = item
                        .unwrap_or_else(|_| panic!("backfill: no delivery within {T:?} after {next}"))
                        .expect("a following reader does not end")
                        .expect("backfill read");
                    assert_eq!(item.from(), next, "backfill: deliveries must be contiguous");
                    next = Lsn(item.to().0 + 1);
                    if let Delivery::Record(r) = item {
                        got.push((r.header.lsn, r.payload));
                    }
                }
            }
        }
        assert!(got == expected, "backfill: the records read differ from those acknowledged");
        let delivered = got.len();
        eprintln!("backfill reached the tail and followed it: {delivered} records");
        drop(reader);

        // Trim: log 2 up to its 1,000th record. A reader from the oldest LSN gets one `Trim`
        // gap through the trim point, then exactly the records after it.
        let log = LogId(2);
        let records = &acked[&log];
        let (upto, until) = (records[999].0, records[1999].0);
        writer.trim(log, upto).await.expect("trim");
        let deliveries = read_range(&writer, log, until).await;
        // Everything before the first record is gaps: the bridge below epoch 1, then `Trim`
        // (in window-sized pieces) through the trim point at least.
        let first_record = deliveries
            .iter()
            .position(|d| matches!(d, Delivery::Record(_)))
            .expect("records after the trim point");
        let trimmed_to = deliveries[..first_record]
            .iter()
            .filter_map(|d| match d {
                Delivery::Gap { kind: GapKind::Trim, to, .. } => Some(*to),
                Delivery::Gap { kind: GapKind::Bridge, to, .. } if to.epoch().0 == 1 => None,
                other => panic!("before the first record of a trimmed log: {other:?}"),
            })
            .max();
        assert!(trimmed_to >= Some(upto), "trimmed through {trimmed_to:?}, not {upto}");
        let read: Vec<Lsn> = record_lsns(&deliveries);
        let expected: Vec<Lsn> = records[1000..2000].iter().map(|(l, _)| *l).collect();
        assert_eq!(read, expected, "the records after the trim point");
        eprintln!("trim: Trim gaps through {upto}, then the 1,000 records after it");

        // Data loss: every copy of one record of log 3 removed through the test hook (nodes
        // stopped, their LogsDBs opened directly). Exactly that LSN is reported as DataLoss.
        let log = LogId(3);
        let records = &acked[&log];
        let (lost, until) = (records[499].0, records[999].0);
        let ids: Vec<u32> = cluster.storage.keys().copied().collect();
        for id in &ids {
            let node = cluster.take_storage(*id);
            node.sigterm();
            node.wait_stopped();
        }
        // LogsDB's blocking calls must not run on a runtime worker as such.
        tokio::task::block_in_place(|| {
            for id in &ids {
                support::remove_copy(&cluster, *id, log, lost);
            }
        });
        for id in &ids {
            cluster.start_storage(*id);
        }
        let deliveries = read_range(&writer, log, until).await;
        let losses: Vec<(Lsn, Lsn)> = deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Gap { kind: GapKind::DataLoss, from, to } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert_eq!(losses, vec![(lost, lost)], "exactly the removed record is lost");
        let expected: Vec<Lsn> = records[..1000]
            .iter()
            .map(|(l, _)| *l)
            .filter(|l| *l != lost)
            .collect();
        assert_eq!(record_lsns(&deliveries), expected);
        eprintln!("data loss: exactly {lost} reported as DataLoss");
        writer.close().await;
        cluster.stop();
    });
}
