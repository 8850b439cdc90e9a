//! One bounded chunk of a read stream, read from LogsDB (synchronous: run it on the blocking
//! pool). [`scan`] walks `from ..= to` and stops at the first of: the range's end, the byte
//! budget (payload bytes of the records kept plus a fixed overhead per record; a single
//! larger record still goes alone),
//! `MAX_READ_BATCH` records kept, or [`MAX_EXAMINED`] entries looked at (so a filter that skips
//! nearly everything still reports progress in bounded steps).
//!
//! Without single-copy delivery the data itself is iterated. With it, the copyset index is
//! iterated and only the records this node ships are read (point lookups), so payloads of
//! records other nodes ship are never touched. A copy that fails verification is left out
//! (it counts as missing on this node, DESIGN §3), and so is an amendment without payload.
//!
//! Tail reads are served from RocksDB's memtable: records just stored (and released) are still
//! in the write buffer, so reading them does no disk I/O (checked by a test with RocksDB's
//! perf counters) and a separate record cache would only duplicate the memtable.
//!
//! A trim that overtakes the scan makes it [`Scanned::Replan`]: the stream then ships a `Trim`
//! gap first, instead of claiming `NoRecords` over LSNs that were trimmed under it.

use tally_common::wire::ReadRecord;
use tally_common::wire::client::MAX_READ_BATCH;
use tally_common::{LogId, Lsn, NodeId};

use super::cursor::Chunk;
use super::filter::Filter;
#[cfg(test)]
use super::filter::single_copy_shipper;
use crate::logsdb::{LogRecord, LogsDb, LogsDbError, ReadItem};
use crate::server::admission::RECORD_OVERHEAD_BYTES;

/// Most index or data entries one chunk looks at.
pub(crate) const MAX_EXAMINED: usize = 4 * MAX_READ_BATCH;

/// The outcome of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scanned {
    Chunk(Chunk),
    /// The trim point moved into the scanned range meanwhile: plan again.
    Replan,
}

/// Builds one chunk, enforcing the budgets.
struct Builder {
    from: Lsn,
    records: Vec<ReadRecord>,
    bytes: usize,
    examined: usize,
    last: Lsn,
    max_bytes: usize,
}

impl Builder {
    /// Notes one examined LSN and keeps `record` if given; false when the chunk is full.
    fn take(&mut self, lsn: Lsn, record: Option<LogRecord>) -> bool {
        self.examined += 1;
        self.last = lsn;
        if let Some(r) = record {
            self.bytes += r.payload.len() + RECORD_OVERHEAD_BYTES;
            self.records.push(ReadRecord {
                header: r.header,
                payload: r.payload,
            });
        }
        self.bytes < self.max_bytes
            && self.records.len() < MAX_READ_BATCH
            && self.examined < MAX_EXAMINED
    }

    fn finish(self, complete_to: Option<Lsn>) -> Chunk {
        Chunk {
            records: self.records,
            through: complete_to.unwrap_or(self.last).max(self.from.prev()),
        }
    }
}

/// Scans `from ..= to` of `log` for a stream with `filter` (see the module docs).
pub(crate) fn scan(
    db: &LogsDb,
    node: NodeId,
    log: LogId,
    from: Lsn,
    to: Lsn,
    filter: &Filter,
    max_bytes: usize,
) -> Result<Scanned, LogsDbError> {
    let mut b = Builder {
        from,
        records: Vec::new(),
        bytes: 0,
        examined: 0,
        last: from.prev(),
        max_bytes,
    };
    let mut full = false;
    let keep = |b: &mut Builder, item: ReadItem| -> Option<bool> {
        Some(match item {
            ReadItem::Record(r) => {
                let lsn = r.header.lsn;
                let ship = filter.ships(&r.header, &r.payload);
                b.take(lsn, ship.then_some(r))
            }
            ReadItem::Corrupt { lsn, kind } => {
                tracing::warn!(%node, %log, %lsn, %kind, "corrupt copy left out of a read stream");
                b.take(lsn, None)
            }
            ReadItem::Trimmed { .. } => return None,
        })
    };
    if filter.single_copy() {
        for entry in db.copysets(log, from, to) {
            let (lsn, skip) = match entry {
                Ok(e) => (
                    e.lsn,
                    filter.skips_by_index(e.lsn, e.flags, e.copyset.nodes()),
                ),
                // A damaged index entry: decide from the record itself (`ships` re-applies
                // the index rules to its header).
                Err(LogsDbError::Corrupt { lsn, .. }) => (lsn, false),
                Err(e) => return Err(e),
            };
            let more = if skip {
                b.take(lsn, None)
            } else {
                match db.read_one(log, lsn)? {
                    Some(item) => match keep(&mut b, item) {
                        Some(more) => more,
                        None => return Ok(Scanned::Replan),
                    },
                    // Gone since the index was read: only a trim or repair removes copies.
                    None => b.take(lsn, None),
                }
            };
            if !more {
                full = true;
                break;
            }
        }
    } else {
        for item in db.read(log, from, to) {
            match keep(&mut b, item?) {
                Some(true) => {}
                Some(false) => {
                    full = true;
                    break;
                }
                None => return Ok(Scanned::Replan),
            }
        }
    }
    // Iterators start above the trim point they saw: if it moved into the range, what was
    // not seen may have been trimmed rather than absent.
    let (_, trim) = db.release_and_trim(log);
    if trim >= from {
        return Ok(Scanned::Replan);
    }
    Ok(Scanned::Chunk(b.finish((!full).then_some(to))))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};
    use tally_common::wire::ReadFilter;
    use tally_common::{Copyset, Durability, Epoch, Esn, RecordFlags, RecordHeader, payload_crc32};

    use super::*;
    use crate::logsdb::{LogsDbConfig, ManualClock, NodeIdentity};

    const LOG: LogId = LogId(3);
    const ME: NodeId = NodeId(1);

    fn record(esn: u32) -> LogRecord {
        let payload = vec![esn as u8; 1000];
        LogRecord {
            header: RecordHeader {
                log: LOG,
                lsn: Lsn::new(Epoch(1), Esn(esn)),
                timestamp_ms: 1_000 + u64::from(esn),
                lng: Esn(0),
                wave_or_seal: 1,
                flags: RecordFlags::NONE,
                copyset: Copyset::new(vec![NodeId(1), NodeId(2), NodeId(3)]).unwrap(),
                payload_crc32: payload_crc32(&payload),
            },
            payload,
        }
    }

    /// Runs `f` and returns what it returned with the blocks it read from files.
    fn counting_block_reads<T>(f: impl FnOnce() -> T) -> (T, u64) {
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut ctx = PerfContext::default();
        ctx.reset();
        let out = f();
        let reads = ctx.metric(PerfMetric::BlockReadCount);
        set_perf_stats(PerfStatsLevel::Disable);
        (out, reads)
    }

    fn chunk(s: Scanned) -> Chunk {
        match s {
            Scanned::Chunk(c) => c,
            Scanned::Replan => panic!("unexpected replan"),
        }
    }

    /// The tail of a log is served from the memtable: no block is read from a file. After a
    /// flush the same reads do hit files, which shows the counter measures what it claims.
    #[test]
    fn tail_reads_come_from_the_memtable_without_disk_reads() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let db = LogsDb::open(
            dir.path(),
            &NodeIdentity::new("c", ME),
            LogsDbConfig::small_for_tests(),
            clock,
        )
        .unwrap();
        let records: Vec<LogRecord> = (1..=50).map(record).collect();
        db.store_blocking(records, Durability::Durable).unwrap();
        let (from, to) = (Lsn::new(Epoch(1), Esn(1)), Lsn::new(Epoch(1), Esn(50)));
        let all = Filter::new(ME, &ReadFilter::default()).unwrap();
        let single = Filter::new(
            ME,
            &ReadFilter {
                single_copy: true,
                shuffle_seed: 5,
                ..ReadFilter::default()
            },
        )
        .unwrap();
        let (scanned, reads) =
            counting_block_reads(|| scan(&db, ME, LOG, from, to, &all, 1 << 20).unwrap());
        let c = chunk(scanned);
        assert_eq!((c.records.len(), c.through), (50, to));
        assert_eq!(reads, 0, "tail read went to disk");
        let (scanned, reads) =
            counting_block_reads(|| scan(&db, ME, LOG, from, to, &single, 1 << 20).unwrap());
        let mine = (1..=50)
            .filter(|e| {
                let copyset = [NodeId(1), NodeId(2), NodeId(3)];
                single_copy_shipper(&copyset, 5, Lsn::new(Epoch(1), Esn(*e)), &[]) == Some(ME)
            })
            .count();
        assert_eq!(chunk(scanned).records.len(), mine);
        assert_eq!(reads, 0, "single-copy tail read went to disk");

        db.flush_memtables().unwrap();
        let (scanned, reads) =
            counting_block_reads(|| scan(&db, ME, LOG, from, to, &all, 1 << 20).unwrap());
        assert_eq!(chunk(scanned).records.len(), 50);
        assert!(reads > 0, "after a flush the records come from files");
    }

    #[test]
    fn budgets_cut_chunks_at_the_last_examined_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let db = LogsDb::open(
            dir.path(),
            &NodeIdentity::new("c", ME),
            LogsDbConfig::small_for_tests(),
            Arc::new(ManualClock::new(1_000)),
        )
        .unwrap();
        db.store_blocking((1..=10).map(record).collect(), Durability::Durable)
            .unwrap();
        let all = Filter::new(ME, &ReadFilter::default()).unwrap();
        let lsn = |e| Lsn::new(Epoch(1), Esn(e));
        // 2500 bytes: three 1000-byte records reach it.
        let c = chunk(scan(&db, ME, LOG, lsn(1), lsn(20), &all, 2500).unwrap());
        assert_eq!(c.records.len(), 3);
        assert_eq!(c.through, lsn(3));
        // The rest fits: the chunk covers the whole range.
        let c = chunk(scan(&db, ME, LOG, lsn(4), lsn(20), &all, 1 << 20).unwrap());
        assert_eq!((c.records.len(), c.through), (7, lsn(20)));
        // Nothing in range: an empty chunk that still covers it.
        let c = chunk(scan(&db, ME, LOG, lsn(11), lsn(20), &all, 1 << 20).unwrap());
        assert_eq!((c.records.len(), c.through), (0, lsn(20)));
        // A trim inside the range makes the stream plan again (it ships a trim gap first).
        db.trim_blocking(LOG, lsn(2)).unwrap();
        assert_eq!(
            scan(&db, ME, LOG, lsn(1), lsn(20), &all, 1 << 20).unwrap(),
            Scanned::Replan
        );
    }
}
