//! `tally bench storage`: LogsDB against raw RocksDB, in the same run, with the same WAL and
//! sync settings and the same column-family options (LogsDB's partition options; raw RocksDB
//! gets them on its single column family). 1 KiB records over 100 logs.
//!
//! Workloads:
//! - **write, unsynced**: one caller thread, one record per call. Raw RocksDB: `put` with
//!   `sync = false`. LogsDB: `fast` stores, with up to 256 in flight (a storage node serves
//!   many STOREs at once; LogsDB's writer threads batch what is queued).
//! - **write, synced, 64 writers**: 64 threads, one record per call, each waiting for its
//!   fsync. Raw RocksDB: `put` with `sync = true` (RocksDB's own write-group batching).
//!   LogsDB: `durable` stores (its group commit). The single-writer synced rate of both is
//!   measured too: the group-commit gain is LogsDB's 64-writer rate over its 1-writer rate.
//! - **sequential read of one log across ≥ 10 partitions**: half the records go to the read
//!   log, the rest round-robin over 99 others; memtables flushed; then the whole log is read.
//!   Raw RocksDB: one iterator over the log's key range, values copied out. LogsDB: its log
//!   iterator (directory, partition hops, checksum verification, decoding).
//!
//! The unsynced-write and read workloads run in alternating rounds (raw, LogsDB, raw, …) and
//! the best round of each side is reported, which filters out the other work of a shared
//! machine; the synced workloads run once each (they are long and disk-bound).
//!
//! Two figures explain the unsynced ratio rather than enter it:
//! - **foreground CPU per record** of each side over all its unsynced rounds (the process's
//!   threads but RocksDB's background flush threads, whose work lags behind the round that
//!   caused it): on a shared 2-core machine the wall-clock ratio swings with the other load,
//!   the CPU each side spends per record much less;
//! - **raw RocksDB writing LogsDB's two keys per record** (its own database, its own rounds in
//!   the same alternation): one `WriteBatch` per record with the data key and the
//!   copyset-index key, values of the sizes LogsDB stores. The copyset index is required by
//!   the design, so this is what a raw RocksDB writer of the same layout would reach.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader, payload_crc32,
};
use tally_storage_node::logsdb::{
    self, Clock, Db, LogRecord, LogsDb, LogsDbConfig, NodeIdentity, ReadItem, SystemClock,
};

#[derive(Debug, Args)]
pub struct StorageBenchArgs {
    /// A short run (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// LogsDB writer threads (default: LogsDB's own, the available cores from 2 to 4).
    #[arg(long)]
    writer_threads: Option<usize>,
}

const RECORD_BYTES: usize = 1024;
const LOGS: u64 = 100;
const SYNC_WRITERS: usize = 64;
const IN_FLIGHT: usize = 256;
const DISTINCT_PAYLOADS: usize = 64;

struct Sizes {
    unsynced: usize,
    synced_per_writer: usize,
    synced_single: usize,
    read_total: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                unsynced: 20_000,
                synced_per_writer: 40,
                synced_single: 150,
                read_total: 40_000,
            }
        } else {
            Sizes {
                unsynced: 200_000,
                synced_per_writer: 150,
                synced_single: 500,
                read_total: 200_000,
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    record_bytes: usize,
    logs: u64,
    quick: bool,
    /// LogsDB writer threads (logs sharded over them).
    logsdb_writer_threads: usize,
    write_unsynced_ratio: f64,
    write_synced_ratio: f64,
    read_ratio: f64,
    raw_write_unsynced_per_s: f64,
    logsdb_write_unsynced_per_s: f64,
    /// Raw RocksDB writing, per record, LogsDB's two keys (data and copyset index) in one
    /// batch: the cost of the layout the design requires, without LogsDB.
    raw_two_keys_write_unsynced_per_s: f64,
    /// LogsDB unsynced ÷ raw RocksDB writing the same two keys per record.
    write_unsynced_ratio_vs_two_keys: f64,
    /// CPU time of the foreground threads per record over all unsynced rounds, µs (see the
    /// module docs; 0 where `/proc` is not available).
    raw_write_unsynced_cpu_us_per_record: f64,
    raw_two_keys_write_unsynced_cpu_us_per_record: f64,
    logsdb_write_unsynced_cpu_us_per_record: f64,
    raw_write_synced_64_per_s: f64,
    logsdb_write_synced_64_per_s: f64,
    raw_write_synced_1_per_s: f64,
    logsdb_write_synced_1_per_s: f64,
    logsdb_group_commit_gain: f64,
    /// LogsDB, 64 async tasks instead of 64 threads (as the server will drive it).
    logsdb_write_synced_64_tasks_per_s: f64,
    /// The group-commit gain with 64 async tasks as the writers (how a storage node drives
    /// LogsDB: no thread wake-up per acknowledgement) over the single synced writer.
    logsdb_group_commit_gain_tasks: f64,
    /// Durable stores acknowledged per WAL fsync with 64 writers (group commit at work).
    logsdb_synced_64_stores_per_fsync: f64,
    /// Stores per group commit of LogsDB's writer threads in the unsynced rounds.
    logsdb_unsynced_stores_per_group: f64,
    raw_read_per_s: f64,
    logsdb_read_per_s: f64,
    read_records: usize,
    read_partitions: usize,
}

/// Distinct incompressible payloads with their checksums (computed once: the client's work).
struct Payloads(Vec<(Vec<u8>, u32)>);

impl Payloads {
    fn new() -> Payloads {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        Payloads(
            (0..DISTINCT_PAYLOADS)
                .map(|_| {
                    let p: Vec<u8> = (0..RECORD_BYTES)
                        .map(|_| {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            state as u8
                        })
                        .collect();
                    let crc = payload_crc32(&p);
                    (p, crc)
                })
                .collect(),
        )
    }

    fn get(&self, i: usize) -> &(Vec<u8>, u32) {
        &self.0[i % DISTINCT_PAYLOADS]
    }
}

fn lsn_of(i: u64) -> Lsn {
    Lsn::new(
        Epoch(1),
        Esn(u32::try_from(i + 1).expect("fewer than 2^32 records per log")),
    )
}

fn record(payloads: &Payloads, log: LogId, lsn: Lsn, i: usize) -> LogRecord {
    let (payload, crc) = payloads.get(i);
    LogRecord {
        header: RecordHeader {
            log,
            lsn,
            timestamp_ms: 1_700_000_000_000 + i as u64,
            lng: Esn(0),
            wave_or_seal: 1,
            flags: RecordFlags::NONE,
            copyset: Copyset::new(vec![NodeId(1), NodeId(2), NodeId(3)]).expect("valid copyset"),
            payload_crc32: *crc,
        },
        payload: payload.clone(),
    }
}

fn raw_key(log: LogId, lsn: Lsn) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&log.to_be_bytes());
    k[8..].copy_from_slice(&lsn.to_be_bytes());
    k
}

/// A key of LogsDB's layout: a one-byte tag (data `d`, copyset index `c`), log, LSN.
fn tagged_key(tag: u8, log: LogId, lsn: Lsn) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = tag;
    k[1..].copy_from_slice(&raw_key(log, lsn));
    k
}

/// What LogsDB stores besides the payload for a record with a copyset of 3 (record value
/// header: 39 bytes plus 4 per node; copyset-index value: 14 bytes plus 4 per node).
const TWO_KEYS_VALUE_HEADER: usize = 39 + 4 * 3;
const TWO_KEYS_INDEX_VALUE: usize = 14 + 4 * 3;

fn config() -> LogsDbConfig {
    LogsDbConfig::default()
}

struct Raw {
    db: Db,
    _cache: rocksdb::Cache,
}

fn open_raw(dir: &Path, config: &LogsDbConfig) -> anyhow::Result<Raw> {
    let cache = rocksdb::Cache::new_lru_cache(config.block_cache_bytes);
    let mut opts = logsdb::partition_cf_options(config, &cache);
    logsdb::apply_db_options(&mut opts, config);
    let db = Db::open(&opts, dir).context("open raw RocksDB")?;
    Ok(Raw { db, _cache: cache })
}

fn open_logsdb(dir: &Path, config: LogsDbConfig) -> anyhow::Result<LogsDb> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    LogsDb::open(dir, &NodeIdentity::new("bench", NodeId(1)), config, clock).context("open LogsDB")
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn raw_write_unsynced(raw: &Raw, payloads: &Payloads, n: usize, base: u64) -> anyhow::Result<f64> {
    let wo = rocksdb::WriteOptions::default();
    let start = Instant::now();
    for i in 0..n {
        let log = LogId(1 + i as u64 % LOGS);
        let lsn = lsn_of((base + i as u64) / LOGS);
        raw.db
            .put_opt(raw_key(log, lsn), payloads.get(i).0.clone(), &wo)?;
    }
    Ok(per_s(n, start.elapsed()))
}

/// Raw RocksDB writing LogsDB's layout: per record one batch with the data key (value: the
/// payload behind a header of LogsDB's size) and the copyset-index key.
fn raw_two_keys_write_unsynced(
    raw: &Raw,
    payloads: &Payloads,
    n: usize,
    base: u64,
) -> anyhow::Result<f64> {
    let wo = rocksdb::WriteOptions::default();
    let index_value = [7u8; TWO_KEYS_INDEX_VALUE];
    let start = Instant::now();
    for i in 0..n {
        let log = LogId(1 + i as u64 % LOGS);
        let lsn = lsn_of((base + i as u64) / LOGS);
        let payload = &payloads.get(i).0;
        let mut value = Vec::with_capacity(TWO_KEYS_VALUE_HEADER + payload.len());
        value.extend_from_slice(&[1u8; TWO_KEYS_VALUE_HEADER]);
        value.extend_from_slice(payload);
        let mut wb = rocksdb::WriteBatch::default();
        wb.put(tagged_key(b'd', log, lsn), &value);
        wb.put(tagged_key(b'c', log, lsn), index_value);
        raw.db.write_opt(wb, &wo)?;
    }
    Ok(per_s(n, start.elapsed()))
}

/// CPU time (ns) of this process's threads except RocksDB's background threads (named
/// `rocksdb:…`), from `/proc/self/task/*/schedstat`; `None` where that is not available.
fn foreground_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        // A thread can end between the listing and the reads: skip it.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.starts_with("rocksdb:") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Runs `f` and adds the foreground CPU it used to `cpu_ns`.
fn with_cpu<T>(cpu_ns: &mut u64, f: impl FnOnce() -> T) -> T {
    let before = foreground_cpu_ns();
    let out = f();
    if let (Some(b), Some(a)) = (before, foreground_cpu_ns()) {
        *cpu_ns += a.saturating_sub(b);
    }
    out
}

fn us_per_record(cpu_ns: u64, records: usize) -> f64 {
    cpu_ns as f64 / 1e3 / records as f64
}

fn logsdb_write_unsynced(
    db: &LogsDb,
    payloads: &Payloads,
    n: usize,
    base: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
    for i in 0..n {
        let log = LogId(1 + i as u64 % LOGS);
        let lsn = lsn_of((base + i as u64) / LOGS);
        if in_flight.len() == IN_FLIGHT {
            wait_half(&mut in_flight)?;
        }
        in_flight.push_back(
            db.submit_store_blocking(vec![record(payloads, log, lsn, i)], Durability::Fast)?,
        );
    }
    for t in in_flight {
        t.wait()?;
    }
    Ok(per_s(n, start.elapsed()))
}

/// Waits for the older half of the stores in flight: the caller then refills in a burst, as a
/// storage node with many connections does, instead of trickling one store per completion.
fn wait_half(in_flight: &mut VecDeque<logsdb::Ticket<()>>) -> anyhow::Result<()> {
    for _ in 0..IN_FLIGHT / 2 {
        in_flight.pop_front().expect("window is full").wait()?;
    }
    Ok(())
}

/// `writers` threads, each writing `per_writer` records to its own logs, one call per record,
/// each call waiting for its fsync. `put(log, lsn, i)` does one synced write. LSNs start at
/// `base` (distinct per phase, so no write ever lands on an existing LSN).
fn synced<F>(writers: usize, per_writer: usize, base: u64, put: F) -> anyhow::Result<f64>
where
    F: Fn(LogId, Lsn, usize) -> anyhow::Result<()> + Sync,
{
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let put = &put;
                s.spawn(move || -> anyhow::Result<()> {
                    for j in 0..per_writer {
                        // Writer w owns logs w+1, w+1+writers, … (within the 100 logs).
                        let slots = (LOGS as usize - w).div_ceil(writers).max(1);
                        let log = LogId(1 + (w + (j % slots) * writers) as u64 % LOGS);
                        put(log, lsn_of(base + (j / slots) as u64), w * per_writer + j)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(per_s(writers * per_writer, start.elapsed()))
}

fn raw_synced(
    raw: &Raw,
    payloads: &Payloads,
    writers: usize,
    per_writer: usize,
    base: u64,
) -> anyhow::Result<f64> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    synced(writers, per_writer, base, |log, lsn, i| {
        raw.db
            .put_opt(raw_key(log, lsn), payloads.get(i).0.clone(), &wo)?;
        Ok(())
    })
}

fn logsdb_synced(
    db: &LogsDb,
    payloads: &Payloads,
    writers: usize,
    per_writer: usize,
    base: u64,
) -> anyhow::Result<f64> {
    synced(writers, per_writer, base, |log, lsn, i| {
        db.store_blocking(vec![record(payloads, log, lsn, i)], Durability::Durable)?;
        Ok(())
    })
}

/// Like [`logsdb_synced`] with `writers` async tasks on a 2-thread tokio runtime instead of
/// threads: how the storage server will drive LogsDB (no thread wakeup per acknowledgement).
fn logsdb_synced_tasks(
    db: &Arc<LogsDb>,
    payloads: &Arc<Payloads>,
    writers: usize,
    per_writer: usize,
    base: u64,
) -> anyhow::Result<f64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .context("start the tokio runtime")?;
    let start = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let (db, payloads) = (db.clone(), payloads.clone());
            tasks.push(tokio::spawn(async move {
                let slots = (LOGS as usize - w).div_ceil(writers).max(1);
                for j in 0..per_writer {
                    let log = LogId(1 + (w + (j % slots) * writers) as u64 % LOGS);
                    let lsn = lsn_of(base + (j / slots) as u64);
                    let rec = record(&payloads, log, lsn, w * per_writer + j);
                    db.store(vec![rec], Durability::Durable).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await.context("writer task panicked")??;
        }
        anyhow::Ok(())
    })?;
    Ok(per_s(writers * per_writer, start.elapsed()))
}

/// Which log record `i` of the read dataset goes to: every other record to log 1.
fn read_dataset_log(i: usize) -> LogId {
    if i.is_multiple_of(2) {
        LogId(1)
    } else {
        LogId(2 + (i as u64 / 2) % (LOGS - 1))
    }
}

/// Loads the read dataset into raw RocksDB and flushes it.
fn raw_load(raw: &Raw, payloads: &Payloads, total: usize) -> anyhow::Result<()> {
    let mut counters = vec![0u64; LOGS as usize + 2];
    let wo = rocksdb::WriteOptions::default();
    for i in 0..total {
        let log = read_dataset_log(i);
        let lsn = lsn_of(counters[log.0 as usize]);
        counters[log.0 as usize] += 1;
        raw.db
            .put_opt(raw_key(log, lsn), payloads.get(i).0.clone(), &wo)?;
    }
    raw.db.flush()?;
    Ok(())
}

/// Reads log 1 from raw RocksDB: one iterator over its key range, values copied out.
fn raw_read_once(raw: &Raw) -> anyhow::Result<(Duration, usize)> {
    let start = Instant::now();
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(raw_key(LogId(2), Lsn::INVALID).to_vec());
    let mut it = raw.db.raw_iterator_opt(opts);
    it.seek(raw_key(LogId(1), Lsn::INVALID));
    let (mut n, mut bytes) = (0, 0);
    while let Some(v) = it.value() {
        let owned = v.to_vec();
        bytes += owned.len();
        n += 1;
        it.next();
    }
    it.status()?;
    anyhow::ensure!(bytes == n * RECORD_BYTES, "raw read returned odd sizes");
    Ok((start.elapsed(), n))
}

/// Loads the read dataset into LogsDB (partitions small enough that the read log spans at
/// least 10 of them) and flushes it.
fn logsdb_load(dir: &Path, payloads: &Payloads, total: usize) -> anyhow::Result<LogsDb> {
    let bytes = (total * (RECORD_BYTES + 120)) as u64;
    let db = open_logsdb(
        dir,
        LogsDbConfig {
            partition_size_bytes: bytes / 16,
            ..config()
        },
    )?;
    let mut counters = vec![0u64; LOGS as usize + 2];
    let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
    for i in 0..total {
        let log = read_dataset_log(i);
        let lsn = lsn_of(counters[log.0 as usize]);
        counters[log.0 as usize] += 1;
        if in_flight.len() == IN_FLIGHT {
            wait_half(&mut in_flight)?;
        }
        in_flight.push_back(
            db.submit_store_blocking(vec![record(payloads, log, lsn, i)], Durability::Fast)?,
        );
    }
    for t in in_flight {
        t.wait()?;
    }
    db.flush_memtables()?;
    Ok(db)
}

/// Reads log 1 through LogsDB's iterator (directory, partition hops, checksums, decoding).
fn logsdb_read_once(db: &LogsDb) -> anyhow::Result<(Duration, usize)> {
    let start = Instant::now();
    let (mut n, mut bytes) = (0, 0);
    for item in db.read(LogId(1), Lsn::OLDEST, Lsn::MAX) {
        match item? {
            ReadItem::Record(r) => {
                bytes += r.payload.len();
                n += 1;
            }
            other => anyhow::bail!("unexpected read item {other:?}"),
        }
    }
    anyhow::ensure!(bytes == n * RECORD_BYTES, "LogsDB read returned odd sizes");
    Ok((start.elapsed(), n))
}

/// Rounds of alternating measurements; the best round of each side counts. Other work on a
/// shared machine only ever slows a round down, so the best round is the least disturbed.
const ROUNDS: usize = 5;

fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0.0, f64::max)
}

pub fn run(args: StorageBenchArgs) -> anyhow::Result<()> {
    let sizes = Sizes::new(args.quick);
    let payloads = Payloads::new();
    let mut config = config();
    if let Some(n) = args.writer_threads {
        config.writer_threads = n;
    }
    let root = tempfile::Builder::new()
        .prefix("tally-bench-storage-")
        .tempdir()?;
    let sub = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let p = root.path().join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };

    eprintln!(
        "write, unsynced: {ROUNDS} rounds of {} records each",
        sizes.unsynced
    );
    let raw = open_raw(&sub("raw-write")?, &config)?;
    let raw_two_keys = open_raw(&sub("raw-two-keys-write")?, &config)?;
    let db = open_logsdb(&sub("logsdb-write")?, config.clone())?;
    let (mut raw_rates, mut raw_two_keys_rates, mut logsdb_rates) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpu, mut raw_two_keys_cpu, mut logsdb_cpu) = (0, 0, 0);
    let before = db.write_stats();
    for round in 0..ROUNDS {
        let base = (round * sizes.unsynced) as u64;
        let n = sizes.unsynced;
        raw_rates.push(with_cpu(&mut raw_cpu, || {
            raw_write_unsynced(&raw, &payloads, n, base)
        })?);
        logsdb_rates.push(with_cpu(&mut logsdb_cpu, || {
            logsdb_write_unsynced(&db, &payloads, n, base)
        })?);
        raw_two_keys_rates.push(with_cpu(&mut raw_two_keys_cpu, || {
            raw_two_keys_write_unsynced(&raw_two_keys, &payloads, n, base)
        })?);
    }
    drop(raw_two_keys);
    let (raw_unsynced, logsdb_unsynced) = (best(&raw_rates), best(&logsdb_rates));
    let raw_two_keys_unsynced = best(&raw_two_keys_rates);
    let unsynced_records = ROUNDS * sizes.unsynced;
    let after = db.write_stats();
    let stores_per_group =
        (after.requests - before.requests) as f64 / (after.groups - before.groups).max(1) as f64;

    eprintln!(
        "write, synced: {SYNC_WRITERS} × {} and 1 × {} records",
        sizes.synced_per_writer, sizes.synced_single
    );
    let raw_synced_64 = raw_synced(
        &raw,
        &payloads,
        SYNC_WRITERS,
        sizes.synced_per_writer,
        1_000_000,
    )?;
    let before = db.write_stats();
    let logsdb_synced_64 = logsdb_synced(
        &db,
        &payloads,
        SYNC_WRITERS,
        sizes.synced_per_writer,
        1_000_000,
    )?;
    let after = db.write_stats();
    let replies_per_fsync = (after.synced_replies - before.synced_replies) as f64
        / (after.wal_syncs - before.wal_syncs).max(1) as f64;
    let raw_synced_1 = raw_synced(&raw, &payloads, 1, sizes.synced_single, 2_000_000)?;
    let logsdb_synced_1 = logsdb_synced(&db, &payloads, 1, sizes.synced_single, 2_000_000)?;
    let (db, payloads) = (Arc::new(db), Arc::new(payloads));
    let logsdb_synced_64_tasks = logsdb_synced_tasks(
        &db,
        &payloads,
        SYNC_WRITERS,
        sizes.synced_per_writer,
        3_000_000,
    )?;
    let db = Arc::into_inner(db).context("no other handle on the LogsDB")?;
    let payloads = Arc::into_inner(payloads).context("no other handle on the payloads")?;
    db.close()?;
    drop(raw);

    eprintln!(
        "sequential read: {} records, half of them in the read log; {ROUNDS} rounds",
        sizes.read_total
    );
    let raw = open_raw(&sub("raw-read")?, &config)?;
    raw_load(&raw, &payloads, sizes.read_total)?;
    let db = logsdb_load(&sub("logsdb-read")?, &payloads, sizes.read_total)?;
    let partitions = db.directory(LogId(1)).len();
    anyhow::ensure!(
        partitions >= 10,
        "the read log spans only {partitions} partitions"
    );
    raw_read_once(&raw)?;
    logsdb_read_once(&db)?;
    let (mut raw_rates, mut logsdb_rates) = (Vec::new(), Vec::new());
    let count = sizes.read_total / 2;
    for _ in 0..ROUNDS {
        // Each round reads the log as often as it takes to fill about a quarter second.
        let (mut d, mut n) = (Duration::ZERO, 0);
        while d < Duration::from_millis(250) {
            let (dd, nn) = raw_read_once(&raw)?;
            anyhow::ensure!(
                nn == count,
                "raw RocksDB read {nn} records, expected {count}"
            );
            (d, n) = (d + dd, n + nn);
        }
        raw_rates.push(per_s(n, d));
        let (mut d, mut n) = (Duration::ZERO, 0);
        while d < Duration::from_millis(250) {
            let (dd, nn) = logsdb_read_once(&db)?;
            anyhow::ensure!(nn == count, "LogsDB read {nn} records, expected {count}");
            (d, n) = (d + dd, n + nn);
        }
        logsdb_rates.push(per_s(n, d));
    }
    let (raw_read_rate, logsdb_read_rate) = (best(&raw_rates), best(&logsdb_rates));
    db.close()?;
    drop(raw);

    let report = Report {
        benchmark: "storage",
        record_bytes: RECORD_BYTES,
        logs: LOGS,
        quick: args.quick,
        logsdb_writer_threads: config.writer_threads,
        write_unsynced_ratio: logsdb_unsynced / raw_unsynced,
        write_synced_ratio: logsdb_synced_64 / raw_synced_64,
        read_ratio: logsdb_read_rate / raw_read_rate,
        raw_write_unsynced_per_s: raw_unsynced,
        logsdb_write_unsynced_per_s: logsdb_unsynced,
        raw_two_keys_write_unsynced_per_s: raw_two_keys_unsynced,
        write_unsynced_ratio_vs_two_keys: logsdb_unsynced / raw_two_keys_unsynced,
        raw_write_unsynced_cpu_us_per_record: us_per_record(raw_cpu, unsynced_records),
        raw_two_keys_write_unsynced_cpu_us_per_record: us_per_record(
            raw_two_keys_cpu,
            unsynced_records,
        ),
        logsdb_write_unsynced_cpu_us_per_record: us_per_record(logsdb_cpu, unsynced_records),
        raw_write_synced_64_per_s: raw_synced_64,
        logsdb_write_synced_64_per_s: logsdb_synced_64,
        raw_write_synced_1_per_s: raw_synced_1,
        logsdb_write_synced_1_per_s: logsdb_synced_1,
        logsdb_group_commit_gain: logsdb_synced_64 / logsdb_synced_1,
        logsdb_write_synced_64_tasks_per_s: logsdb_synced_64_tasks,
        logsdb_group_commit_gain_tasks: logsdb_synced_64_tasks / logsdb_synced_1,
        logsdb_synced_64_stores_per_fsync: replies_per_fsync,
        logsdb_unsynced_stores_per_group: stores_per_group,
        raw_read_per_s: raw_read_rate,
        logsdb_read_per_s: logsdb_read_rate,
        read_records: count,
        read_partitions: partitions,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "workload (1 KiB records)", "raw RocksDB/s", "LogsDB/s", "ratio"
    );
    let row = |name: &str, raw: f64, ldb: f64| {
        println!("{name:<34} {raw:>14.0} {ldb:>14.0} {:>8.2}", ldb / raw)
    };
    row(
        "write, unsynced, 1 caller",
        r.raw_write_unsynced_per_s,
        r.logsdb_write_unsynced_per_s,
    );
    row(
        "write, unsynced, raw with 2 keys",
        r.raw_two_keys_write_unsynced_per_s,
        r.logsdb_write_unsynced_per_s,
    );
    row(
        "write, synced, 64 writers",
        r.raw_write_synced_64_per_s,
        r.logsdb_write_synced_64_per_s,
    );
    row(
        "write, synced, 1 writer",
        r.raw_write_synced_1_per_s,
        r.logsdb_write_synced_1_per_s,
    );
    row(
        &format!("read 1 log, {} partitions", r.read_partitions),
        r.raw_read_per_s,
        r.logsdb_read_per_s,
    );
    println!(
        "LogsDB, synced, 64 async tasks instead of threads: {:.0}/s ({:.1}× the single writer)",
        r.logsdb_write_synced_64_tasks_per_s, r.logsdb_group_commit_gain_tasks
    );
    println!(
        "LogsDB group-commit gain (64 writers ÷ 1 writer, synced): {:.1}×; {:.1} durable stores per WAL fsync",
        r.logsdb_group_commit_gain, r.logsdb_synced_64_stores_per_fsync
    );
    println!(
        "LogsDB unsynced: {:.1} stores per group commit ({} writer threads)",
        r.logsdb_unsynced_stores_per_group, r.logsdb_writer_threads
    );
    println!(
        "unsynced, foreground CPU per record: raw {:.2} µs, raw with 2 keys {:.2} µs, LogsDB {:.2} µs",
        r.raw_write_unsynced_cpu_us_per_record,
        r.raw_two_keys_write_unsynced_cpu_us_per_record,
        r.logsdb_write_unsynced_cpu_us_per_record
    );
}

/// Raw RocksDB on this machine's disk with LogsDB's options: the storage limits the peer
/// comparison (`benches/compare`) reports Tally's figures against. 1 KiB records over 100 logs.
#[derive(Debug, Clone, Serialize)]
pub struct RawRocksDbLimits {
    /// Unsynced `put`s per second, one caller (best of 3 rounds).
    pub put_unsynced_per_s: f64,
    /// Synced `put`s per second with 64 writer threads (RocksDB's write-group batching).
    pub put_synced_64_per_s: f64,
    /// Synced `put`s per second, one writer (one fsync per put).
    pub put_synced_1_per_s: f64,
    /// Sequential read of one log's flushed records, one iterator, values copied out (best of
    /// 3 rounds), in MB/s of values (MB = 10^6 bytes).
    pub seq_read_mb_per_s: f64,
    /// Records in that log.
    pub seq_read_records: usize,
}

/// Measures [`RawRocksDbLimits`] in databases under `dir` (left for the caller to delete).
/// `quick`: the CI-sized record counts of `tally bench storage --quick`.
pub fn raw_rocksdb_limits(dir: &Path, quick: bool) -> anyhow::Result<RawRocksDbLimits> {
    const LIMIT_ROUNDS: usize = 3;
    let sizes = Sizes::new(quick);
    let payloads = Payloads::new();
    let config = config();
    let write_dir = dir.join("raw-write");
    let read_dir = dir.join("raw-read");
    std::fs::create_dir_all(&write_dir)?;
    std::fs::create_dir_all(&read_dir)?;
    let raw = open_raw(&write_dir, &config)?;
    let mut rates = Vec::new();
    for round in 0..LIMIT_ROUNDS {
        let base = (round * sizes.unsynced) as u64;
        rates.push(raw_write_unsynced(&raw, &payloads, sizes.unsynced, base)?);
    }
    let put_unsynced_per_s = best(&rates);
    let put_synced_64_per_s = raw_synced(
        &raw,
        &payloads,
        SYNC_WRITERS,
        sizes.synced_per_writer,
        1_000_000,
    )?;
    let put_synced_1_per_s = raw_synced(&raw, &payloads, 1, sizes.synced_single, 2_000_000)?;
    drop(raw);

    let raw = open_raw(&read_dir, &config)?;
    raw_load(&raw, &payloads, sizes.read_total)?;
    raw_read_once(&raw)?;
    let count = sizes.read_total / 2;
    let mut rates = Vec::new();
    for _ in 0..LIMIT_ROUNDS {
        let (mut d, mut n) = (Duration::ZERO, 0);
        while d < Duration::from_millis(250) {
            let (dd, nn) = raw_read_once(&raw)?;
            anyhow::ensure!(
                nn == count,
                "raw RocksDB read {nn} records, expected {count}"
            );
            (d, n) = (d + dd, n + nn);
        }
        rates.push(per_s(n, d) * RECORD_BYTES as f64 / 1e6);
    }
    Ok(RawRocksDbLimits {
        put_unsynced_per_s,
        put_synced_64_per_s,
        put_synced_1_per_s,
        seq_read_mb_per_s: best(&rates),
        seq_read_records: count,
    })
}
