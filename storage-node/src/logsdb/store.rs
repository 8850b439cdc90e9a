//! [`LogsDb`]: opening (lock, identity, column families, metadata, clean-shutdown marker),
//! the write API (async and blocking, all through the writer threads; plus `remove_copy`, a
//! repair and test tool) and the read API (iterators, point reads, metadata, per-log change
//! watches, `find_time`, `data_size`), and closing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;

use rocksdb::ColumnFamilyDescriptor;
use tally_common::{
    ChecksumMismatch, DataDirId, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags,
    payload_crc32,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::Db;
use super::clock::Clock;
use super::config::{LogsDbConfig, db_options, meta_cf_options, partition_cf_options};
use super::directory::{DirEntry, PartitionId, PartitionInfo};
use super::error::{CorruptKind, LogsDbError};
use super::identity::{DirLock, NodeIdentity};
use super::keys::{self, MetaTag};
use super::log_meta::LogMeta;
use super::notify::LogWatch;
use super::open::{load_meta, reconcile_partitions, repair_lagging_directory};
use super::query::{self, FindTimeAccuracy};
use super::reader::{self, CopysetIterator, LogIterator, ReadItem};
use super::request::{
    Exclusive, Msg, Op, OpResult, PreparedRecord, Request, Shards, Ticket, TrimOutcome, done,
    retention, rolled, sealed, trimmed,
};
use super::retention::RetentionReport;
use super::shared::{META_CF, Shared, View, WriteStats, run_syncer, sync_write_opts};
use super::value::{self, LogRecord};
use super::value_pool::ValuePool;
use super::writer::{Writer, Writers};

const SCHEMA_VERSION: u32 = 1;

/// What opening found about the previous run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// The directory held no database before this open.
    pub fresh: bool,
    /// The previous run did not close cleanly (crash, kill, power loss).
    pub unclean_shutdown: bool,
    /// The previous run acknowledged `fast` (unsynced) writes and did not close cleanly: some
    /// acknowledged records may be missing, so this node's "no record" for its recent range
    /// must be treated as "unknown" until repaired (DESIGN §7). Reported until a run closes
    /// cleanly: the server must act on it (record the range for repair) while it runs.
    pub recent_range_uncertain: bool,
}

/// The local log store of a storage node. See the module docs of `logsdb`.
#[derive(Debug)]
pub struct LogsDb {
    // Field order is drop order: the database closes before the directory lock is released.
    shared: Arc<Shared>,
    /// One queue per writer thread (see `writer`).
    tx: Option<Vec<tokio::sync::mpsc::Sender<Msg>>>,
    /// Held while an exclusive operation is queued to several writers, so that all of them
    /// see exclusive operations in one order.
    exclusive: tokio::sync::Mutex<()>,
    threads: Vec<JoinHandle<()>>,
    report: OpenReport,
    data_dir: DataDirId,
    _lock: DirLock,
}

fn put_meta_synced(db: &Db, key: Vec<u8>, value: &[u8]) -> Result<(), LogsDbError> {
    let cf = db
        .cf_handle(META_CF)
        .expect("meta column family is opened with the database");
    db.put_cf_opt(&cf, key, value, &sync_write_opts())?;
    Ok(())
}

impl LogsDb {
    /// Opens (creating if needed) the LogsDB in `dir` for node `identity`.
    pub fn open(
        dir: impl AsRef<Path>,
        identity: &NodeIdentity,
        config: LogsDbConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<LogsDb, LogsDbError> {
        config.validate()?;
        let dir = dir.as_ref();
        if config.unsafe_controls != Default::default() {
            tracing::warn!(
                dir = %dir.display(),
                controls = ?config.unsafe_controls,
                "LogsDB opened with deliberate safety bugs (chaos negative controls)"
            );
        }
        std::fs::create_dir_all(dir).map_err(|e| LogsDbError::io(dir, e))?;
        let lock = DirLock::acquire(dir)?;
        let db_path: PathBuf = dir.join("db");
        let fresh = !db_path.join("CURRENT").exists();
        let data_dir = identity.check_or_create(dir, !fresh)?;

        let cache = rocksdb::Cache::new_lru_cache(config.block_cache_bytes);
        let opts = db_options(&config);
        let mut partition_opts = partition_cf_options(&config, &cache);
        partition_opts.set_write_buffer_size(staggered_memtable_bytes(
            config.memtable_bytes,
            identity.node_id,
        ));
        let existing = if fresh {
            Vec::new()
        } else {
            Db::list_cf(&opts, &db_path)?
        };
        let mut descriptors = vec![ColumnFamilyDescriptor::new(
            META_CF,
            meta_cf_options(&cache),
        )];
        let mut cf_partitions = Vec::new();
        for name in &existing {
            if let Some(pid) = PartitionId::from_cf_name(name) {
                descriptors.push(ColumnFamilyDescriptor::new(name, partition_opts.clone()));
                cf_partitions.push(pid);
            }
        }
        let db = Db::open_cf_descriptors(&opts, &db_path, descriptors)?;
        let (mut dir_state, logs, run_state, schema, lagging) = load_meta(&db)?;
        match schema {
            None => put_meta_synced(
                &db,
                keys::meta_key(MetaTag::Schema),
                &SCHEMA_VERSION.to_be_bytes(),
            )?,
            Some(SCHEMA_VERSION) => {}
            Some(_) => {
                return Err(LogsDbError::CorruptMeta(CorruptKind::Meta(
                    "unknown schema version",
                )));
            }
        }
        reconcile_partitions(&db, &mut dir_state, &cf_partitions)?;
        repair_lagging_directory(&db, &mut dir_state, &lagging)?;
        if dir_state.partitions.is_empty() {
            let pid = PartitionId(1);
            db.create_cf(pid.cf_name(), &partition_opts)?;
            let created_ms = clock.now_ms();
            put_meta_synced(&db, keys::partition_key(pid), &created_ms.to_be_bytes())?;
            dir_state.partitions.insert(
                pid,
                PartitionInfo {
                    id: pid,
                    created_ms,
                    bytes: 0,
                },
            );
        }
        let (clean, fast_used) = run_state.unwrap_or((true, false));
        let report = OpenReport {
            fresh,
            unclean_shutdown: !fresh && !clean,
            recent_range_uncertain: !fresh && !clean && fast_used,
        };
        if report.unclean_shutdown {
            tracing::warn!(?report, "LogsDB was not closed cleanly");
        }
        // Dirty until a clean close. An uncertain range is carried over, so that a crash of
        // this run too still reports it; a clean close clears it (the server acts on the flag
        // while it runs, e.g. by recording the range for repair).
        put_meta_synced(
            &db,
            keys::meta_key(MetaTag::RunState),
            &[0, u8::from(report.recent_range_uncertain)],
        )?;

        let shared = Arc::new(Shared {
            db,
            config: config.clone(),
            clock,
            view: RwLock::new(View {
                dir: dir_state.clone(),
                logs: logs.clone(),
            }),
            failure: OnceLock::new(),
            partition_opts,
            stats: Default::default(),
            watchers: Default::default(),
            values: Default::default(),
        });
        let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let shards = config.writer_threads;
        let writers = Writers::new(shared.clone(), dir_state, logs, shards);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| LogsDbError::io(dir, e))
        };
        let syncer_shared = shared.clone();
        let mut threads = vec![spawn(
            "logsdb-syncer",
            Box::new(move || run_syncer(syncer_shared, sync_rx)),
        )?];
        let mut txs = Vec::with_capacity(shards);
        for shard in 0..shards {
            let (tx, rx) = tokio::sync::mpsc::channel(config.queue_capacity);
            let writer = Writer::new(writers.clone(), shard, rx, sync_tx.clone());
            threads.push(spawn(
                &format!("logsdb-writer-{shard}"),
                Box::new(move || writer.run()),
            )?);
            txs.push(tx);
        }
        drop(sync_tx);
        Ok(LogsDb {
            shared,
            tx: Some(txs),
            exclusive: tokio::sync::Mutex::new(()),
            threads,
            report,
            data_dir,
            _lock: lock,
        })
    }

    /// What opening found about the previous run.
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// The directory's own id, from its identity file: the server binds it to the node id in
    /// the epoch store (DESIGN §7).
    pub fn data_dir_id(&self) -> DataDirId {
        self.data_dir
    }

    /// Write-path counters since open (group commit: `synced_replies / wal_syncs` replies
    /// share one fsync on average).
    pub fn write_stats(&self) -> WriteStats {
        self.shared.stats.snapshot()
    }

    /// How long the WAL fsyncs of group commit take (a handle on the live histogram).
    pub fn wal_sync_latency(&self) -> tally_common::metrics::Histogram {
        self.shared.stats.wal_sync_latency.clone()
    }

    /// Bytes of record-value buffers waiting in the pool for reuse (tests).
    #[cfg(test)]
    pub(crate) fn pooled_value_bytes(&self) -> usize {
        self.shared.values.held_bytes()
    }

    /// Stops the writers after the queued writes, syncs the WAL and records a clean shutdown.
    pub fn close(mut self) -> Result<(), LogsDbError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LogsDbError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        drop(tx);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.shared.fail("a LogsDB thread panicked".into());
            }
        }
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        self.shared.db.flush_wal(true)?;
        put_meta_synced(&self.shared.db, keys::meta_key(MetaTag::RunState), &[1, 0])
    }

    // ---- writes ----

    /// Validates and encodes records (limits before allocation), in the caller's thread.
    fn prepare(&self, records: Vec<LogRecord>) -> Result<Vec<PreparedRecord>, LogsDbError> {
        let config = &self.shared.config;
        if records.len() > config.max_records_per_write {
            return Err(LogsDbError::TooManyRecords {
                count: records.len(),
                max: config.max_records_per_write,
            });
        }
        // A `LogRecord` and a `PreparedRecord` have the same layout, so this collects into
        // the caller's vector instead of allocating another one per store.
        records
            .into_iter()
            .map(|r| prepare_one(config, &self.shared.values, r))
            .collect()
    }

    fn request(
        &self,
        op: Op,
        durability: Durability,
    ) -> Result<(Request, oneshot::Receiver<Result<OpResult, LogsDbError>>), LogsDbError> {
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        Ok((
            Request {
                op,
                durability,
                reply,
            },
            rx,
        ))
    }

    fn senders(&self) -> Result<&[tokio::sync::mpsc::Sender<Msg>], LogsDbError> {
        self.tx.as_deref().ok_or(LogsDbError::Closed)
    }

    /// The writers `op` goes to: one (queued as a plain request) or several (exclusive).
    fn route(&self, op: &Op) -> Result<Shards, LogsDbError> {
        Ok(op.shards(self.senders()?.len()))
    }

    async fn submit_async<T>(
        &self,
        op: Op,
        durability: Durability,
        map: fn(OpResult) -> T,
    ) -> Result<Ticket<T>, LogsDbError> {
        let shards = self.route(&op)?;
        let global = op.is_global();
        let (req, rx) = self.request(op, durability)?;
        let txs = self.senders()?;
        if let Some(shard) = shards.only().filter(|_| !global) {
            txs[shard]
                .send(Msg::Request(req))
                .await
                .map_err(|_| LogsDbError::Closed)?;
            return Ok(Ticket::new(rx, map));
        }
        // Reserve a slot in every queue first, then queue to all without waiting: a caller
        // cancelled while waiting leaves no writer waiting for the others.
        let _order = self.exclusive.lock().await;
        let mut permits = Vec::with_capacity(shards.len());
        for shard in shards.iter() {
            permits.push(
                txs[shard]
                    .reserve()
                    .await
                    .map_err(|_| LogsDbError::Closed)?,
            );
        }
        let call = Arc::new(Exclusive::new(shards.len(), req));
        for permit in permits {
            permit.send(Msg::Exclusive(call.clone()));
        }
        Ok(Ticket::new(rx, map))
    }

    fn submit_blocking<T>(
        &self,
        op: Op,
        durability: Durability,
        map: fn(OpResult) -> T,
    ) -> Result<Ticket<T>, LogsDbError> {
        let shards = self.route(&op)?;
        let global = op.is_global();
        let (req, rx) = self.request(op, durability)?;
        let txs = self.senders()?;
        // Fast path without entering a blocking context; wait only when the queue is full.
        let send = |tx: &tokio::sync::mpsc::Sender<Msg>, msg: Msg| match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => tx.blocking_send(msg).map_err(|_| LogsDbError::Closed),
            Err(TrySendError::Closed(_)) => Err(LogsDbError::Closed),
        };
        if let Some(shard) = shards.only().filter(|_| !global) {
            send(&txs[shard], Msg::Request(req))?;
            return Ok(Ticket::new(rx, map));
        }
        let _order = match self.exclusive.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.exclusive.blocking_lock(),
        };
        let call = Arc::new(Exclusive::new(shards.len(), req));
        for shard in shards.iter() {
            send(&txs[shard], Msg::Exclusive(call.clone()))?;
        }
        Ok(Ticket::new(rx, map))
    }

    /// Queues a store and returns its ticket without waiting for the acknowledgement, so one
    /// caller can have many stores in flight. Waits only while the queue is full.
    pub async fn submit_store(
        &self,
        records: Vec<LogRecord>,
        durability: Durability,
    ) -> Result<Ticket<()>, LogsDbError> {
        let prepared = self.prepare(records)?;
        self.submit_async(Op::Store(prepared), durability, |_| ())
            .await
    }

    /// Stores records (all or none are accepted; see `preemption`) and waits for the
    /// acknowledgement: after the WAL fsync for `Durable`, after the write for `Fast`. Several
    /// writes to one LSN merge by precedence; records at or below the trim point are dropped.
    pub async fn store(
        &self,
        records: Vec<LogRecord>,
        durability: Durability,
    ) -> Result<(), LogsDbError> {
        self.submit_store(records, durability)
            .await?
            .wait_async()
            .await
    }

    /// Blocking [`LogsDb::submit_store`], for threads outside an async runtime.
    pub fn submit_store_blocking(
        &self,
        records: Vec<LogRecord>,
        durability: Durability,
    ) -> Result<Ticket<()>, LogsDbError> {
        let prepared = self.prepare(records)?;
        self.submit_blocking(Op::Store(prepared), durability, |_| ())
    }

    /// Blocking [`LogsDb::store`].
    pub fn store_blocking(
        &self,
        records: Vec<LogRecord>,
        durability: Durability,
    ) -> Result<(), LogsDbError> {
        self.submit_store_blocking(records, durability)?.wait()
    }

    /// Seals `log` at `epoch` (synced before the acknowledgement). A lower epoch than the
    /// current seal is refused with `Preempted`; an equal one is acknowledged again.
    pub async fn seal(&self, log: LogId, epoch: Epoch) -> Result<Epoch, LogsDbError> {
        self.submit_async(Op::Seal { log, epoch }, Durability::Durable, sealed)
            .await?
            .wait_async()
            .await
    }

    pub fn seal_blocking(&self, log: LogId, epoch: Epoch) -> Result<Epoch, LogsDbError> {
        self.submit_blocking(Op::Seal { log, epoch }, Durability::Durable, sealed)?
            .wait()
    }

    /// Moves the trim point of `log` forward to `lsn`. A stale trim changes nothing and
    /// reports the trim point in force.
    pub async fn trim(&self, log: LogId, lsn: Lsn) -> Result<TrimOutcome, LogsDbError> {
        self.submit_async(Op::Trim { log, lsn }, Durability::Durable, trimmed)
            .await?
            .wait_async()
            .await
    }

    pub fn trim_blocking(&self, log: LogId, lsn: Lsn) -> Result<TrimOutcome, LogsDbError> {
        self.submit_blocking(Op::Trim { log, lsn }, Durability::Durable, trimmed)?
            .wait()
    }

    /// Raises the last released LSN of `log` (never lowers it). Not synced: it is re-learned
    /// from the sequencer's periodic release broadcasts.
    pub async fn set_last_released(&self, log: LogId, lsn: Lsn) -> Result<(), LogsDbError> {
        self.submit_async(Op::SetLastReleased { log, lsn }, Durability::Fast, done)
            .await?
            .wait_async()
            .await
    }

    pub fn set_last_released_blocking(&self, log: LogId, lsn: Lsn) -> Result<(), LogsDbError> {
        self.submit_blocking(Op::SetLastReleased { log, lsn }, Durability::Fast, done)?
            .wait()
    }

    /// Raises the last clean epoch of `log` (synced).
    pub async fn set_last_clean_epoch(&self, log: LogId, epoch: Epoch) -> Result<(), LogsDbError> {
        self.submit_async(
            Op::SetLastCleanEpoch { log, epoch },
            Durability::Durable,
            done,
        )
        .await?
        .wait_async()
        .await
    }

    pub fn set_last_clean_epoch_blocking(
        &self,
        log: LogId,
        epoch: Epoch,
    ) -> Result<(), LogsDbError> {
        self.submit_blocking(
            Op::SetLastCleanEpoch { log, epoch },
            Durability::Durable,
            done,
        )?
        .wait()
    }

    /// Raises the LNG of one epoch of `log` (stores raise it too, from their headers).
    pub async fn set_epoch_lng(
        &self,
        log: LogId,
        epoch: Epoch,
        lng: Esn,
    ) -> Result<(), LogsDbError> {
        self.submit_async(Op::SetEpochLng { log, epoch, lng }, Durability::Fast, done)
            .await?
            .wait_async()
            .await
    }

    pub fn set_epoch_lng_blocking(
        &self,
        log: LogId,
        epoch: Epoch,
        lng: Esn,
    ) -> Result<(), LogsDbError> {
        self.submit_blocking(Op::SetEpochLng { log, epoch, lng }, Durability::Fast, done)?
            .wait()
    }

    /// Deletes the copy of the record at `(log, lsn)` and its copyset-index entry, durably.
    /// A repair and test tool (it makes data loss on purpose): nothing in the normal write or
    /// read path calls it. The partition directory is left as is (its ranges are bounds, not
    /// counts). Removing an LSN this node does not hold changes nothing.
    pub async fn remove_copy(&self, log: LogId, lsn: Lsn) -> Result<(), LogsDbError> {
        self.submit_async(Op::RemoveCopy { log, lsn }, Durability::Durable, done)
            .await?
            .wait_async()
            .await
    }

    /// Removes every copy at `lsns` (as [`LogsDb::remove_copy`] does one), all queued before
    /// any is waited for, so one group commit syncs them together.
    pub async fn remove_copies(&self, log: LogId, lsns: &[Lsn]) -> Result<(), LogsDbError> {
        let mut tickets = Vec::with_capacity(lsns.len());
        for &lsn in lsns {
            tickets.push(
                self.submit_async(Op::RemoveCopy { log, lsn }, Durability::Durable, done)
                    .await?,
            );
        }
        for ticket in tickets {
            ticket.wait_async().await?;
        }
        Ok(())
    }

    pub fn remove_copy_blocking(&self, log: LogId, lsn: Lsn) -> Result<(), LogsDbError> {
        self.submit_blocking(Op::RemoveCopy { log, lsn }, Durability::Durable, done)?
            .wait()
    }

    /// One retention pass: trims logs past their backlog (ms, per log; logs not named keep
    /// everything not trimmed explicitly) and drops partitions with nothing live.
    pub async fn enforce_retention(
        &self,
        backlogs_ms: BTreeMap<LogId, u64>,
    ) -> Result<RetentionReport, LogsDbError> {
        self.submit_async(
            Op::Retention { backlogs_ms },
            Durability::Durable,
            retention,
        )
        .await?
        .wait_async()
        .await
    }

    pub fn enforce_retention_blocking(
        &self,
        backlogs_ms: BTreeMap<LogId, u64>,
    ) -> Result<RetentionReport, LogsDbError> {
        self.submit_blocking(
            Op::Retention { backlogs_ms },
            Durability::Durable,
            retention,
        )?
        .wait()
    }

    /// Starts a new partition now (the age / size / file triggers do it on their own).
    pub fn roll_partition_blocking(&self) -> Result<PartitionId, LogsDbError> {
        self.submit_blocking(Op::Roll, Durability::Durable, rolled)?
            .wait()
    }

    /// Flushes every memtable to SST files (benchmarks, tests, and before a backup). The data
    /// is durable either way once acknowledged; this only changes where reads find it.
    pub fn flush_memtables(&self) -> Result<(), LogsDbError> {
        let db = &self.shared.db;
        let mut names = vec![META_CF.to_owned()];
        names.extend(self.partitions().iter().map(|p| p.id.cf_name()));
        for name in names {
            if let Some(cf) = db.cf_handle(&name) {
                db.flush_cf(&cf)?;
            }
        }
        Ok(())
    }

    // ---- reads (synchronous and short; call them from `spawn_blocking` in async code) ----

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.shared.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The metadata of `log` (defaults when nothing was ever stored for it).
    pub fn log_meta(&self, log: LogId) -> LogMeta {
        self.view().logs.get(&log).cloned().unwrap_or_default()
    }

    /// The last released LSN and the trim point of `log` (cheaper than [`LogsDb::log_meta`]).
    pub fn release_and_trim(&self, log: LogId) -> (Lsn, Lsn) {
        self.view()
            .logs
            .get(&log)
            .map_or((Lsn::INVALID, Lsn::INVALID), |m| {
                (m.last_released, m.trim_point)
            })
    }

    /// Whether this node holds records or metadata of `log`.
    pub fn knows_log(&self, log: LogId) -> bool {
        let view = self.view();
        view.logs.contains_key(&log) || view.dir.entries.contains_key(&log)
    }

    /// Wakes when the last released LSN or the trim point of `log` moves (see [`LogWatch`]).
    pub fn watch_log(&self, log: LogId) -> LogWatch {
        self.shared.watchers.subscribe(log)
    }

    /// Logs with a live [`LogWatch`] (metrics, tests: entries go with their last watch).
    pub fn watched_logs(&self) -> usize {
        self.shared.watchers.len()
    }

    /// The record at `(log, lsn)` above the trim point, if this node holds it: one point
    /// lookup, for readers that chose LSNs from the copyset index.
    pub fn read_one(&self, log: LogId, lsn: Lsn) -> Result<Option<ReadItem>, LogsDbError> {
        // Copied out so the view's lock is not held during the lookup (the writer publishes
        // under it).
        let (entries, trim) = self.entries_and_trim(log);
        reader::read_one(&self.shared.db, &entries, log, trim, lsn)
    }

    /// Records of `log` in `from ..= until`, in LSN order (see [`LogIterator`]).
    pub fn read(&self, log: LogId, from: Lsn, until: Lsn) -> LogIterator<'_> {
        let view = self.view();
        let trim = view
            .logs
            .get(&log)
            .map(|m| m.trim_point)
            .unwrap_or_default();
        LogIterator::new(&self.shared.db, &view.dir, log, trim, from, until)
    }

    /// Copyset-index entries of `log` in `from ..= until` (no payload is read).
    pub fn copysets(&self, log: LogId, from: Lsn, until: Lsn) -> CopysetIterator<'_> {
        let view = self.view();
        let trim = view
            .logs
            .get(&log)
            .map(|m| m.trim_point)
            .unwrap_or_default();
        CopysetIterator::new(&self.shared.db, &view.dir, log, trim, from, until)
    }

    /// The LSN after the last record of `log` older than `timestamp_ms` (see `query`).
    pub fn find_time(
        &self,
        log: LogId,
        timestamp_ms: u64,
        accuracy: FindTimeAccuracy,
    ) -> Result<Lsn, LogsDbError> {
        let (entries, trim) = self.entries_and_trim(log);
        query::find_time(&self.shared.db, &entries, log, trim, timestamp_ms, accuracy)
    }

    /// Estimated bytes of `log` in `from ..= until`.
    pub fn data_size(&self, log: LogId, from: Lsn, until: Lsn) -> u64 {
        let (entries, trim) = self.entries_and_trim(log);
        query::data_size(&entries, trim, from, until)
    }

    fn entries_and_trim(&self, log: LogId) -> (Vec<(PartitionId, DirEntry)>, Lsn) {
        let view = self.view();
        (
            view.dir.entries_of(log),
            view.logs
                .get(&log)
                .map(|m| m.trim_point)
                .unwrap_or_default(),
        )
    }

    /// Every partition, oldest first.
    pub fn partitions(&self) -> Vec<PartitionInfo> {
        self.view().dir.partitions.values().copied().collect()
    }

    /// The directory entries of `log`, in partition order.
    pub fn directory(&self, log: LogId) -> Vec<(PartitionId, DirEntry)> {
        self.view().dir.entries_of(log)
    }

    /// The logs this node holds records or metadata of.
    pub fn logs(&self) -> Vec<LogId> {
        let view = self.view();
        let mut logs: Vec<LogId> = view
            .dir
            .entries
            .keys()
            .chain(view.logs.keys())
            .copied()
            .collect();
        logs.sort_unstable();
        logs.dedup();
        logs
    }
}

/// Validates and encodes one record (see [`LogsDb::prepare`]), into a buffer from `values`.
fn prepare_one(
    config: &LogsDbConfig,
    values: &ValuePool,
    r: LogRecord,
) -> Result<PreparedRecord, LogsDbError> {
    let h = &r.header;
    let (log, lsn) = (h.log, h.lsn);
    let invalid = |reason| LogsDbError::InvalidRecord { log, lsn, reason };
    if log == LogId::INVALID {
        return Err(invalid("log id 0"));
    }
    if !lsn.epoch().is_valid() || lsn.esn() == Esn::INVALID {
        return Err(invalid("LSN with invalid epoch or ESN 0"));
    }
    if !h.flags.is_known() {
        return Err(invalid("unknown flag bits"));
    }
    if r.payload.len() > config.max_payload_bytes {
        return Err(LogsDbError::PayloadTooLarge {
            len: r.payload.len(),
            max: config.max_payload_bytes,
        });
    }
    h.copyset
        .validate()
        .map_err(|source| LogsDbError::Copyset { log, lsn, source })?;
    // One pass over the payload: its crc32 both verifies the client's checksum and seeds the
    // value checksum.
    let crc = payload_crc32(&r.payload);
    if h.flags.contains(RecordFlags::AMEND) {
        if !r.payload.is_empty() {
            return Err(invalid("an amendment carries no payload"));
        }
    } else if crc != h.payload_crc32 {
        let source = ChecksumMismatch {
            expected: h.payload_crc32,
            actual: crc,
        };
        return Err(LogsDbError::PayloadChecksum { log, lsn, source });
    }
    let buf = values.take(value::encoded_len(h.copyset.nodes().len(), r.payload.len()));
    let value = value::encode_new_with_crc(&r, crc, buf);
    Ok(PreparedRecord {
        header: r.header,
        value,
    })
}

impl Drop for LogsDb {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "LogsDB did not close cleanly");
        }
    }
}

/// The memtable size this node's partitions use: the configured size times a factor in
/// 0.75..1.25 chosen by the node id. The nodes of a copyset receive the same records at the same
/// rate; with equal memtables they switch and flush at the same moment, so every copy of a hot
/// log stalls at once (and, where nodes share cores, three flushes compete for them). Different
/// sizes make their flushes drift apart.
///
/// The factor is the fractional part of `node_id × φ` (a golden-ratio sequence): any run of
/// consecutive ids lands spread over the range, never two close together by chance, and a
/// node's size is the same on every start, so tests and benchmarks repeat.
fn staggered_memtable_bytes(configured: usize, node: NodeId) -> usize {
    const PHI_FRACTION: f64 = 0.618_033_988_749_895;
    let fraction = (f64::from(node.0) * PHI_FRACTION).fract();
    let factor = 0.75 + 0.5 * fraction;
    ((configured as f64 * factor) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options RocksDB was opened with, as it wrote them down (the newest OPTIONS file).
    fn options_file(dir: &Path) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("db"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .collect();
        files.sort();
        std::fs::read_to_string(files.last().expect("an OPTIONS file")).unwrap()
    }

    #[test]
    fn sst_writes_are_paced_to_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let _db = LogsDb::open(
            dir.path(),
            &NodeIdentity::new("c", NodeId(1)),
            LogsDbConfig::small_for_tests(),
            Arc::new(super::super::clock::ManualClock::new(1_000)),
        )
        .unwrap();
        let options = options_file(dir.path());
        let line = |l: &str| options.lines().any(|x| x.trim() == l);
        assert!(line("strict_bytes_per_sync=true"), "{options}");
        assert!(
            line(&format!(
                "bytes_per_sync={}",
                super::super::config::SST_BYTES_PER_SYNC
            )),
            "{options}"
        );
    }

    #[test]
    fn memtable_sizes_are_spread_around_the_configured_one() {
        let configured = 64 << 20;
        let size = |id| staggered_memtable_bytes(configured, NodeId(id));
        let sizes: Vec<usize> = (0..1000).map(size).collect();
        assert!(
            sizes
                .iter()
                .all(|&s| s >= configured / 4 * 3 && s < configured / 4 * 5)
        );
        // Any three consecutive ids, a copyset's usual shape, land at least a tenth of the
        // configured size apart from each other.
        for w in sizes.windows(3) {
            let mut w = w.to_vec();
            w.sort();
            assert!(
                w[1] - w[0] > configured / 10 && w[2] - w[1] > configured / 10,
                "{w:?}"
            );
        }
        assert_eq!(staggered_memtable_bytes(1, NodeId(3)), 1);
    }
}
