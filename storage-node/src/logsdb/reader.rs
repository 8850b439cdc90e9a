//! Reading a log: [`LogIterator`] yields records in LSN order from an LSN on, across
//! partitions, skipping partitions that the directory says cannot hold the range, and
//! verifying every value's checksum (a corrupt copy is a [`ReadItem::Corrupt`], never
//! skipped, never data). [`CopysetIterator`] walks the copyset index only, so filters decide
//! without reading payloads; `read_one` then fetches the few records a filter keeps.
//!
//! Iterators borrow the database: keep them short-lived (one read batch) and re-open from the
//! next LSN, which is what a read stream does anyway. A partition dropped by retention while an
//! iterator is open is skipped: it only held trimmed records.

use std::collections::VecDeque;
use std::sync::Arc;

use rocksdb::{BoundColumnFamily, DBRawIteratorWithThreadMode, ReadOptions};
use tally_common::{Copyset, LogId, Lsn, RecordFlags};

use super::Db;
use super::directory::{DirEntry, Directory, PartitionId};
use super::error::{CorruptKind, LogsDbError};
use super::keys::{self, CSI_TAG, DATA_TAG};
use super::value::{self, LogRecord};

/// One item of a log read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadItem {
    /// Everything at or below `up_to` is trimmed. First item when the range starts at or
    /// below a trim point (never for a log that was never trimmed).
    Trimmed {
        up_to: Lsn,
    },
    Record(LogRecord),
    /// The stored copy at `lsn` failed verification.
    Corrupt {
        lsn: Lsn,
        kind: CorruptKind,
    },
}

/// One copyset-index entry: the merged metadata of the record at `lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopysetEntry {
    pub lsn: Lsn,
    pub wave_or_seal: u32,
    pub flags: RecordFlags,
    pub copyset: Copyset,
}

/// Walks the keys with one tag of one log over the partitions that may hold them.
struct PartitionScan<'a> {
    db: &'a Db,
    tag: u8,
    log: LogId,
    until: Lsn,
    next_from: Lsn,
    partitions: VecDeque<PartitionId>,
    iter: Option<(
        Arc<BoundColumnFamily<'a>>,
        DBRawIteratorWithThreadMode<'a, Db>,
    )>,
}

impl<'a> PartitionScan<'a> {
    fn new(db: &'a Db, dir: &Directory, tag: u8, log: LogId, from: Lsn, until: Lsn) -> Self {
        let partitions = if from > until {
            VecDeque::new()
        } else {
            dir.entries_of(log)
                .into_iter()
                .filter(|(_, e)| e.last_lsn >= from && e.first_lsn <= until)
                .map(|(p, _)| p)
                .collect()
        };
        PartitionScan {
            db,
            tag,
            log,
            until,
            next_from: from,
            partitions,
            iter: None,
        }
    }

    fn advance<T>(&mut self, f: impl FnOnce(Lsn, &[u8]) -> T) -> Option<Result<T, LogsDbError>> {
        loop {
            if self.iter.is_none() {
                let pid = self.partitions.pop_front()?;
                let Some(cf) = self.db.cf_handle(&pid.cf_name()) else {
                    continue;
                };
                let start = keys::record_key(self.tag, self.log, self.next_from);
                let mut opts = ReadOptions::default();
                opts.set_iterate_lower_bound(start.to_vec());
                opts.set_iterate_upper_bound(keys::record_upper_bound(
                    self.tag, self.log, self.until,
                ));
                let mut it = self.db.raw_iterator_cf_opt(&cf, opts);
                it.seek(start);
                self.iter = Some((cf, it));
            }
            let (_, it) = self.iter.as_mut().expect("set above");
            let (Some(key), Some(val)) = (it.key(), it.value()) else {
                let status = it.status();
                self.iter = None;
                if let Err(e) = status {
                    self.partitions.clear();
                    return Some(Err(e.into()));
                }
                continue;
            };
            let Some((_, _, lsn)) = keys::parse_record_key(key) else {
                let lsn = self.next_from;
                it.next();
                return Some(Err(LogsDbError::Corrupt {
                    log: self.log,
                    lsn,
                    kind: CorruptKind::Key,
                }));
            };
            let out = f(lsn, val);
            self.next_from = lsn.next();
            it.next();
            return Some(Ok(out));
        }
    }
}

/// Records of one log in LSN order, `from ..= until`.
pub struct LogIterator<'a> {
    scan: PartitionScan<'a>,
    trimmed: Option<Lsn>,
}

impl std::fmt::Debug for LogIterator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogIterator")
            .field("log", &self.scan.log)
            .field("next", &self.scan.next_from)
            .finish()
    }
}

impl<'a> LogIterator<'a> {
    pub(crate) fn new(
        db: &'a Db,
        dir: &Directory,
        log: LogId,
        trim: Lsn,
        from: Lsn,
        until: Lsn,
    ) -> Self {
        let trimmed = (trim > Lsn::INVALID && from <= trim).then_some(trim);
        let from = from.max(trim.next()).max(Lsn::OLDEST);
        LogIterator {
            scan: PartitionScan::new(db, dir, DATA_TAG, log, from, until),
            trimmed,
        }
    }
}

impl Iterator for LogIterator<'_> {
    type Item = Result<ReadItem, LogsDbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(up_to) = self.trimmed.take() {
            return Some(Ok(ReadItem::Trimmed { up_to }));
        }
        let log = self.scan.log;
        self.scan
            .advance(|lsn, bytes| match value::decode(log, lsn, bytes) {
                Ok(v) => ReadItem::Record(v.record),
                Err(kind) => ReadItem::Corrupt { lsn, kind },
            })
    }
}

/// Copyset-index entries of one log in LSN order, above its trim point.
pub struct CopysetIterator<'a> {
    scan: PartitionScan<'a>,
}

impl std::fmt::Debug for CopysetIterator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopysetIterator")
            .field("log", &self.scan.log)
            .field("next", &self.scan.next_from)
            .finish()
    }
}

impl<'a> CopysetIterator<'a> {
    pub(crate) fn new(
        db: &'a Db,
        dir: &Directory,
        log: LogId,
        trim: Lsn,
        from: Lsn,
        until: Lsn,
    ) -> Self {
        let from = from.max(trim.next()).max(Lsn::OLDEST);
        CopysetIterator {
            scan: PartitionScan::new(db, dir, CSI_TAG, log, from, until),
        }
    }
}

impl Iterator for CopysetIterator<'_> {
    type Item = Result<CopysetEntry, LogsDbError>;

    fn next(&mut self) -> Option<Self::Item> {
        let log = self.scan.log;
        let item = self.scan.advance(|lsn, bytes| {
            value::decode_csi(log, lsn, bytes)
                .map(|(wave_or_seal, flags, copyset)| CopysetEntry {
                    lsn,
                    wave_or_seal,
                    flags,
                    copyset,
                })
                .map_err(|kind| LogsDbError::Corrupt { log, lsn, kind })
        })?;
        Some(item.and_then(|r| r))
    }
}

/// The record at `(log, lsn)` if this node holds it above the trim point: one point lookup in
/// the partition whose range holds the LSN (all copies of one LSN live in one partition).
pub(crate) fn read_one(
    db: &Db,
    entries: &[(PartitionId, DirEntry)],
    log: LogId,
    trim: Lsn,
    lsn: Lsn,
) -> Result<Option<ReadItem>, LogsDbError> {
    if lsn <= trim {
        return Ok(None);
    }
    let key = keys::record_key(DATA_TAG, log, lsn);
    for (pid, _) in entries
        .iter()
        .rev()
        .filter(|(_, e)| e.first_lsn <= lsn && lsn <= e.last_lsn)
    {
        let Some(cf) = db.cf_handle(&pid.cf_name()) else {
            continue; // dropped by retention: it only held trimmed records
        };
        if let Some(bytes) = db.get_pinned_cf(&cf, key)? {
            return Ok(Some(match value::decode(log, lsn, &bytes) {
                Ok(v) => ReadItem::Record(v.record),
                Err(kind) => ReadItem::Corrupt { lsn, kind },
            }));
        }
    }
    Ok(None)
}
