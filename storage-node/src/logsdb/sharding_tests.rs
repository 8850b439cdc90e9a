//! Tests of the sharded writers: many tasks writing to logs of every writer at once, stores
//! spanning writers, partition rolls, trims and retention in between, and a reopen with a
//! different number of writers; every acknowledged record must be readable (with its
//! copyset-index entry and a directory entry covering it) unless trimmed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader, payload_crc32,
};

use super::{
    Clock, LogRecord, LogsDb, LogsDbConfig, LogsDbError, ManualClock, NodeIdentity, ReadItem,
};

const T0: u64 = 1_700_000_000_000;
const TASKS: u64 = 12;
const ROUNDS: u32 = 60;

fn lsn(epoch: u32, esn: u32) -> Lsn {
    Lsn::new(Epoch(epoch), Esn(esn))
}

fn payload_for(log: LogId, lsn: Lsn) -> Vec<u8> {
    let seed = log.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lsn.0;
    (0..200 + (lsn.0 % 300) as usize)
        .map(|i| (seed.wrapping_add(i as u64).wrapping_mul(31) >> 3) as u8)
        .collect()
}

fn record(log: LogId, lsn: Lsn) -> LogRecord {
    let payload = payload_for(log, lsn);
    LogRecord {
        header: RecordHeader {
            log,
            lsn,
            timestamp_ms: T0 + u64::from(lsn.esn().0),
            lng: Esn(0),
            wave_or_seal: 1,
            flags: RecordFlags::NONE,
            copyset: Copyset::new(vec![NodeId(1), NodeId(2)]).unwrap(),
            payload_crc32: payload_crc32(&payload),
        },
        payload,
    }
}

fn open(dir: &std::path::Path, writers: usize, clock: Arc<ManualClock>) -> LogsDb {
    let config = LogsDbConfig {
        writer_threads: writers,
        partition_size_bytes: 48 << 10,
        ..LogsDbConfig::small_for_tests()
    };
    let clock: Arc<dyn Clock> = clock;
    LogsDb::open(
        dir,
        &NodeIdentity::new("test-cluster", NodeId(1)),
        config,
        clock,
    )
    .expect("open LogsDB")
}

/// Every acknowledged record above its log's trim point is read back, with its payload, its
/// copyset-index entry and in a partition the directory lists; nothing else is read.
fn check(db: &LogsDb, acked: &BTreeMap<LogId, BTreeSet<Lsn>>) {
    for (&log, lsns) in acked {
        let trim = db.log_meta(log).trim_point;
        let expect: Vec<Lsn> = lsns.iter().copied().filter(|l| *l > trim).collect();
        let mut got = Vec::new();
        for item in db.read(log, Lsn::OLDEST, Lsn::MAX) {
            match item.expect("read") {
                ReadItem::Record(r) => {
                    assert_eq!(r.payload, payload_for(log, r.header.lsn), "{log:?}");
                    got.push(r.header.lsn);
                }
                ReadItem::Trimmed { up_to } => assert_eq!(up_to, trim),
                ReadItem::Corrupt { lsn, kind } => panic!("{log:?} {lsn}: {kind}"),
            }
        }
        assert_eq!(got, expect, "records of {log:?} (trim point {trim})");
        let index: Vec<Lsn> = db
            .copysets(log, Lsn::OLDEST, Lsn::MAX)
            .map(|e| e.expect("copyset index").lsn)
            .collect();
        assert_eq!(index, expect, "copyset index of {log:?}");
        let dir = db.directory(log);
        for l in &expect {
            assert!(
                dir.iter()
                    .any(|(_, e)| e.first_lsn <= *l && *l <= e.last_lsn),
                "{log:?} {l}: no directory entry covers it ({dir:?})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_writers_rolls_retention_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0 + 10_000));
    let db = Arc::new(open(dir.path(), 3, clock.clone()));
    let acked: Arc<Mutex<BTreeMap<LogId, BTreeSet<Lsn>>>> = Default::default();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (db, acked) = (db.clone(), acked.clone());
        // Two consecutive logs per task: they belong to different writers (`log % 3`).
        let logs = [LogId(2 * task + 1), LogId(2 * task + 2)];
        tasks.push(tokio::spawn(async move {
            let mut next = [1u32, 1u32];
            for round in 0..ROUNDS {
                let durability = if round % 3 == 0 {
                    Durability::Durable
                } else {
                    Durability::Fast
                };
                let mut records = Vec::new();
                match round % 4 {
                    // A store spanning two writers.
                    3 => {
                        for (i, log) in logs.iter().enumerate() {
                            records.push(record(*log, lsn(1, next[i])));
                            next[i] += 1;
                        }
                    }
                    r => {
                        let i = (r as usize + task as usize) % 2;
                        for _ in 0..=r {
                            records.push(record(logs[i], lsn(1, next[i])));
                            next[i] += 1;
                        }
                    }
                }
                let written: Vec<(LogId, Lsn)> = records
                    .iter()
                    .map(|r| (r.header.log, r.header.lsn))
                    .collect();
                db.store(records, durability).await.expect("store");
                {
                    let mut acked = acked.lock().unwrap();
                    for (log, lsn) in written {
                        acked.entry(log).or_default().insert(lsn);
                    }
                }
                if round % 10 == 9 {
                    db.set_last_released(logs[0], lsn(1, next[0] - 1))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    // Partition maintenance while the tasks write: rolls, trims, retention.
    let maintenance = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 0..8u32 {
                let roll_db = db.clone();
                tokio::task::spawn_blocking(move || roll_db.roll_partition_blocking())
                    .await
                    .unwrap()
                    .expect("roll");
                db.trim(LogId(5), lsn(1, 4 * i)).await.expect("trim");
                // Log 7's records older than T0 + 3 * i expire.
                let backlogs: BTreeMap<LogId, u64> = [(LogId(7), 10_000 - 3 * u64::from(i))].into();
                db.enforce_retention(backlogs).await.expect("retention");
                tokio::task::yield_now().await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    maintenance.await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert_eq!(acked.len() as u64, 2 * TASKS);
    assert!(db.log_meta(LogId(5)).trim_point >= lsn(1, 28));
    assert!(db.partitions().len() > 8, "{:?}", db.partitions());
    check(&db, &acked);
    // Every store went through a group commit of some writer (records below log 5's trim
    // point, which the maintenance task may move past the writes, are not counted).
    let stats = db.write_stats();
    assert!(stats.groups > 0 && stats.requests >= TASKS * u64::from(ROUNDS));
    let released = db.log_meta(LogId(1)).last_released;
    let db = Arc::into_inner(db).expect("every task is done");
    // The rest blocks (closing, blocking stores): off the runtime's threads.
    tokio::task::spawn_blocking(move || reopen_and_check(db, dir, clock, acked, released))
        .await
        .unwrap();
}

fn reopen_and_check(
    db: LogsDb,
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    acked: BTreeMap<LogId, BTreeSet<Lsn>>,
    released: Lsn,
) {
    db.close().unwrap();

    // Reopened with another number of writers: the logs are split differently.
    let db = open(dir.path(), 2, clock.clone());
    assert!(!db.open_report().unclean_shutdown);
    check(&db, &acked);
    assert_eq!(db.log_meta(LogId(1)).last_released, released);
    // Writing on after the reopen, across writers, then once more with one writer.
    for log in acked.keys() {
        let last = acked[log].last().unwrap().esn().0;
        db.store_blocking(vec![record(*log, lsn(1, last + 1))], Durability::Durable)
            .unwrap();
    }
    db.close().unwrap();
    let db = open(dir.path(), 1, clock);
    let mut more = acked.clone();
    for lsns in more.values_mut() {
        let last = lsns.last().unwrap().esn().0;
        lsns.insert(lsn(1, last + 1));
    }
    check(&db, &more);
    db.close().unwrap();
}

#[test]
fn a_store_across_writers_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let db = open(dir.path(), 2, clock);
    let (a, b) = (LogId(1), LogId(2));
    db.seal_blocking(a, Epoch(3)).unwrap();
    // Log 1 is sealed at 3: a store with one of its records in epoch 3 stores nothing.
    let err = db
        .store_blocking(
            vec![record(b, lsn(3, 1)), record(a, lsn(3, 1))],
            Durability::Fast,
        )
        .unwrap_err();
    assert!(matches!(err, LogsDbError::Preempted { log, seal } if log == a && seal == Epoch(3)));
    assert!(db.read(b, Lsn::OLDEST, Lsn::MAX).next().is_none());
    // Above the seal both go in.
    db.store_blocking(
        vec![record(b, lsn(4, 1)), record(a, lsn(4, 1))],
        Durability::Fast,
    )
    .unwrap();
    let mut acked = BTreeMap::new();
    acked.insert(a, BTreeSet::from([lsn(4, 1)]));
    acked.insert(b, BTreeSet::from([lsn(4, 1)]));
    check(&db, &acked);
    db.close().unwrap();
}
