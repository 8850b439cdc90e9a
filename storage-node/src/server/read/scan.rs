//! One bounded chunk of a read stream, read from LogsDB (synchronous: run it on the blocking
//! pool). [`scan`] walks `from ..= to` and stops at the first of: the range's end, the byte
//! budget (payload bytes of the records kept plus a fixed overhead per record; a single
//! larger record still goes alone),
//! `MAX_READ_BATCH` records kept, or [`MAX_EXAMINED`] entries looked at (so a filter that skips
//! nearly everything still reports progress in bounded steps).
//!
//! The data itself is iterated, and each record is shipped or skipped by the filter. With
//! single-copy delivery a node ships about 1/R of its records, and skipping the others costs
//! little as long as they are small: they sit in the same disk blocks as the records shipped,
//! and one iterator walking them is much cheaper than a point lookup per shipped record
//! (measured: 2.4× the backfill rate of point lookups for 1 KiB records, `tally bench read`).
//! Once a skipped record of at least [`INDEX_SCAN_MIN_SKIPPED_BYTES`] turns up, the rest of the
//! chunk walks the copyset index instead and reads only the records this node ships (point
//! lookups), so large payloads other nodes ship are never read. A copy that fails
//! verification is left out (it counts as missing on this node, DESIGN §3), and so is an
//! amendment without payload.
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

/// A single-copy scan that skips a record with a payload at least this large walks the rest
/// of its chunk through the copyset index (see the module docs): a quarter of LogsDB's 64 KiB
/// data block, so the records skipped from there on would mostly have cost block reads of
/// their own.
pub(crate) const INDEX_SCAN_MIN_SKIPPED_BYTES: usize = 16 << 10;

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
    // Where the copyset index takes over from the data (single copy, large records).
    let mut by_index_from = None;
    for item in db.read(log, from, to) {
        let item = item?;
        // A large record this node does not ship: the rest of the chunk goes by the index.
        let switch_after = match &item {
            ReadItem::Record(r)
                if filter.single_copy()
                    && r.payload.len() >= INDEX_SCAN_MIN_SKIPPED_BYTES
                    && !filter.ships(&r.header, &r.payload) =>
            {
                Some(r.header.lsn)
            }
            _ => None,
        };
        match keep(&mut b, item) {
            Some(true) => {}
            Some(false) => {
                full = true;
                break;
            }
            None => return Ok(Scanned::Replan),
        }
        if let Some(lsn) = switch_after {
            by_index_from = Some(lsn.next());
            break;
        }
    }
    if let Some(start) = by_index_from.filter(|s| *s <= to) {
        for entry in db.copysets(log, start, to) {
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

    /// Single copy over large records: the scan leaves the data for the copyset index at the
    /// first large record it skips, so the payloads other nodes ship are not read, and it
    /// ships exactly what it would have shipped walking the data.
    #[test]
    fn single_copy_walks_the_index_past_large_skipped_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = LogsDb::open(
            dir.path(),
            &NodeIdentity::new("c", ME),
            // One partition and a memtable larger than the records, so one file holds every
            // record after the flush.
            LogsDbConfig {
                partition_size_bytes: 1 << 30,
                memtable_bytes: 16 << 20,
                ..LogsDbConfig::small_for_tests()
            },
            Arc::new(ManualClock::new(1_000)),
        )
        .unwrap();
        let big = |esn: u32| {
            let mut r = record(esn);
            r.payload = vec![esn as u8; 4 * INDEX_SCAN_MIN_SKIPPED_BYTES];
            r.header.payload_crc32 = payload_crc32(&r.payload);
            r
        };
        for esn in 1..=30 {
            db.store_blocking(vec![big(esn)], Durability::Durable)
                .unwrap();
        }
        db.flush_memtables().unwrap();
        let lsn = |e| Lsn::new(Epoch(1), Esn(e));
        let single = Filter::new(
            ME,
            &ReadFilter {
                single_copy: true,
                shuffle_seed: 5,
                ..ReadFilter::default()
            },
        )
        .unwrap();
        let all = Filter::new(ME, &ReadFilter::default()).unwrap();
        let copyset = [NodeId(1), NodeId(2), NodeId(3)];
        let mine: Vec<Lsn> = (1..=30)
            .map(lsn)
            .filter(|l| single_copy_shipper(&copyset, 5, *l, &[]) == Some(ME))
            .collect();
        assert!(mine.len() < 30 && !mine.is_empty());
        let budget = 64 << 20;
        let (scanned, single_reads) =
            counting_block_reads(|| scan(&db, ME, LOG, lsn(1), lsn(30), &single, budget).unwrap());
        let c = chunk(scanned);
        let shipped: Vec<Lsn> = c.records.iter().map(|r| r.header.lsn).collect();
        assert_eq!((shipped, c.through), (mine.clone(), lsn(30)));
        // Each record fills a block of its own: the scan read the data up to the first
        // record it skipped, then the index block and only the records it ships.
        assert!(
            single_reads < 30 && single_reads <= mine.len() as u64 + 3,
            "single copy read {single_reads} blocks for {} of 30 records",
            mine.len()
        );
        let c = chunk(scan(&db, ME, LOG, lsn(1), lsn(30), &all, budget).unwrap());
        assert_eq!(c.records.len(), 30);
        // Small records are walked in the data and give the same shipping decisions.
        let small: Vec<Lsn> = (31..=60)
            .map(lsn)
            .filter(|l| single_copy_shipper(&copyset, 5, *l, &[]) == Some(ME))
            .collect();
        db.store_blocking((31..=60).map(record).collect(), Durability::Durable)
            .unwrap();
        let c = chunk(scan(&db, ME, LOG, lsn(31), lsn(60), &single, budget).unwrap());
        let shipped: Vec<Lsn> = c.records.iter().map(|r| r.header.lsn).collect();
        assert_eq!((shipped, c.through), (small, lsn(60)));
    }
}
