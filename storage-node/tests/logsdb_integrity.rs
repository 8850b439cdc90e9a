//! LogsDB integrity: corrupt values are reported (never absent, never data), identity and
//! lock checks on open, seals and preemption, precedence and amendments through the copyset
//! index, limits, the async API with group commit under concurrent durable writers, and
//! removals queued together with writes to the same LSN.

mod support;

use std::sync::Arc;

use support::*;
use tally_common::{Copyset, Durability, Epoch, LogId, Lsn, NodeId, RecordFlags};
use tally_storage_node::logsdb::{
    CorruptKind, Db, LogsDb, LogsDbConfig, LogsDbError, ManualClock, NodeIdentity, ReadItem,
};

#[test]
fn flipped_byte_in_a_stored_value_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig::small_for_tests();
    let log = LogId(5);
    let db = open(dir.path(), config.clone(), clock.clone());
    for esn in 1..=10 {
        db.store_blocking(
            vec![plain(log, lsn(1, esn), T0 + u64::from(esn), 300)],
            Durability::Durable,
        )
        .unwrap();
    }
    db.close().unwrap();

    // Flip one payload byte of the record at e1n5, behind LogsDB's back.
    {
        let db_path = dir.path().join("db");
        let opts = rocksdb::Options::default();
        let cfs = Db::list_cf(&opts, &db_path).unwrap();
        let raw = Db::open_cf(&opts, &db_path, &cfs).unwrap();
        let cf = raw.cf_handle("p1").unwrap();
        let mut key = vec![b'd'];
        key.extend_from_slice(&log.to_be_bytes());
        key.extend_from_slice(&lsn(1, 5).to_be_bytes());
        let mut value = raw
            .get_cf(&cf, &key)
            .unwrap()
            .expect("record e1n5 is stored");
        let at = value.len() - 100;
        value[at] ^= 0x01;
        raw.put_cf(&cf, &key, &value).unwrap();
    }

    let db = open(dir.path(), config, clock);
    let items = read_all(&db, log);
    assert_eq!(items.len(), 10, "the corrupt copy is reported, not skipped");
    for (i, item) in items.iter().enumerate() {
        let l = lsn(1, i as u32 + 1);
        match item {
            ReadItem::Corrupt { lsn: at, kind } => {
                assert_eq!(*at, lsn(1, 5));
                assert!(matches!(kind, CorruptKind::Checksum { .. }), "{kind:?}");
            }
            ReadItem::Record(r) => {
                assert_ne!(l, lsn(1, 5), "corrupt data returned as a record");
                assert_eq!(r.header.lsn, l);
                assert_eq!(r.payload, payload_for(log, l, 300));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A new write of that LSN repairs it.
    db.store_blocking(
        vec![plain(log, lsn(1, 5), T0 + 5, 300)],
        Durability::Durable,
    )
    .unwrap();
    assert_eq!(lsns(&db, log).len(), 10);
}

#[test]
fn identity_and_exclusive_lock_are_checked_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig::small_for_tests();
    let db = open(dir.path(), config.clone(), clock.clone());
    assert!(db.open_report().fresh);
    let second = LogsDb::open(dir.path(), &identity(), config.clone(), clock.clone());
    assert!(matches!(second, Err(LogsDbError::Locked(_))), "{second:?}");
    db.close().unwrap();

    let other_node = NodeIdentity::new("test-cluster", NodeId(2));
    let r = LogsDb::open(dir.path(), &other_node, config.clone(), clock.clone());
    assert!(
        matches!(r, Err(LogsDbError::IdentityMismatch { .. })),
        "{r:?}"
    );
    let other_cluster = NodeIdentity::new("elsewhere", NodeId(1));
    let r = LogsDb::open(dir.path(), &other_cluster, config.clone(), clock.clone());
    assert!(
        matches!(r, Err(LogsDbError::IdentityMismatch { .. })),
        "{r:?}"
    );

    let db = open(dir.path(), config.clone(), clock.clone());
    let report = db.open_report();
    assert!(!report.fresh && !report.unclean_shutdown && !report.recent_range_uncertain);
    let data_dir = db.data_dir_id();
    db.close().unwrap();
    let db = open(dir.path(), config.clone(), clock.clone());
    assert_eq!(db.data_dir_id(), data_dir, "a directory keeps its id");
    db.close().unwrap();

    // An identity file from before directory ids gets one, kept from then on.
    let path = dir.path().join("IDENTITY");
    let text = std::fs::read_to_string(&path).unwrap();
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("data_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(old, text);
    std::fs::write(&path, old).unwrap();
    let db = open(dir.path(), config.clone(), clock.clone());
    let assigned = db.data_dir_id();
    assert_ne!(assigned, data_dir);
    db.close().unwrap();
    let db = open(dir.path(), config.clone(), clock.clone());
    assert_eq!(db.data_dir_id(), assigned);
    db.close().unwrap();

    // A wiped directory is another directory; so is one whose database alone was deleted.
    let other = tempfile::tempdir().unwrap();
    let db = open(other.path(), config.clone(), clock.clone());
    assert_ne!(db.data_dir_id(), assigned);
    db.close().unwrap();
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let db = open(dir.path(), config.clone(), clock.clone());
    assert!(db.open_report().fresh);
    let redrawn = db.data_dir_id();
    assert_ne!(redrawn, assigned);
    db.close().unwrap();
    let db = open(dir.path(), config.clone(), clock.clone());
    assert_eq!(db.data_dir_id(), redrawn);
    db.close().unwrap();

    std::fs::remove_file(dir.path().join("IDENTITY")).unwrap();
    let r = LogsDb::open(dir.path(), &identity(), config, clock);
    assert!(matches!(r, Err(LogsDbError::IdentityMissing(_))), "{r:?}");
}

#[test]
fn seals_preempt_stores_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig::small_for_tests();
    let log = LogId(2);
    let db = open(dir.path(), config.clone(), clock.clone());
    db.store_blocking(vec![plain(log, lsn(3, 1), T0, 10)], Durability::Durable)
        .unwrap();
    assert_eq!(
        db.log_meta(log).soft_seal,
        Epoch(2),
        "a store in epoch 3 soft-seals epoch 2"
    );
    let r = db.store_blocking(vec![plain(log, lsn(2, 9), T0, 10)], Durability::Durable);
    assert!(
        matches!(r, Err(LogsDbError::Preempted { seal: Epoch(2), .. })),
        "{r:?}"
    );

    assert_eq!(db.seal_blocking(log, Epoch(4)).unwrap(), Epoch(4));
    let r = db.store_blocking(vec![plain(log, lsn(4, 1), T0, 10)], Durability::Durable);
    assert!(
        matches!(r, Err(LogsDbError::Preempted { seal: Epoch(4), .. })),
        "{r:?}"
    );
    // A batch with one preempted record stores none of them.
    let r = db.store_blocking(
        vec![plain(log, lsn(5, 1), T0, 10), plain(log, lsn(4, 2), T0, 10)],
        Durability::Durable,
    );
    assert!(r.is_err());
    assert_eq!(lsns(&db, log), vec![lsn(3, 1)]);
    // Recovery writes of the sealing recovery (seal epoch 4) may still mutate epoch 3 and 4.
    let plug = record(
        log,
        lsn(3, 2),
        T0,
        RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::HOLE,
        4,
        Vec::new(),
    );
    db.store_blocking(vec![plug], Durability::Durable).unwrap();
    let stale = record(
        log,
        lsn(3, 3),
        T0,
        RecordFlags::WRITTEN_BY_RECOVERY,
        3,
        b"x".to_vec(),
    );
    assert!(matches!(
        db.store_blocking(vec![stale], Durability::Durable),
        Err(LogsDbError::Preempted { .. })
    ));
    assert!(matches!(
        db.seal_blocking(log, Epoch(3)),
        Err(LogsDbError::Preempted { seal: Epoch(4), .. })
    ));
    assert_eq!(db.seal_blocking(log, Epoch(4)).unwrap(), Epoch(4));
    db.store_blocking(vec![plain(log, lsn(5, 1), T0, 10)], Durability::Durable)
        .unwrap();
    db.set_last_released_blocking(log, lsn(3, 2)).unwrap();
    db.set_last_clean_epoch_blocking(log, Epoch(3)).unwrap();
    db.set_epoch_lng_blocking(log, Epoch(5), tally_common::Esn(7))
        .unwrap();
    db.set_last_released_blocking(log, lsn(3, 1)).unwrap();
    let before = db.log_meta(log);
    assert_eq!(
        before.last_released,
        lsn(3, 2),
        "release pointers only move forward"
    );
    db.close().unwrap();

    let db = open(dir.path(), config, clock);
    let after = db.log_meta(log);
    assert_eq!(after, before);
    assert_eq!(
        (after.seal, after.soft_seal, after.last_clean_epoch),
        (Epoch(4), Epoch(4), Epoch(3))
    );
    assert_eq!(after.epoch_lng.get(&Epoch(5)), Some(&tally_common::Esn(7)));
    assert_eq!(lsns(&db, log), vec![lsn(3, 1), lsn(3, 2), lsn(5, 1)]);
}

#[test]
fn amendments_and_precedence_show_in_the_copyset_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(
        dir.path(),
        LogsDbConfig::small_for_tests(),
        Arc::new(ManualClock::new(T0)),
    );
    let log = LogId(9);
    let l = lsn(1, 1);
    // The amendment (wave 2, new copyset) arrives before the full copy (wave 1).
    let mut amend = record(log, l, T0, RecordFlags::AMEND, 2, Vec::new());
    amend.header.copyset = Copyset::new(vec![NodeId(4), NodeId(5)]).unwrap();
    db.store_blocking(vec![amend], Durability::Durable).unwrap();
    let items = read_all(&db, log);
    assert!(
        matches!(&items[..], [ReadItem::Record(r)] if r.header.flags.contains(RecordFlags::AMEND))
    );
    db.store_blocking(vec![plain(log, l, T0, 50)], Durability::Durable)
        .unwrap();
    let items = read_all(&db, log);
    let [ReadItem::Record(r)] = &items[..] else {
        panic!("{items:?}")
    };
    assert_eq!(r.payload, payload_for(log, l, 50));
    assert_eq!(r.header.wave_or_seal, 2);
    assert!(!r.header.flags.contains(RecordFlags::AMEND));
    let csi: Vec<_> = db
        .copysets(log, Lsn::OLDEST, Lsn::MAX)
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(csi.len(), 1);
    assert_eq!(csi[0].copyset.nodes(), &[NodeId(4), NodeId(5)]);
    assert_eq!(csi[0].wave_or_seal, 2);
    // A recovery write beats both, whatever its seal epoch.
    let rec = record(
        log,
        l,
        T0,
        RecordFlags::WRITTEN_BY_RECOVERY,
        1,
        b"recovered".to_vec(),
    );
    db.store_blocking(vec![rec], Durability::Durable).unwrap();
    let lower_wave_again = plain(log, l, T0, 50);
    db.store_blocking(vec![lower_wave_again], Durability::Durable)
        .unwrap();
    let items = read_all(&db, log);
    let [ReadItem::Record(r)] = &items[..] else {
        panic!("{items:?}")
    };
    assert_eq!(r.payload, b"recovered");
}

#[test]
fn limits_and_malformed_records_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogsDbConfig {
        max_payload_bytes: 1000,
        max_records_per_write: 3,
        ..LogsDbConfig::small_for_tests()
    };
    let db = open(dir.path(), config, Arc::new(ManualClock::new(T0)));
    let log = LogId(1);
    let r = db.store_blocking(vec![plain(log, lsn(1, 1), T0, 1001)], Durability::Fast);
    assert!(
        matches!(
            r,
            Err(LogsDbError::PayloadTooLarge {
                len: 1001,
                max: 1000
            })
        ),
        "{r:?}"
    );
    let four = (1..=4).map(|e| plain(log, lsn(1, e), T0, 1)).collect();
    assert!(matches!(
        db.store_blocking(four, Durability::Fast),
        Err(LogsDbError::TooManyRecords { .. })
    ));
    let mut bad = plain(log, lsn(1, 1), T0, 10);
    bad.payload[0] ^= 1;
    assert!(matches!(
        db.store_blocking(vec![bad], Durability::Fast),
        Err(LogsDbError::PayloadChecksum { .. })
    ));
    let zero_esn = plain(log, lsn(1, 0), T0, 10);
    assert!(matches!(
        db.store_blocking(vec![zero_esn], Durability::Fast),
        Err(LogsDbError::InvalidRecord { .. })
    ));
    assert!(lsns(&db, log).is_empty());
}

#[test]
fn async_api_and_concurrent_durable_writers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open(
        dir.path(),
        LogsDbConfig::small_for_tests(),
        Arc::new(ManualClock::new(T0)),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..32u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for esn in 1..=20 {
                    let log = LogId(100 + w);
                    db.store(vec![plain(log, lsn(1, esn), T0, 128)], Durability::Durable)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(db.seal(LogId(100), Epoch(1)).await.unwrap(), Epoch(1));
        let out = db.trim(LogId(100), lsn(1, 5)).await.unwrap();
        assert!(out.advanced);
    });
    for w in 0..32u64 {
        let log = LogId(100 + w);
        let from = if w == 0 { 6 } else { 1 };
        assert_eq!(
            lsns(&db, log),
            (from..=20).map(|e| lsn(1, e)).collect::<Vec<_>>(),
            "{log:?}"
        );
    }
    let db = Arc::into_inner(db).expect("no other handle");
    db.close().unwrap();
}

/// A removal and writes to the same LSN queued back to back (so the writer usually stages them
/// in one group commit) apply in queue order: a write after a removal starts from nothing (it
/// does not merge with the removed copy), and a removal after a write removes it.
#[test]
fn removal_and_writes_of_one_lsn_queued_together_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(
        dir.path(),
        LogsDbConfig::small_for_tests(),
        Arc::new(ManualClock::new(T0)),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = LogId(21);
    let (a, b) = (lsn(1, 1), lsn(1, 2));
    // A recovery copy beats any normal write: were it merged with after its removal, it
    // would win.
    let recovered = |l| {
        record(
            log,
            l,
            T0,
            RecordFlags::WRITTEN_BY_RECOVERY,
            1,
            b"recovered".to_vec(),
        )
    };
    db.store_blocking(vec![recovered(a), recovered(b)], Durability::Durable)
        .unwrap();
    rt.block_on(async {
        let (removed, stored, stored_b, removed_b) = tokio::join!(
            db.remove_copy(log, a),
            db.store(vec![plain(log, a, T0, 40)], Durability::Durable),
            db.store(vec![plain(log, b, T0, 40)], Durability::Durable),
            db.remove_copy(log, b),
        );
        removed.unwrap();
        stored.unwrap();
        stored_b.unwrap();
        removed_b.unwrap();
    });
    let items = read_all(&db, log);
    let [ReadItem::Record(r)] = &items[..] else {
        panic!("{items:?}")
    };
    assert_eq!(r.header.lsn, a);
    assert_eq!(r.payload, payload_for(log, a, 40));
    assert!(!r.header.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY));
    let csi: Vec<_> = db
        .copysets(log, Lsn::OLDEST, Lsn::MAX)
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(csi.len(), 1);
    assert_eq!((csi[0].lsn, csi[0].flags), (a, RecordFlags::NONE));
    db.close().unwrap();
}
