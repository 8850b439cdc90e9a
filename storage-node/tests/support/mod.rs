//! Helpers shared by the LogsDB integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use tally_common::{
    Copyset, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader, payload_crc32,
};
use tally_storage_node::logsdb::{
    Clock, LogRecord, LogsDb, LogsDbConfig, ManualClock, NodeIdentity, ReadItem,
};

pub const T0: u64 = 1_700_000_000_000;

pub fn identity() -> NodeIdentity {
    NodeIdentity::new("test-cluster", NodeId(1))
}

pub fn open(dir: &Path, config: LogsDbConfig, clock: Arc<ManualClock>) -> LogsDb {
    let clock: Arc<dyn Clock> = clock;
    LogsDb::open(dir, &identity(), config, clock).expect("open LogsDB")
}

pub fn lsn(epoch: u32, esn: u32) -> Lsn {
    Lsn::new(Epoch(epoch), Esn(esn))
}

/// A payload derived from its position, so a reader can check it without remembering it.
pub fn payload_for(log: LogId, lsn: Lsn, len: usize) -> Vec<u8> {
    let seed = log.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lsn.0;
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64).wrapping_mul(31) >> 3) as u8)
        .collect()
}

pub fn record(
    log: LogId,
    lsn: Lsn,
    timestamp_ms: u64,
    flags: RecordFlags,
    wave: u32,
    payload: Vec<u8>,
) -> LogRecord {
    LogRecord {
        header: RecordHeader {
            log,
            lsn,
            timestamp_ms,
            lng: Esn(0),
            wave_or_seal: wave,
            flags,
            copyset: Copyset::new(vec![NodeId(1), NodeId(2)]).unwrap(),
            payload_crc32: payload_crc32(&payload),
        },
        payload,
    }
}

/// A plain record (wave 1) with a derived payload.
pub fn plain(log: LogId, lsn: Lsn, timestamp_ms: u64, len: usize) -> LogRecord {
    record(
        log,
        lsn,
        timestamp_ms,
        RecordFlags::NONE,
        1,
        payload_for(log, lsn, len),
    )
}

/// Every item of a full read of `log`, errors unwrapped.
pub fn read_all(db: &LogsDb, log: LogId) -> Vec<ReadItem> {
    db.read(log, Lsn::OLDEST, Lsn::MAX)
        .map(|r| r.expect("read"))
        .collect()
}

/// The LSNs of the records of a full read.
pub fn lsns(db: &LogsDb, log: LogId) -> Vec<Lsn> {
    read_all(db, log)
        .into_iter()
        .filter_map(|i| match i {
            ReadItem::Record(r) => Some(r.header.lsn),
            _ => None,
        })
        .collect()
}
