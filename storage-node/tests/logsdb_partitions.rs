//! LogsDB partitions: rollover by size and by time, reads across partitions, retention
//! dropping the oldest partitions, trims, and `find_time` / `data_size` on partition
//! boundaries.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use support::*;
use tally_common::{Durability, LogId, Lsn};
use tally_storage_node::logsdb::{
    FindTimeAccuracy, LogsDbConfig, ManualClock, PartitionId, ReadItem,
};

#[test]
fn rollover_by_size_and_reads_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig {
        partition_size_bytes: 16 << 10,
        ..LogsDbConfig::small_for_tests()
    };
    let log = LogId(1);
    let db = open(dir.path(), config.clone(), clock.clone());
    for esn in 1..=200 {
        db.store_blocking(
            vec![plain(log, lsn(1, esn), T0 + esn as u64, 1024)],
            Durability::Fast,
        )
        .unwrap();
    }
    let parts = db.partitions();
    assert!(
        parts.len() >= 10,
        "16 KiB partitions for 200 KiB of records, got {}",
        parts.len()
    );
    for p in &parts[..parts.len() - 1] {
        assert!(
            p.bytes >= 16 << 10,
            "{:?} rolled before reaching the size limit",
            p
        );
    }
    let dirents = db.directory(log);
    for w in dirents.windows(2) {
        assert!(
            w[0].1.last_lsn < w[1].1.first_lsn,
            "partition ranges overlap: {w:?}"
        );
    }
    let expect: Vec<Lsn> = (1..=200).map(|e| lsn(1, e)).collect();
    assert_eq!(lsns(&db, log), expect);
    // A read from the middle only touches later partitions and still sees every record.
    let tail: Vec<Lsn> = db
        .read(log, lsn(1, 150), lsn(1, 170))
        .map(|r| match r.unwrap() {
            ReadItem::Record(rec) => {
                assert_eq!(rec.payload, payload_for(log, rec.header.lsn, 1024));
                rec.header.lsn
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(tail, expect[149..170].to_vec());
    let total = db.data_size(log, Lsn::OLDEST, Lsn::MAX);
    assert!(
        total >= 200 * 1024,
        "data_size {total} below the bytes written"
    );
    let half = db.data_size(log, Lsn::OLDEST, lsn(1, 100));
    assert!(
        half < total && half * 3 > total,
        "half the log estimated as {half} of {total}"
    );
    db.close().unwrap();

    let db = open(dir.path(), config, clock);
    assert_eq!(db.partitions().len(), parts.len());
    assert_eq!(db.directory(log), dirents);
    assert_eq!(lsns(&db, log), expect);
    assert!(!db.open_report().unclean_shutdown);
}

#[test]
fn rollover_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig {
        partition_duration_ms: 60_000,
        ..LogsDbConfig::small_for_tests()
    };
    let db = open(dir.path(), config, clock.clone());
    let log = LogId(7);
    for esn in 1..=5 {
        db.store_blocking(vec![plain(log, lsn(1, esn), T0, 100)], Durability::Durable)
            .unwrap();
    }
    clock.advance_ms(59_999);
    db.store_blocking(vec![plain(log, lsn(1, 6), T0, 100)], Durability::Durable)
        .unwrap();
    assert_eq!(db.partitions().len(), 1, "not old enough yet");
    clock.advance_ms(1);
    for esn in 7..=9 {
        db.store_blocking(
            vec![plain(log, lsn(1, esn), T0 + 60_000, 100)],
            Durability::Durable,
        )
        .unwrap();
    }
    let parts = db.partitions();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].created_ms, T0 + 60_000);
    let d = db.directory(log);
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].1.first_lsn, d[0].1.last_lsn), (lsn(1, 1), lsn(1, 6)));
    assert_eq!((d[1].1.first_lsn, d[1].1.last_lsn), (lsn(1, 7), lsn(1, 9)));
    // A late write below the newest partition's range lands in the partition that holds its
    // neighbours, not in the newest one.
    db.store_blocking(vec![plain(log, lsn(1, 3), T0, 100)], Durability::Durable)
        .unwrap();
    let ranges = |d: &[(PartitionId, tally_storage_node::logsdb::DirEntry)]| {
        d.iter()
            .map(|(p, e)| (*p, e.first_lsn, e.last_lsn))
            .collect::<Vec<_>>()
    };
    assert_eq!(ranges(&db.directory(log)), ranges(&d));
    assert_eq!(
        lsns(&db, log),
        (1..=9).map(|e| lsn(1, e)).collect::<Vec<_>>()
    );
}

#[test]
fn retention_drops_oldest_partitions_and_trims() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig {
        partition_duration_ms: 60_000,
        ..LogsDbConfig::small_for_tests()
    };
    let db = open(dir.path(), config.clone(), clock.clone());
    let (a, b) = (LogId(1), LogId(2));
    // Three partitions, one minute each; both logs write 10 records per minute.
    for minute in 0..3u32 {
        for i in 1..=10u32 {
            let esn = minute * 10 + i;
            let ts = clock_now(&clock);
            db.store_blocking(
                vec![
                    plain(a, lsn(1, esn), ts, 200),
                    plain(b, lsn(1, esn), ts, 200),
                ],
                Durability::Fast,
            )
            .unwrap();
        }
        clock.advance_ms(60_000);
    }
    assert_eq!(db.partitions().len(), 3);
    // Backlog 90 s at minute 3: the records of minute 0 and 1 of log a are older than that,
    // but log b keeps everything, so nothing can be dropped yet.
    let backlogs: BTreeMap<LogId, u64> = [(a, 90_000)].into();
    let report = db.enforce_retention_blocking(backlogs.clone()).unwrap();
    assert_eq!(report.trimmed, vec![(a, lsn(1, 20))]);
    assert!(report.dropped.is_empty());
    assert_eq!(db.log_meta(a).trim_point, lsn(1, 20));
    let items = read_all(&db, a);
    assert_eq!(items[0], ReadItem::Trimmed { up_to: lsn(1, 20) });
    assert_eq!(items.len(), 11);
    // Log b trimmed explicitly through minute 0: partition 1 is dead, partition 2 is not.
    let t = db.trim_blocking(b, lsn(1, 10)).unwrap();
    assert!(t.advanced);
    let stale = db.trim_blocking(b, lsn(1, 5)).unwrap();
    assert_eq!((stale.trim_point, stale.advanced), (lsn(1, 10), false));
    let report = db.enforce_retention_blocking(backlogs.clone()).unwrap();
    assert_eq!(report.dropped, vec![PartitionId(1)]);
    assert_eq!(
        db.partitions().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![PartitionId(2), PartitionId(3)]
    );
    assert_eq!(
        lsns(&db, b),
        (11..=30).map(|e| lsn(1, e)).collect::<Vec<_>>()
    );
    // Writes below the trim point are accepted and dropped. (This write also starts partition
    // 4: partition 3 is a minute old.)
    db.store_blocking(vec![plain(b, lsn(1, 3), T0, 10)], Durability::Durable)
        .unwrap();
    assert_eq!(lsns(&db, b).first(), Some(&lsn(1, 11)));
    assert_eq!(db.partitions().len(), 3);
    db.close().unwrap();

    let db = open(dir.path(), config, clock.clone());
    assert_eq!(db.partitions().len(), 3);
    assert_eq!(db.log_meta(a).trim_point, lsn(1, 20));
    assert_eq!(db.log_meta(b).trim_point, lsn(1, 10));
    // Much later, with backlogs for both logs, only the newest (empty) partition stays.
    clock.advance_ms(3_600_000);
    let report = db
        .enforce_retention_blocking([(a, 90_000), (b, 90_000)].into())
        .unwrap();
    assert_eq!(report.trimmed, vec![(a, lsn(1, 30)), (b, lsn(1, 30))]);
    assert_eq!(report.dropped, vec![PartitionId(2), PartitionId(3)]);
    assert_eq!(
        db.partitions().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![PartitionId(4)]
    );
    assert_eq!(lsns(&db, a), Vec::<Lsn>::new());
    assert_eq!(db.data_size(a, Lsn::OLDEST, Lsn::MAX), 0);
}

fn clock_now(clock: &ManualClock) -> u64 {
    use tally_storage_node::logsdb::Clock;
    clock.now_ms()
}

#[test]
fn find_time_is_exact_on_partition_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let db = open(dir.path(), LogsDbConfig::small_for_tests(), clock);
    let log = LogId(3);
    // 30 records 1 s apart, esn 1..=30 but with gaps (only odd ESNs), 10 per partition.
    let mut written = Vec::new();
    for i in 0..30u32 {
        if i > 0 && i % 10 == 0 {
            db.roll_partition_blocking().unwrap();
        }
        let l = lsn(2, 2 * i + 1);
        let ts = T0 + 1000 * (u64::from(i) + 1);
        db.store_blocking(vec![plain(log, l, ts, 64)], Durability::Fast)
            .unwrap();
        written.push((l, ts));
    }
    assert_eq!(db.directory(log).len(), 3);
    let truth = |t: u64| {
        written
            .iter()
            .filter(|(_, ts)| *ts < t)
            .map(|(l, _)| l.next())
            .max()
            .unwrap_or(Lsn::OLDEST)
    };
    for t in (T0..=T0 + 32_000).step_by(250) {
        let strict = db.find_time(log, t, FindTimeAccuracy::Strict).unwrap();
        assert_eq!(strict, truth(t), "strict find_time({t})");
        let approx = db.find_time(log, t, FindTimeAccuracy::Approximate).unwrap();
        assert!(
            approx <= strict,
            "approximate {approx} above strict {strict} for {t}"
        );
    }
    // Exactly on the boundaries: the first timestamp of partitions 2 and 3.
    for (i, first) in [(10usize, written[10]), (20, written[20])] {
        let strict = db
            .find_time(log, first.1, FindTimeAccuracy::Strict)
            .unwrap();
        assert_eq!(strict, written[i - 1].0.next());
        let approx = db
            .find_time(log, first.1, FindTimeAccuracy::Approximate)
            .unwrap();
        assert_eq!(approx, strict, "the directory alone answers on a boundary");
        // Reading from the answer starts at the partition's first record.
        let first_read = db.read(log, strict, Lsn::MAX).next().unwrap().unwrap();
        assert!(matches!(first_read, ReadItem::Record(r) if r.header.lsn == first.0));
    }
    // After a trim, answers never fall below the first untrimmed LSN.
    db.trim_blocking(log, lsn(2, 15)).unwrap();
    assert_eq!(
        db.find_time(log, T0, FindTimeAccuracy::Strict).unwrap(),
        lsn(2, 16)
    );
    assert_eq!(
        db.find_time(LogId(99), T0, FindTimeAccuracy::Strict)
            .unwrap(),
        Lsn::OLDEST
    );
}
