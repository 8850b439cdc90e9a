//! Tests of the write path's reuse of memory: record-value buffers recycled from the writer
//! threads to the callers (`value_pool`) and copyset-index values encoded by the writers into
//! one reused buffer. Whatever a buffer held before, every stored copy and index entry must be
//! exactly the record's (checksums verified on read), including merged copies.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader, payload_crc32,
};

use super::{Clock, LogRecord, LogsDb, LogsDbConfig, ManualClock, NodeIdentity, ReadItem};

/// What one `(log, esn)` must hold at the end: the payload, and the wave and copyset of the
/// winning write.
type Expected = BTreeMap<(u64, u32), (Vec<u8>, u32, Vec<u32>)>;

fn record(log: u64, esn: u32, wave: u32, copyset: &[u32], payload: Vec<u8>) -> LogRecord {
    LogRecord {
        header: RecordHeader {
            log: LogId(log),
            lsn: Lsn::new(Epoch(1), Esn(esn)),
            timestamp_ms: 1_700_000_000_000 + u64::from(esn),
            lng: Esn(0),
            wave_or_seal: wave,
            flags: RecordFlags::NONE,
            copyset: Copyset::new(copyset.iter().copied().map(NodeId).collect()).unwrap(),
            payload_crc32: payload_crc32(&payload),
        },
        payload,
    }
}

/// A payload whose size and bytes differ per record, so a recycled buffer is reused for a
/// value of another size and must not leak its old bytes.
fn payload(log: u64, esn: u32, salt: u8) -> Vec<u8> {
    let len = 1 + ((log * 131 + u64::from(esn) * 977) % 3000) as usize;
    (0..len)
        .map(|i| (i as u64 ^ log ^ u64::from(esn)) as u8 ^ salt)
        .collect()
}

#[test]
fn recycled_buffers_never_leak_into_stored_copies() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
    let db = LogsDb::open(
        dir.path(),
        &NodeIdentity::new("test-cluster", NodeId(1)),
        LogsDbConfig::small_for_tests(),
        clock,
    )
    .unwrap();
    let mut expected = Expected::new();
    for round in 0..3u32 {
        let mut tickets = Vec::new();
        for log in 1..=6u64 {
            for i in 0..40u32 {
                let esn = round * 40 + i + 1;
                let copyset: Vec<u32> = (0..1 + (esn % 5)).map(|n| n + log as u32).collect();
                let p = payload(log, esn, round as u8);
                expected.insert((log, esn), (p.clone(), 1, copyset.clone()));
                let r = record(log, esn, 1, &copyset, p);
                tickets.push(db.submit_store_blocking(vec![r], Durability::Fast).unwrap());
            }
        }
        for t in tickets {
            t.wait().unwrap();
        }
        // Rewrites of stored LSNs: a higher wave takes the metadata and the payload (merged
        // with the stored copy, encoded by the writer into a fresh buffer).
        for log in 1..=6u64 {
            let esn = round * 40 + 7;
            let p = payload(log, esn, 0x5A);
            let copyset = vec![9, 8];
            expected.insert((log, esn), (p.clone(), 2, copyset.clone()));
            let r = record(log, esn, 2, &copyset, p);
            db.store_blocking(vec![r], Durability::Durable).unwrap();
        }
    }
    assert!(
        db.pooled_value_bytes() > 0,
        "the writers hand value buffers back after their commits"
    );
    for log in 1..=6u64 {
        let mut seen = 0;
        for item in db.read(LogId(log), Lsn::OLDEST, Lsn::MAX) {
            let ReadItem::Record(r) = item.unwrap() else {
                panic!("only records expected");
            };
            let esn = r.header.lsn.esn().0;
            let (p, wave, copyset) = &expected[&(log, esn)];
            assert_eq!(&r.payload, p, "log {log} esn {esn}: payload");
            assert_eq!(r.header.wave_or_seal, *wave, "log {log} esn {esn}: wave");
            let nodes: Vec<u32> = r.header.copyset.nodes().iter().map(|n| n.0).collect();
            assert_eq!(&nodes, copyset, "log {log} esn {esn}: copyset");
            seen += 1;
        }
        assert_eq!(seen, 120, "log {log}: every record is there");
        let mut index = 0;
        for entry in db.copysets(LogId(log), Lsn::OLDEST, Lsn::MAX) {
            let entry = entry.unwrap();
            let (_, wave, copyset) = &expected[&(log, entry.lsn.esn().0)];
            assert_eq!(entry.wave_or_seal, *wave);
            let nodes: Vec<u32> = entry.copyset.nodes().iter().map(|n| n.0).collect();
            assert_eq!(&nodes, copyset);
            index += 1;
        }
        assert_eq!(index, 120, "log {log}: one index entry per record");
    }
    db.close().unwrap();
}
