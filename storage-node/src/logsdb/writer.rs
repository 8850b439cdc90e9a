//! The writer threads and their hand-off to the WAL syncer thread: group commit.
//!
//! Every mutation of LogsDB goes through a bounded queue to a writer thread. Logs are sharded
//! over `writer_threads` writer threads (`log % writer_threads`, see
//! [`super::request::shard_of`]); each owns the metadata and directory entries of its logs
//! ([`ShardState`]) and serializes the mutations of its logs (so the precedence merge and the
//! seal checks are race-free read-modify-writes). A writer takes every request queued for it
//! (up to `max_group_bytes`), applies them to one `WriteBatch`, writes it without fsync,
//! publishes the changed directory and metadata to readers, then acknowledges `fast` requests
//! at once and hands the others to the syncer. RocksDB joins the writers' concurrent batches
//! into one WAL write and inserts them into the memtables in parallel. The syncer takes every
//! hand-off queued, calls one `flush_wal(sync = true)` for all of them and acknowledges them:
//! many batches share one fsync, and the writers keep writing while the syncer waits on the
//! disk. Seals are always acknowledged after the sync.
//!
//! Operations on the partition list (roll, retention) and stores that span the logs of
//! several writers are [`Exclusive`]: queued to every writer involved, run by the last to
//! reach it with every writer's state locked (the others wait), so they see and change all
//! logs at one point of each queue. A writer that finds the newest partition full or old
//! rolls it under the same locks. Every writer keeps a copy of the partition list, changed
//! only under all locks; partition sizes are summed in the readers' view.
//!
//! Record and copyset-index writes of a group are staged and written in key order (see
//! [`Batch`]). Directory entries are persisted in the group's batch when they are created or
//! extended downwards; their upward growth (last LSN, maximum timestamp, bytes), which open can
//! recover from the records, is persisted once per [`DIR_PERSIST_EVERY_GROUPS`] groups and at
//! a clean close, under a per-partition lag mark that makes open repair the partition's
//! entries after a crash (`open::repair_lagging_directory`). Readers always see the exact
//! in-memory directory.
//!
//! After publishing, the writer wakes the [`super::LogWatch`]es of logs whose last released
//! LSN or trim point moved (tailing read streams).
//!
//! Per record the write path allocates as little as it can across threads: a record value is
//! encoded by the caller into a buffer recycled from earlier commits (`value_pool`), the
//! writer encodes each copyset-index value into one buffer it reuses, and a group commit's
//! acknowledgements go out newest first ([`send_replies`]), so a caller waiting for its stores
//! in order wakes once per group rather than once per store.
//!
//! On any write or sync error LogsDB stops acknowledging: every later request fails with
//! `Failed` until the process restarts (DESIGN §7).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{BoundColumnFamily, WriteBatch, WriteOptions};
use tally_common::{Durability, Epoch, LogId, Lsn, RecordFlags, RecordHeader};

use super::Db;
use super::directory::{Directory, PartitionId, PartitionInfo};
use super::error::LogsDbError;
use super::keys::{self, CSI_TAG, DATA_TAG, MetaTag};
use super::log_meta::{LogMeta, preemption};
use super::merge::merge;
use super::request::{
    Exclusive, Msg, Op, OpResult, PreparedRecord, Reply, Request, TrimOutcome, shard_of,
};
use super::retention::{self, RetentionReport};
use super::shared::{Pending, Shared, sync_write_opts};
use super::value;

/// How many groups pass between checks of the newest partition's SST-file count.
const FILE_CHECK_EVERY_GROUPS: u32 = 64;

/// Directory entries that only grew upwards are persisted once per this many groups (and at
/// a clean close); a crash in between is repaired at open (see `keys::MetaTag::DirectoryLag`).
const DIR_PERSIST_EVERY_GROUPS: u32 = 64;

/// Fields of a log's metadata changed in the current batch.
#[derive(Default)]
struct Touched {
    /// Directory entries changed (published to readers).
    dir: BTreeSet<(LogId, PartitionId)>,
    /// Directory entries to persist in this batch (created or extended downwards).
    dir_now: BTreeSet<(LogId, PartitionId)>,
    /// Partitions whose directory entries start lagging behind their records in this batch.
    lag_marks: BTreeSet<PartitionId>,
    meta: BTreeSet<(LogId, MetaTag)>,
    lng: BTreeSet<(LogId, Epoch)>,
    /// Bytes written per partition (added to the readers' partition sizes).
    partitions: BTreeMap<PartitionId, u64>,
}

/// What the current batch does to the copy at one `(log, lsn)`: the latest staged write
/// (later writes to one LSN in one batch are merged into it by precedence) or its removal.
enum Staged {
    /// The record value, and the header its copyset-index entry is encoded from at commit.
    Put {
        pid: PartitionId,
        value: Vec<u8>,
        header: RecordHeader,
    },
    Delete {
        pid: PartitionId,
    },
}

/// One batch being assembled.
///
/// Record and copyset-index writes are staged per `(log, lsn)` and go into the `WriteBatch`
/// only at commit, in key order: every data key of the batch in `(log, lsn)` order, then every
/// copyset-index key in the same order. RocksDB applies a batch to the memtable in batch order
/// and reuses the skiplist position of the previous insert, so sorted inserts are much cheaper
/// than inserts alternating between the data and index halves of the key space (the profile
/// of `tally bench storage` showed the memtable skiplist search as the writer's largest cost).
/// Staging also lets a later write to one LSN in the same batch merge with the staged copy (or
/// see its removal) without a read, and writes each key once per batch.
///
/// An operation that deletes records must stage its deletions here too (see
/// [`Batch::stage_delete`]), never write them to a `WriteBatch` directly: a staged put of the
/// same key would be written after it at commit and bring the record back.
#[derive(Default)]
struct Batch {
    touched: Touched,
    staged: BTreeMap<(LogId, Lsn), Staged>,
    /// Bytes of keys and values staged (sizes the `WriteBatch` at commit).
    staged_bytes: usize,
    fast: Vec<Pending>,
    durable: Vec<Pending>,
    has_fast_store: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.fast.is_empty()
            && self.durable.is_empty()
            && self.staged.is_empty()
            && self.touched.dir.is_empty()
            && self.touched.meta.is_empty()
            && self.touched.lng.is_empty()
    }

    /// Bytes the batch's writes take in a `WriteBatch` (record bytes plus about 64 bytes per
    /// metadata entry and per-entry framing).
    fn capacity(&self) -> usize {
        self.staged_bytes
            + 8 * self.staged.len()
            + 64 * (self.touched.dir.len() + self.touched.meta.len() + self.touched.lng.len())
            + 64
    }

    /// Stages the removal of the copy at `(log, lsn)` in partition `pid` (data key and
    /// copyset-index key), replacing any write of it staged earlier in this batch.
    fn stage_delete(&mut self, pid: PartitionId, log: LogId, lsn: Lsn) {
        self.staged_bytes += 2 * keys::RECORD_KEY_LEN;
        self.staged.insert((log, lsn), Staged::Delete { pid });
    }

    /// Appends the staged record writes to `wb` in key order (data keys, then index keys).
    /// `scratch` holds each index value while it is copied into `wb`.
    fn write_records(
        &self,
        db: &Db,
        wb: &mut WriteBatch,
        scratch: &mut Vec<u8>,
    ) -> Result<(), LogsDbError> {
        let mut cfs: Vec<(PartitionId, Arc<BoundColumnFamily<'_>>)> = Vec::new();
        let mut cf_of = |pid: PartitionId| -> Result<Arc<BoundColumnFamily<'_>>, LogsDbError> {
            if let Some((_, cf)) = cfs.iter().find(|(p, _)| *p == pid) {
                return Ok(cf.clone());
            }
            let cf = db.cf_handle(&pid.cf_name()).ok_or_else(|| {
                LogsDbError::Failed(format!("partition {pid} has no column family"))
            })?;
            cfs.push((pid, cf.clone()));
            Ok(cf)
        };
        for tag in [DATA_TAG, CSI_TAG] {
            for (&(log, lsn), staged) in &self.staged {
                let key = keys::record_key(tag, log, lsn);
                match staged {
                    Staged::Put { pid, value, .. } if tag == DATA_TAG => {
                        wb.put_cf(&cf_of(*pid)?, key, value);
                    }
                    Staged::Put { pid, header, .. } => {
                        value::encode_csi_into(header, scratch);
                        wb.put_cf(&cf_of(*pid)?, key, &scratch[..]);
                    }
                    Staged::Delete { pid } => wb.delete_cf(&cf_of(*pid)?, key),
                }
            }
        }
        Ok(())
    }
}

/// What one writer thread owns: the metadata and directory entries of its logs, a copy of the
/// partition list, and its bookkeeping of lazily persisted directory entries.
pub(crate) struct ShardState {
    dir: Directory,
    logs: HashMap<LogId, LogMeta>,
    /// Whether this writer has recorded (durably) that `fast` writes were acknowledged.
    fast_marked: bool,
    /// Directory entries changed in memory since they were last persisted. Each one only grew
    /// upwards (last LSN, maximum timestamp, bytes), which open can recover from the records.
    dir_lagging: BTreeSet<(LogId, PartitionId)>,
    /// Partitions with a persisted lag mark written by this writer in this run.
    dir_marked: BTreeSet<PartitionId>,
    groups_since_dir_persist: u32,
}

type Guards<'a> = Vec<MutexGuard<'a, ShardState>>;

/// The writer threads' states, shared so that an exclusive operation can lock them all.
pub(crate) struct Writers {
    shared: Arc<Shared>,
    states: Vec<Mutex<ShardState>>,
    /// Writer threads still running; the last one to stop persists the directory.
    running: AtomicUsize,
}

impl Writers {
    /// Splits the loaded directory and metadata over `shards` writer threads.
    pub(crate) fn new(
        shared: Arc<Shared>,
        dir: Directory,
        logs: HashMap<LogId, LogMeta>,
        shards: usize,
    ) -> Arc<Writers> {
        let mut states: Vec<ShardState> = (0..shards)
            .map(|_| ShardState {
                dir: Directory {
                    partitions: dir.partitions.clone(),
                    entries: BTreeMap::new(),
                },
                logs: HashMap::new(),
                fast_marked: false,
                dir_lagging: BTreeSet::new(),
                dir_marked: BTreeSet::new(),
                groups_since_dir_persist: 0,
            })
            .collect();
        for (log, entries) in dir.entries {
            states[shard_of(log, shards)]
                .dir
                .entries
                .insert(log, entries);
        }
        for (log, meta) in logs {
            states[shard_of(log, shards)].logs.insert(log, meta);
        }
        Arc::new(Writers {
            shared,
            states: states.into_iter().map(Mutex::new).collect(),
            running: AtomicUsize::new(shards),
        })
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, ShardState> {
        self.states[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every writer's state, locked in index order (the only order anything locks two in).
    fn lock_all(&self) -> Guards<'_> {
        (0..self.states.len()).map(|i| self.lock(i)).collect()
    }

    /// At a clean close (after every writer thread stopped): persists every lagging directory
    /// entry and deletes this run's lag marks (not synced here: the close syncs the WAL before
    /// it records a clean shutdown).
    fn persist_directory(&self) {
        let shared = &self.shared;
        let mut all = self.lock_all();
        if shared.failure.get().is_some()
            || all
                .iter()
                .all(|st| st.dir_lagging.is_empty() && st.dir_marked.is_empty())
        {
            return;
        }
        let meta_cf = shared.meta_cf();
        let mut wb = WriteBatch::default();
        for st in all.iter() {
            for &(log, pid) in &st.dir_lagging {
                if let Some(e) = st.dir.entry(log, pid) {
                    wb.put_cf(&meta_cf, keys::directory_key(log, pid), e.encode());
                }
            }
            for &pid in &st.dir_marked {
                wb.delete_cf(&meta_cf, keys::directory_lag_key(pid));
            }
        }
        drop(meta_cf);
        match shared.db.write_opt(wb, &WriteOptions::default()) {
            Ok(()) => {
                for st in all.iter_mut() {
                    st.dir_lagging.clear();
                    st.dir_marked.clear();
                }
            }
            Err(e) => shared.fail(format!("persisting the directory at close: {e}")),
        }
    }
}

/// One writer thread.
pub(crate) struct Writer {
    core: Arc<Writers>,
    shard: usize,
    rx: tokio::sync::mpsc::Receiver<Msg>,
    sync_tx: SyncSender<Vec<Pending>>,
    groups_since_file_check: u32,
    bufs: CommitBuffers,
}

/// What a writer thread reuses from one group commit to the next instead of allocating it
/// per group or per record (the callers' threads allocate from the same allocator, and a
/// writer that grows fresh vectors contends with them for its locks).
struct CommitBuffers {
    /// The group being processed (emptied by each group).
    group: Vec<Msg>,
    /// The plain requests of the group between two exclusive operations.
    requests: Vec<Request>,
    /// Each copyset-index value while it is copied into the `WriteBatch`.
    scratch: Vec<u8>,
    write_opts: WriteOptions,
}

impl CommitBuffers {
    fn new() -> CommitBuffers {
        let mut write_opts = WriteOptions::default();
        // When RocksDB inserts the batches of several writers into the memtables in parallel,
        // each batch keeps its own insert position per memtable (as a lone batch does), which
        // its sorted keys (see [`Batch`]) make cheap to reuse.
        write_opts.set_memtable_insert_hint_per_batch(true);
        CommitBuffers {
            group: Vec::new(),
            requests: Vec::new(),
            scratch: Vec::new(),
            write_opts,
        }
    }
}

impl Writer {
    pub(crate) fn new(
        core: Arc<Writers>,
        shard: usize,
        rx: tokio::sync::mpsc::Receiver<Msg>,
        sync_tx: SyncSender<Vec<Pending>>,
    ) -> Writer {
        Writer {
            core,
            shard,
            rx,
            sync_tx,
            groups_since_file_check: 0,
            bufs: CommitBuffers::new(),
        }
    }

    /// Runs until every sender is gone and the queue is drained.
    pub(crate) fn run(mut self) {
        let mut group = std::mem::take(&mut self.bufs.group);
        while let Some(first) = self.rx.blocking_recv() {
            let max_group_bytes = self.core.shared.config.max_group_bytes;
            let mut bytes = first.value_bytes();
            group.push(first);
            while bytes < max_group_bytes {
                match self.rx.try_recv() {
                    Ok(m) => {
                        bytes += m.value_bytes();
                        group.push(m);
                    }
                    Err(_) => break,
                }
            }
            let stats = &self.core.shared.stats;
            stats.groups.fetch_add(1, Ordering::Relaxed);
            let requests = group
                .iter()
                .filter(|m| matches!(m, Msg::Request(_)))
                .count();
            stats.requests.fetch_add(requests as u64, Ordering::Relaxed);
            self.process(&mut group);
        }
        if self.core.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.core.persist_directory();
        }
    }

    /// Processes (and empties) one group: its plain requests in one batch per run between
    /// exclusive operations.
    fn process(&mut self, group: &mut Vec<Msg>) {
        let mut requests = std::mem::take(&mut self.bufs.requests);
        for msg in group.drain(..) {
            match msg {
                Msg::Request(r) => requests.push(r),
                Msg::Exclusive(call) => {
                    self.guarded(|w| w.process_requests(&mut requests));
                    // After a panic in it, the requests it left are dropped (`Closed`).
                    requests.clear();
                    self.exclusive(&call);
                }
            }
        }
        self.guarded(|w| w.process_requests(&mut requests));
        requests.clear();
        self.bufs.requests = requests;
    }

    /// Runs `f`; a panic in it (a bug) stops LogsDB acknowledging, like a write error, instead
    /// of ending this thread: the thread keeps draining its queue (every request then fails
    /// with `Failed`) and keeps taking its part in exclusive operations, which the other
    /// writers wait for. The replies `f` held are dropped, so their callers see `Closed`.
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if outcome.is_err() {
            self.core
                .shared
                .fail(format!("writer thread {} panicked", self.shard));
        }
    }

    /// Stages and commits `group` (emptied) in one batch.
    fn process_requests(&mut self, group: &mut Vec<Request>) {
        if group.is_empty() {
            return;
        }
        let shared = self.core.shared.clone();
        if shared.failure.get().is_some() {
            for r in group.drain(..) {
                let _ = r
                    .reply
                    .send(Err(shared.failed().unwrap_or(LogsDbError::Closed)));
            }
            return;
        }
        // Only data decides when a partition is full or old; metadata never starts one.
        let has_store = group.iter().any(|r| matches!(r.op, Op::Store(_)));
        if has_store && let Err(e) = self.maybe_roll() {
            shared.fail(format!("creating a partition: {e}"));
            return self.process_requests(group);
        }
        let core = self.core.clone();
        let mut st = core.lock(self.shard);
        let mut cfs: HashMap<PartitionId, Arc<BoundColumnFamily<'_>>> = HashMap::new();
        let mut batch = Batch::default();
        for req in group.drain(..) {
            let Request {
                op,
                durability,
                reply,
            } = req;
            match st.stage(&shared, &mut cfs, &mut batch, op, durability) {
                Ok((result, durable)) => {
                    if durable {
                        batch.durable.push((reply, result))
                    } else {
                        batch.fast.push((reply, result))
                    }
                }
                Err(e) => {
                    // A refused store changed nothing. Anything else (a read error, a missing
                    // column family) may have left part of the request in the batch: stop
                    // acknowledging rather than commit half a request.
                    if !matches!(e, LogsDbError::Preempted { .. }) {
                        shared.fail(format!("staging a write: {e}"));
                    }
                    let _ = reply.send(Err(e));
                }
            }
        }
        drop(cfs);
        commit(
            &shared,
            &self.sync_tx,
            &mut self.bufs,
            vec![(&mut *st, batch)],
        );
    }

    /// Takes part in an exclusive operation: waits for the other writers involved; the last
    /// to arrive runs it with every writer's state locked.
    fn exclusive(&mut self, call: &Exclusive) {
        if call.arrive.wait().is_leader() {
            let req = call
                .request
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(req) = req {
                // Whatever happens in it, every writer involved must pass `leave`.
                self.guarded(|w| {
                    let core = w.core.clone();
                    let mut all = core.lock_all();
                    w.run_exclusive(&mut all, req);
                });
            }
        }
        call.leave.wait();
    }

    fn run_exclusive(&mut self, all: &mut Guards<'_>, req: Request) {
        let shared = self.core.shared.clone();
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = shared.failed() {
            let _ = req.reply.send(Err(e));
            return;
        }
        let Request {
            op,
            durability,
            reply,
        } = req;
        let result = match op {
            Op::Roll => roll(&shared, all).map(OpResult::Rolled),
            Op::Retention { backlogs_ms } => {
                retention(&shared, all, &backlogs_ms).map(OpResult::Retention)
            }
            Op::Store(records) => {
                let rolled = match self.roll_due() {
                    Ok(Some(_)) => roll(&shared, all).map(drop),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = rolled {
                    shared.fail(format!("creating a partition: {e}"));
                    let _ = reply.send(Err(shared.failed().unwrap_or(LogsDbError::Closed)));
                    return;
                }
                return store_across(
                    &shared,
                    &self.sync_tx,
                    &mut self.bufs,
                    all,
                    records,
                    durability,
                    reply,
                );
            }
            other => unreachable!("{other:?} is not exclusive"),
        };
        if let Err(e) = &result {
            shared.fail(format!("partition maintenance: {e}"));
        }
        let _ = reply.send(result);
    }

    /// Rolls the newest partition when it is due (see [`Writer::roll_due`]).
    fn maybe_roll(&mut self) -> Result<(), LogsDbError> {
        if let Some(current) = self.roll_due()? {
            let mut all = self.core.lock_all();
            // Another writer may have rolled it while this one waited for the locks.
            if all[0].dir.current() == current {
                roll(&self.core.shared, &mut all)?;
            }
        }
        Ok(())
    }

    /// The newest partition if it is old, full, or has too many files (checked against the
    /// readers' view, where the partition sizes of all writers add up).
    fn roll_due(&mut self) -> Result<Option<PartitionId>, LogsDbError> {
        let shared = &self.core.shared;
        let config = &shared.config;
        let (current, info) = {
            let view = shared.view.read().unwrap_or_else(|p| p.into_inner());
            let current = view.dir.current();
            (current, view.dir.partitions.get(&current).copied())
        };
        let mut should_roll = match info {
            None => true,
            Some(info) => {
                let now = shared.clock.now_ms();
                now.saturating_sub(info.created_ms) >= config.partition_duration_ms
                    || info.bytes >= config.partition_size_bytes
            }
        };
        self.groups_since_file_check += 1;
        if !should_roll && self.groups_since_file_check >= FILE_CHECK_EVERY_GROUPS {
            self.groups_since_file_check = 0;
            if let Some(cf) = shared.db.cf_handle(&current.cf_name()) {
                let files = shared
                    .db
                    .property_int_value_cf(&cf, "rocksdb.num-files-at-level0")?;
                should_roll = files.unwrap_or(0) >= u64::from(config.partition_file_limit);
            }
        }
        Ok(should_roll.then_some(current))
    }
}

impl ShardState {
    fn cf<'a>(
        db: &'a Db,
        cfs: &mut HashMap<PartitionId, Arc<BoundColumnFamily<'a>>>,
        pid: PartitionId,
    ) -> Result<Arc<BoundColumnFamily<'a>>, LogsDbError> {
        if let Some(cf) = cfs.get(&pid) {
            return Ok(cf.clone());
        }
        let cf = db
            .cf_handle(&pid.cf_name())
            .ok_or_else(|| LogsDbError::Failed(format!("partition {pid} has no column family")))?;
        cfs.insert(pid, cf.clone());
        Ok(cf)
    }

    /// Applies one non-exclusive operation to the batch; returns its result and whether its
    /// reply must wait for the WAL sync.
    fn stage<'a>(
        &mut self,
        shared: &'a Shared,
        cfs: &mut HashMap<PartitionId, Arc<BoundColumnFamily<'a>>>,
        batch: &mut Batch,
        op: Op,
        durability: Durability,
    ) -> Result<(OpResult, bool), LogsDbError> {
        let durable = durability == Durability::Durable;
        match op {
            Op::Store(records) => {
                self.stage_store(shared, cfs, batch, records)?;
                if !durable {
                    batch.has_fast_store = true;
                }
                Ok((OpResult::Done, durable))
            }
            Op::Seal { log, epoch } => {
                let meta = self.logs.entry(log).or_default();
                if epoch < meta.seal {
                    return Err(LogsDbError::Preempted {
                        log,
                        seal: meta.seal,
                    });
                }
                if epoch > meta.seal {
                    meta.seal = epoch;
                    batch.touched.meta.insert((log, MetaTag::Seal));
                }
                Ok((OpResult::Sealed(epoch), true))
            }
            Op::Trim { log, lsn } => {
                let meta = self.logs.entry(log).or_default();
                let advanced = lsn > meta.trim_point;
                if advanced {
                    meta.trim_point = lsn;
                    batch.touched.meta.insert((log, MetaTag::TrimPoint));
                }
                Ok((
                    OpResult::Trimmed(TrimOutcome {
                        trim_point: meta.trim_point,
                        advanced,
                    }),
                    durable,
                ))
            }
            Op::SetLastReleased { log, lsn } => {
                let meta = self.logs.entry(log).or_default();
                if lsn > meta.last_released {
                    meta.last_released = lsn;
                    batch.touched.meta.insert((log, MetaTag::LastReleased));
                }
                Ok((OpResult::Done, durable))
            }
            Op::SetLastCleanEpoch { log, epoch } => {
                let meta = self.logs.entry(log).or_default();
                if epoch > meta.last_clean_epoch {
                    meta.last_clean_epoch = epoch;
                    batch.touched.meta.insert((log, MetaTag::LastCleanEpoch));
                }
                Ok((OpResult::Done, durable))
            }
            Op::SetEpochLng { log, epoch, lng } => {
                let meta = self.logs.entry(log).or_default();
                if lng > meta.epoch_lng.get(&epoch).copied().unwrap_or_default() {
                    meta.epoch_lng.insert(epoch, lng);
                    batch.touched.lng.insert((log, epoch));
                }
                Ok((OpResult::Done, durable))
            }
            Op::RemoveCopy { log, lsn } => {
                let (pid, maybe_there) = self.dir.target(log, lsn);
                if maybe_there || batch.staged.contains_key(&(log, lsn)) {
                    batch.stage_delete(pid, log, lsn);
                }
                Ok((OpResult::Done, durable))
            }
            Op::Retention { .. } | Op::Roll => unreachable!("exclusive operations are not staged"),
        }
    }

    fn stage_store<'a>(
        &mut self,
        shared: &'a Shared,
        cfs: &mut HashMap<PartitionId, Arc<BoundColumnFamily<'a>>>,
        batch: &mut Batch,
        records: Vec<PreparedRecord>,
    ) -> Result<(), LogsDbError> {
        // All or nothing: a batch with one preempted record stores none. (The negative control
        // `ignore_seals` skips the check.) A store of one record, the usual case, is checked
        // below, before anything is changed, with the same lookup of its log's metadata.
        let db = &shared.db;
        let check_seals = !shared.config.unsafe_controls.ignore_seals;
        let single = records.len() == 1;
        for r in records.iter().filter(|_| check_seals && !single) {
            if let Some(meta) = self.logs.get(&r.header.log)
                && let Some(seal) = preemption(meta, &r.header)
            {
                return Err(LogsDbError::Preempted {
                    log: r.header.log,
                    seal,
                });
            }
        }
        let mut written = 0;
        for r in records {
            let (log, lsn) = (r.header.log, r.header.lsn);
            let meta = self.logs.entry(log).or_default();
            if check_seals
                && single
                && let Some(seal) = preemption(meta, &r.header)
            {
                return Err(LogsDbError::Preempted { log, seal });
            }
            if !r.header.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY)
                && lsn.epoch().prev() > meta.soft_seal
            {
                meta.soft_seal = lsn.epoch().prev();
                batch.touched.meta.insert((log, MetaTag::SoftSeal));
            }
            if lsn <= meta.trim_point {
                continue; // trimmed already: readers get a trim gap, nothing to keep
            }
            if r.header.lng
                > meta
                    .epoch_lng
                    .get(&lsn.epoch())
                    .copied()
                    .unwrap_or_default()
            {
                meta.epoch_lng.insert(lsn.epoch(), r.header.lng);
                batch.touched.lng.insert((log, lsn.epoch()));
            }
            let (pid, maybe_there) = self.dir.target(log, lsn);
            // The copy this write merges with: staged earlier in this batch (taken out, it is
            // replaced below), removed earlier in this batch (none), or stored before. Only
            // an LSN inside the directory's range may have one: a write staged earlier in this
            // batch extended the range to its LSN, and a removal is only staged inside it.
            let staged = if maybe_there {
                batch.staged.remove(&(log, lsn))
            } else {
                debug_assert!(!batch.staged.contains_key(&(log, lsn)));
                None
            };
            let existing = match staged {
                Some(Staged::Put { value, .. }) => Some(value),
                Some(Staged::Delete { .. }) => None,
                None if maybe_there => {
                    let cf = Self::cf(db, cfs, pid)?;
                    db.get_cf(&cf, keys::record_key(DATA_TAG, log, lsn))?
                }
                None => None,
            };
            let timestamp_ms = r.header.timestamp_ms;
            let (value, header) = match existing {
                None => (r.value, r.header),
                Some(old) => {
                    let incoming = value::decode(log, lsn, &r.value)
                        .map_err(|kind| LogsDbError::Corrupt { log, lsn, kind })?;
                    let old = match value::decode(log, lsn, &old) {
                        Ok(v) => Some(v),
                        Err(kind) => {
                            tracing::warn!(log = log.0, %lsn, %kind, "overwriting a corrupt stored copy");
                            None
                        }
                    };
                    let merged = merge(old, incoming);
                    (value::encode(&merged), merged.record.header)
                }
            };
            let csi_len = value::csi_encoded_len(header.copyset.nodes().len());
            let bytes = 2 * keys::RECORD_KEY_LEN + value.len() + csi_len;
            let persist_now = self
                .dir
                .record_write(log, pid, lsn, timestamp_ms, bytes as u64);
            if persist_now {
                batch.touched.dir_now.insert((log, pid));
            } else if !batch.touched.dir_now.contains(&(log, pid)) {
                self.dir_lagging.insert((log, pid));
                if !self.dir_marked.contains(&pid) {
                    batch.touched.lag_marks.insert(pid);
                }
            }
            batch.touched.dir.insert((log, pid));
            *batch.touched.partitions.entry(pid).or_default() += bytes as u64;
            batch.staged_bytes += bytes;
            batch
                .staged
                .insert((log, lsn), Staged::Put { pid, value, header });
            written += 1;
        }
        shared.stats.records.fetch_add(written, Ordering::Relaxed);
        Ok(())
    }

    /// Adds the batch's directory entries, lag marks and metadata to `wb` (its records are
    /// added by [`Batch::write_records`]).
    fn write_meta(
        &mut self,
        meta_cf: &Arc<BoundColumnFamily<'_>>,
        batch: &mut Batch,
        wb: &mut WriteBatch,
    ) {
        // Directory entries: those that must be persisted now, or every lagging one when a
        // periodic persist is due; and the lag marks of partitions that start lagging.
        self.groups_since_dir_persist += 1;
        if self.groups_since_dir_persist >= DIR_PERSIST_EVERY_GROUPS {
            self.groups_since_dir_persist = 0;
            let lagging = std::mem::take(&mut self.dir_lagging);
            batch.touched.dir_now.extend(lagging);
        }
        for &(log, pid) in &batch.touched.dir_now {
            self.dir_lagging.remove(&(log, pid));
            if let Some(e) = self.dir.entry(log, pid) {
                wb.put_cf(meta_cf, keys::directory_key(log, pid), e.encode());
            }
        }
        for &pid in &batch.touched.lag_marks {
            wb.put_cf(meta_cf, keys::directory_lag_key(pid), []);
        }
        for &(log, tag) in &batch.touched.meta {
            let m = self.logs.get(&log).cloned().unwrap_or_default();
            let v: Vec<u8> = match tag {
                MetaTag::TrimPoint => m.trim_point.0.to_be_bytes().to_vec(),
                MetaTag::Seal => m.seal.0.to_be_bytes().to_vec(),
                MetaTag::SoftSeal => m.soft_seal.0.to_be_bytes().to_vec(),
                MetaTag::LastReleased => m.last_released.0.to_be_bytes().to_vec(),
                MetaTag::LastCleanEpoch => m.last_clean_epoch.0.to_be_bytes().to_vec(),
                _ => continue,
            };
            wb.put_cf(meta_cf, keys::log_key(tag, log), v);
        }
        for &(log, epoch) in &batch.touched.lng {
            let lng = self
                .logs
                .get(&log)
                .and_then(|m| m.epoch_lng.get(&epoch).copied())
                .unwrap_or_default();
            wb.put_cf(
                meta_cf,
                keys::epoch_lng_key(log, epoch),
                lng.0.to_be_bytes(),
            );
        }
    }

    fn publish(&self, shared: &Shared, touched: &Touched) {
        let mut view = shared.view.write().unwrap_or_else(|p| p.into_inner());
        for &(log, pid) in &touched.dir {
            view.dir.sync_entry(&self.dir, log, pid);
        }
        for (pid, bytes) in &touched.partitions {
            if let Some(p) = view.dir.partitions.get_mut(pid) {
                p.bytes = p.bytes.saturating_add(*bytes);
            }
        }
        let logs: BTreeSet<LogId> = touched
            .meta
            .iter()
            .map(|(l, _)| *l)
            .chain(touched.lng.iter().map(|(l, _)| *l))
            .collect();
        for log in logs {
            if let Some(m) = self.logs.get(&log) {
                view.logs.insert(log, m.clone());
            }
        }
        drop(view);
        // Tailing readers wait for these two (after the change is visible to them).
        shared.watchers.notify(
            touched
                .meta
                .iter()
                .filter(|(_, tag)| matches!(tag, MetaTag::LastReleased | MetaTag::TrimPoint))
                .map(|(log, _)| *log),
        );
    }
}

/// Writes the batches of one or more writers (several only for a store spanning writers) in
/// one `WriteBatch`, publishes them to readers, and acknowledges (or hands to the syncer).
fn commit(
    shared: &Shared,
    sync_tx: &SyncSender<Vec<Pending>>,
    bufs: &mut CommitBuffers,
    mut parts: Vec<(&mut ShardState, Batch)>,
) {
    parts.retain(|(_, b)| !b.is_empty());
    if parts.is_empty() {
        return;
    }
    let fail_all = |parts: Vec<(&mut ShardState, Batch)>, more: Vec<Pending>, msg: String| {
        let replies = parts
            .into_iter()
            .flat_map(|(_, b)| b.fast.into_iter().chain(b.durable))
            .chain(more);
        for (reply, _) in replies {
            let _ = reply.send(Err(LogsDbError::Failed(msg.clone())));
        }
    };
    if let Some(msg) = shared.failure.get() {
        return fail_all(parts, Vec::new(), msg.clone());
    }
    let capacity = parts.iter().map(|(_, b)| b.capacity()).sum();
    let mut wb = WriteBatch::with_capacity_bytes(capacity);
    for (_, batch) in &parts {
        if let Err(e) = batch.write_records(&shared.db, &mut wb, &mut bufs.scratch) {
            let msg = format!("writing staged records: {e}");
            shared.fail(msg.clone());
            return fail_all(parts, Vec::new(), msg);
        }
    }
    // The `WriteBatch` holds copies of the record values now: their buffers go back to the
    // callers' pool (see `value_pool`).
    shared.values.give_back(
        parts
            .iter_mut()
            .flat_map(|(_, b)| std::mem::take(&mut b.staged).into_values())
            .filter_map(|staged| match staged {
                Staged::Put { value, .. } => Some(value),
                Staged::Delete { .. } => None,
            }),
    );
    let meta_cf = shared.meta_cf();
    let mut fast = Vec::new();
    let mut durable = Vec::new();
    let mut mark_fast = false;
    for (st, batch) in parts.iter_mut() {
        st.write_meta(&meta_cf, batch, &mut wb);
        if batch.has_fast_store && !st.fast_marked {
            st.fast_marked = true;
            mark_fast = true;
        }
        fast.append(&mut batch.fast);
        durable.append(&mut batch.durable);
    }
    if mark_fast {
        // An unclean shutdown may now lose acknowledged `fast` writes: say so durably
        // before acknowledging the first one.
        wb.put_cf(&meta_cf, keys::meta_key(MetaTag::RunState), [0u8, 1u8]);
        durable.append(&mut fast);
    }
    drop(meta_cf);
    if let Err(e) = shared.db.write_opt(wb, &bufs.write_opts) {
        let msg = format!("write: {e}");
        shared.fail(msg.clone());
        fast.append(&mut durable);
        return fail_all(parts, fast, msg);
    }
    for (st, batch) in &mut parts {
        st.dir_marked
            .extend(batch.touched.lag_marks.iter().copied());
        st.publish(shared, &batch.touched);
    }
    send_replies(fast);
    if !durable.is_empty() && sync_tx.send(durable).is_err() {
        shared.fail("the WAL syncer thread is gone".into());
    }
}

/// Acknowledges the operations of one commit, newest first. A caller with several stores in
/// flight usually waits for them in the order it queued them, so it sleeps on the oldest:
/// acknowledged last, that one wakes it once, to find the others done. Acknowledged oldest
/// first, it woke the caller at once, which then raced the rest of the acknowledgements and
/// went back to sleep on the next one not sent yet, a thread wake-up per store it overtook
/// (wake-ups were a tenth of the writers' and the caller's CPU in `tally bench storage`).
/// All of them are committed already, so their order says nothing about durability.
pub(crate) fn send_replies(replies: Vec<Pending>) {
    for (reply, result) in replies.into_iter().rev() {
        let _ = reply.send(Ok(result));
    }
}

/// A store whose records belong to several writers, run with all of them paused: all or
/// nothing (a preempted record refuses the whole store), one `WriteBatch`.
fn store_across(
    shared: &Shared,
    sync_tx: &SyncSender<Vec<Pending>>,
    bufs: &mut CommitBuffers,
    all: &mut Guards<'_>,
    records: Vec<PreparedRecord>,
    durability: Durability,
    reply: Reply,
) {
    let shards = all.len();
    if !shared.config.unsafe_controls.ignore_seals {
        for r in &records {
            let log = r.header.log;
            if let Some(meta) = all[shard_of(log, shards)].logs.get(&log)
                && let Some(seal) = preemption(meta, &r.header)
            {
                let _ = reply.send(Err(LogsDbError::Preempted { log, seal }));
                return;
            }
        }
    }
    let mut by_shard: BTreeMap<usize, Vec<PreparedRecord>> = BTreeMap::new();
    for r in records {
        by_shard
            .entry(shard_of(r.header.log, shards))
            .or_default()
            .push(r);
    }
    let durable = durability == Durability::Durable;
    let mut batches: BTreeMap<usize, Batch> = BTreeMap::new();
    for (shard, records) in by_shard {
        let mut cfs = HashMap::new();
        let mut batch = Batch::default();
        if let Err(e) = all[shard].stage_store(shared, &mut cfs, &mut batch, records) {
            shared.fail(format!("staging a write: {e}"));
            let _ = reply.send(Err(e));
            return;
        }
        batch.has_fast_store = !durable;
        batches.insert(shard, batch);
    }
    let mut reply = Some((reply, OpResult::Done));
    let parts: Vec<(&mut ShardState, Batch)> = all
        .iter_mut()
        .enumerate()
        .filter_map(|(i, st)| {
            let mut batch = batches.remove(&i)?;
            if let Some(r) = reply.take() {
                if durable {
                    batch.durable.push(r);
                } else {
                    batch.fast.push(r);
                }
            }
            Some((&mut **st, batch))
        })
        .collect();
    commit(shared, sync_tx, bufs, parts);
}

/// Creates the next partition and makes it the newest (every writer's state locked).
fn roll(shared: &Shared, all: &mut Guards<'_>) -> Result<PartitionId, LogsDbError> {
    let pid = PartitionId(all[0].dir.current().0 + 1);
    shared.db.create_cf(pid.cf_name(), &shared.partition_opts)?;
    let created_ms = shared.clock.now_ms();
    shared.db.put_cf_opt(
        &shared.meta_cf(),
        keys::partition_key(pid),
        created_ms.to_be_bytes(),
        &sync_write_opts(),
    )?;
    let info = PartitionInfo {
        id: pid,
        created_ms,
        bytes: 0,
    };
    for st in all.iter_mut() {
        st.dir.partitions.insert(pid, info);
    }
    shared
        .view
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .dir
        .partitions
        .insert(pid, info);
    tracing::debug!(partition = %pid, "new partition");
    Ok(pid)
}

/// Applies time-based retention and drops dead partitions (every writer's state locked).
fn retention(
    shared: &Shared,
    all: &mut Guards<'_>,
    backlogs_ms: &BTreeMap<LogId, u64>,
) -> Result<RetentionReport, LogsDbError> {
    let shards = all.len();
    // The whole directory: the partition list with every writer's bytes (the view's) and
    // every writer's entries (each log's are in its writer's state only).
    let merged = Directory {
        partitions: shared
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .dir
            .partitions
            .clone(),
        entries: all
            .iter()
            .flat_map(|st| st.dir.entries.iter().map(|(l, m)| (*l, m.clone())))
            .collect(),
    };
    let logs: HashMap<LogId, LogMeta> = all
        .iter()
        .flat_map(|st| st.logs.iter().map(|(l, m)| (*l, m.clone())))
        .collect();
    let report = retention::plan(&merged, &logs, backlogs_ms, shared.clock.now_ms());
    if report.trimmed.is_empty() && report.dropped.is_empty() {
        return Ok(report);
    }
    let meta_cf = shared.meta_cf();
    let mut wb = WriteBatch::default();
    for &(log, trim) in &report.trimmed {
        wb.put_cf(
            &meta_cf,
            keys::log_key(MetaTag::TrimPoint, log),
            trim.0.to_be_bytes(),
        );
    }
    for &pid in &report.dropped {
        wb.delete_cf(&meta_cf, keys::partition_key(pid));
        wb.delete_cf(&meta_cf, keys::directory_lag_key(pid));
        for (log, m) in &merged.entries {
            if m.contains_key(&pid) {
                wb.delete_cf(&meta_cf, keys::directory_key(*log, pid));
            }
        }
    }
    // Trim points must be durable before the records below them disappear.
    shared.db.write_opt(wb, &sync_write_opts())?;
    drop(meta_cf);
    for &(log, trim) in &report.trimmed {
        all[shard_of(log, shards)]
            .logs
            .entry(log)
            .or_default()
            .trim_point = trim;
    }
    {
        let mut view = shared.view.write().unwrap_or_else(|p| p.into_inner());
        for &(log, _) in &report.trimmed {
            view.logs
                .insert(log, all[shard_of(log, shards)].logs[&log].clone());
        }
        for &pid in &report.dropped {
            view.dir.remove_partition(pid);
        }
    }
    shared
        .watchers
        .notify(report.trimmed.iter().map(|(log, _)| *log));
    for &pid in &report.dropped {
        for st in all.iter_mut() {
            st.dir.remove_partition(pid);
            st.dir_lagging.retain(|&(_, p)| p != pid);
            st.dir_marked.remove(&pid);
        }
        shared.db.drop_cf(&pid.cf_name())?;
        tracing::info!(partition = %pid, "dropped partition");
    }
    Ok(report)
}
