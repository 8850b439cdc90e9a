//! The single writer thread and its hand-off to the WAL syncer thread: group commit.
//!
//! Every mutation of LogsDB goes through one bounded queue to one writer thread, which
//! serializes them (so the precedence merge and the seal checks are race-free read-modify-
//! writes). The writer takes every request queued (up to `max_group_bytes`), applies them to
//! one `WriteBatch`, writes it without fsync, publishes the changed directory and metadata to
//! readers, then acknowledges `fast` requests at once and hands the others to the syncer. The
//! syncer takes every hand-off queued, calls one `flush_wal(sync = true)` for all of them and
//! acknowledges them: many batches share one fsync, and the writer keeps writing while the
//! syncer waits on the disk. Seals are always acknowledged after the sync.
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
//! On any write or sync error LogsDB stops acknowledging: every later request fails with
//! `Failed` until the process restarts (DESIGN §7).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use rocksdb::{BoundColumnFamily, WriteBatch, WriteOptions};
use tally_common::{Durability, Epoch, LogId, Lsn, RecordFlags};

use super::Db;
use super::directory::{Directory, PartitionId, PartitionInfo};
use super::error::LogsDbError;
use super::keys::{self, CSI_TAG, DATA_TAG, MetaTag};
use super::log_meta::{LogMeta, preemption};
use super::merge::merge;
use super::request::{Op, OpResult, PreparedRecord, Request, TrimOutcome};
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
    partitions: BTreeSet<PartitionId>,
}

/// What the current batch does to the copy at one `(log, lsn)`: the latest staged write
/// (later writes to one LSN in one batch are merged into it by precedence) or its removal.
enum Staged {
    Put {
        pid: PartitionId,
        value: Vec<u8>,
        csi: Vec<u8>,
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
    /// Stages the removal of the copy at `(log, lsn)` in partition `pid` (data key and
    /// copyset-index key), replacing any write of it staged earlier in this batch.
    fn stage_delete(&mut self, pid: PartitionId, log: LogId, lsn: Lsn) {
        self.staged_bytes += 2 * keys::RECORD_KEY_LEN;
        self.staged.insert((log, lsn), Staged::Delete { pid });
    }

    /// Appends the staged record writes to `wb` in key order (data keys, then index keys).
    fn write_records(&self, db: &Db, wb: &mut WriteBatch) -> Result<(), LogsDbError> {
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
                    Staged::Put { pid, value, csi } => {
                        let v = if tag == DATA_TAG { value } else { csi };
                        wb.put_cf(&cf_of(*pid)?, key, v);
                    }
                    Staged::Delete { pid } => wb.delete_cf(&cf_of(*pid)?, key),
                }
            }
        }
        Ok(())
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: tokio::sync::mpsc::Receiver<Request>,
    sync_tx: SyncSender<Vec<Pending>>,
    dir: Directory,
    logs: HashMap<LogId, LogMeta>,
    fast_marked: bool,
    groups_since_file_check: u32,
    /// Directory entries changed in memory since they were last persisted. Each one only grew
    /// upwards (last LSN, maximum timestamp, bytes), which open can recover from the records.
    dir_lagging: BTreeSet<(LogId, PartitionId)>,
    /// Partitions with a persisted lag mark written by this run.
    dir_marked: BTreeSet<PartitionId>,
    groups_since_dir_persist: u32,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: tokio::sync::mpsc::Receiver<Request>,
        sync_tx: SyncSender<Vec<Pending>>,
        dir: Directory,
        logs: HashMap<LogId, LogMeta>,
    ) -> Writer {
        Writer {
            shared,
            rx,
            sync_tx,
            dir,
            logs,
            fast_marked: false,
            groups_since_file_check: 0,
            dir_lagging: BTreeSet::new(),
            dir_marked: BTreeSet::new(),
            groups_since_dir_persist: 0,
        }
    }

    /// Runs until every sender is gone and the queue is drained.
    pub(crate) fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut bytes = first.op.value_bytes();
            let mut group = vec![first];
            while bytes < self.shared.config.max_group_bytes {
                match self.rx.try_recv() {
                    Ok(r) => {
                        bytes += r.op.value_bytes();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.shared.stats.groups.fetch_add(1, Ordering::Relaxed);
            self.shared
                .stats
                .requests
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            self.process(group);
        }
        self.persist_directory();
    }

    /// At a clean close: persists every lagging directory entry and deletes this run's lag
    /// marks (not synced here: the close syncs the WAL before it records a clean shutdown).
    fn persist_directory(&mut self) {
        if self.shared.failure.get().is_some()
            || (self.dir_lagging.is_empty() && self.dir_marked.is_empty())
        {
            return;
        }
        let shared = self.shared.clone();
        let meta_cf = shared.meta_cf();
        let mut wb = WriteBatch::default();
        for &(log, pid) in &self.dir_lagging {
            if let Some(e) = self.dir.entry(log, pid) {
                wb.put_cf(&meta_cf, keys::directory_key(log, pid), e.encode());
            }
        }
        for &pid in &self.dir_marked {
            wb.delete_cf(&meta_cf, keys::directory_lag_key(pid));
        }
        drop(meta_cf);
        match shared.db.write_opt(wb, &WriteOptions::default()) {
            Ok(()) => {
                self.dir_lagging.clear();
                self.dir_marked.clear();
            }
            Err(e) => shared.fail(format!("persisting the directory at close: {e}")),
        }
    }

    fn process(&mut self, group: Vec<Request>) {
        if self.shared.failure.get().is_some() {
            for r in group {
                let _ = r
                    .reply
                    .send(Err(self.shared.failed().unwrap_or(LogsDbError::Closed)));
            }
            return;
        }
        // Only data decides when a partition is full or old; metadata never starts one.
        let has_store = group.iter().any(|r| matches!(r.op, Op::Store(_)));
        if has_store && let Err(e) = self.maybe_roll() {
            self.shared.fail(format!("creating a partition: {e}"));
            return self.process(group);
        }
        let shared = self.shared.clone();
        let mut cfs: HashMap<PartitionId, Arc<BoundColumnFamily<'_>>> = HashMap::new();
        let mut batch = Batch::default();
        for req in group {
            if req.op.is_barrier() {
                self.commit(std::mem::take(&mut batch));
                cfs.clear();
                self.barrier(req);
                continue;
            }
            let Request {
                op,
                durability,
                reply,
            } = req;
            match self.stage(&shared.db, &mut cfs, &mut batch, op, durability) {
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
                        self.shared.fail(format!("staging a write: {e}"));
                    }
                    let _ = reply.send(Err(e));
                }
            }
        }
        drop(cfs);
        self.commit(batch);
    }

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

    /// Applies one non-barrier operation to the batch; returns its result and whether its
    /// reply must wait for the WAL sync.
    fn stage<'a>(
        &mut self,
        db: &'a Db,
        cfs: &mut HashMap<PartitionId, Arc<BoundColumnFamily<'a>>>,
        batch: &mut Batch,
        op: Op,
        durability: Durability,
    ) -> Result<(OpResult, bool), LogsDbError> {
        let durable = durability == Durability::Durable;
        match op {
            Op::Store(records) => {
                self.stage_store(db, cfs, batch, records)?;
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
            Op::Retention { .. } | Op::Roll => unreachable!("barriers are not staged"),
        }
    }

    fn stage_store<'a>(
        &mut self,
        db: &'a Db,
        cfs: &mut HashMap<PartitionId, Arc<BoundColumnFamily<'a>>>,
        batch: &mut Batch,
        records: Vec<PreparedRecord>,
    ) -> Result<(), LogsDbError> {
        // All or nothing: a batch with one preempted record stores none. (The negative control
        // `ignore_seals` skips the check.)
        let check_seals = !self.shared.config.unsafe_controls.ignore_seals;
        for r in records.iter().filter(|_| check_seals) {
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
            // replaced below), removed earlier in this batch (none), or stored before.
            let existing = match batch.staged.remove(&(log, lsn)) {
                Some(Staged::Put { value, .. }) => Some(value),
                Some(Staged::Delete { .. }) => None,
                None if maybe_there => {
                    let cf = Self::cf(db, cfs, pid)?;
                    db.get_cf(&cf, keys::record_key(DATA_TAG, log, lsn))?
                }
                None => None,
            };
            let (value, csi) = match existing {
                None => (r.value, r.csi),
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
                    (
                        value::encode(&merged),
                        value::encode_csi(&merged.record.header),
                    )
                }
            };
            let bytes = 2 * keys::RECORD_KEY_LEN + value.len() + csi.len();
            let persist_now =
                self.dir
                    .record_write(log, pid, lsn, r.header.timestamp_ms, bytes as u64);
            if persist_now {
                batch.touched.dir_now.insert((log, pid));
            } else if !batch.touched.dir_now.contains(&(log, pid)) {
                self.dir_lagging.insert((log, pid));
                if !self.dir_marked.contains(&pid) {
                    batch.touched.lag_marks.insert(pid);
                }
            }
            batch.touched.dir.insert((log, pid));
            batch.touched.partitions.insert(pid);
            batch.staged_bytes += bytes;
            batch
                .staged
                .insert((log, lsn), Staged::Put { pid, value, csi });
            written += 1;
        }
        self.shared
            .stats
            .records
            .fetch_add(written, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the batch, publishes it to readers, and acknowledges (or hands to the syncer).
    fn commit(&mut self, mut batch: Batch) {
        let touched = &batch.touched;
        if batch.fast.is_empty()
            && batch.durable.is_empty()
            && batch.staged.is_empty()
            && touched.dir.is_empty()
            && touched.meta.is_empty()
            && touched.lng.is_empty()
        {
            return;
        }
        let shared = self.shared.clone();
        if shared.failure.get().is_some() {
            for (reply, _) in batch.fast.into_iter().chain(batch.durable) {
                let _ = reply.send(Err(shared.failed().unwrap_or(LogsDbError::Closed)));
            }
            return;
        }
        // Record bytes plus about 64 bytes per metadata entry and per-entry framing.
        let capacity = batch.staged_bytes
            + 8 * batch.staged.len()
            + 64 * (batch.touched.dir.len() + batch.touched.meta.len() + batch.touched.lng.len())
            + 64;
        let mut wb = WriteBatch::with_capacity_bytes(capacity);
        if let Err(e) = batch.write_records(&shared.db, &mut wb) {
            let msg = format!("writing staged records: {e}");
            shared.fail(msg.clone());
            for (reply, _) in batch.fast.into_iter().chain(batch.durable) {
                let _ = reply.send(Err(LogsDbError::Failed(msg.clone())));
            }
            return;
        }
        let meta_cf = shared.meta_cf();
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
                wb.put_cf(&meta_cf, keys::directory_key(log, pid), e.encode());
            }
        }
        for &pid in &batch.touched.lag_marks {
            wb.put_cf(&meta_cf, keys::directory_lag_key(pid), []);
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
            wb.put_cf(&meta_cf, keys::log_key(tag, log), v);
        }
        for &(log, epoch) in &batch.touched.lng {
            let lng = self
                .logs
                .get(&log)
                .and_then(|m| m.epoch_lng.get(&epoch).copied())
                .unwrap_or_default();
            wb.put_cf(
                &meta_cf,
                keys::epoch_lng_key(log, epoch),
                lng.0.to_be_bytes(),
            );
        }
        let mut durable = std::mem::take(&mut batch.durable);
        if batch.has_fast_store && !self.fast_marked {
            // An unclean shutdown may now lose acknowledged `fast` writes: say so durably
            // before acknowledging the first one.
            wb.put_cf(&meta_cf, keys::meta_key(MetaTag::RunState), [0u8, 1u8]);
            durable.append(&mut batch.fast);
            self.fast_marked = true;
        }
        drop(meta_cf);
        if let Err(e) = shared.db.write_opt(wb, &WriteOptions::default()) {
            shared.fail(format!("write: {e}"));
            for (reply, _) in batch.fast.into_iter().chain(durable) {
                let _ = reply.send(Err(LogsDbError::Failed(format!("write: {e}"))));
            }
            return;
        }
        self.dir_marked
            .extend(batch.touched.lag_marks.iter().copied());
        self.publish(&batch.touched);
        for (reply, result) in batch.fast {
            let _ = reply.send(Ok(result));
        }
        if !durable.is_empty() && self.sync_tx.send(durable).is_err() {
            shared.fail("the WAL syncer thread is gone".into());
        }
    }

    fn publish(&self, touched: &Touched) {
        let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
        for &(log, pid) in &touched.dir {
            view.dir.sync_entry(&self.dir, log, pid);
        }
        for pid in &touched.partitions {
            if let Some(p) = self.dir.partitions.get(pid) {
                view.dir.partitions.insert(*pid, *p);
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
        self.shared.watchers.notify(
            touched
                .meta
                .iter()
                .filter(|(_, tag)| matches!(tag, MetaTag::LastReleased | MetaTag::TrimPoint))
                .map(|(log, _)| *log),
        );
    }

    fn barrier(&mut self, req: Request) {
        let result = match req.op {
            Op::Roll => self.roll().map(OpResult::Rolled),
            Op::Retention { backlogs_ms } => self.retention(&backlogs_ms).map(OpResult::Retention),
            _ => unreachable!("only barriers"),
        };
        if let Err(e) = &result {
            self.shared.fail(format!("partition maintenance: {e}"));
        }
        let _ = req.reply.send(result);
    }

    fn maybe_roll(&mut self) -> Result<(), LogsDbError> {
        let config = &self.shared.config;
        let current = self.dir.current();
        let Some(info) = self.dir.partitions.get(&current).copied() else {
            self.roll()?;
            return Ok(());
        };
        let now = self.shared.clock.now_ms();
        let mut roll = now.saturating_sub(info.created_ms) >= config.partition_duration_ms
            || info.bytes >= config.partition_size_bytes;
        self.groups_since_file_check += 1;
        if !roll && self.groups_since_file_check >= FILE_CHECK_EVERY_GROUPS {
            self.groups_since_file_check = 0;
            if let Some(cf) = self.shared.db.cf_handle(&current.cf_name()) {
                let files = self
                    .shared
                    .db
                    .property_int_value_cf(&cf, "rocksdb.num-files-at-level0")?;
                roll = files.unwrap_or(0) >= u64::from(config.partition_file_limit);
            }
        }
        if roll {
            self.roll()?;
        }
        Ok(())
    }

    /// Creates the next partition and makes it the newest.
    fn roll(&mut self) -> Result<PartitionId, LogsDbError> {
        let pid = PartitionId(self.dir.current().0 + 1);
        let shared = self.shared.clone();
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
        self.dir.partitions.insert(pid, info);
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

    fn retention(
        &mut self,
        backlogs_ms: &std::collections::BTreeMap<LogId, u64>,
    ) -> Result<RetentionReport, LogsDbError> {
        let shared = self.shared.clone();
        let report = retention::plan(&self.dir, &self.logs, backlogs_ms, shared.clock.now_ms());
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
            for (log, m) in &self.dir.entries {
                if m.contains_key(&pid) {
                    wb.delete_cf(&meta_cf, keys::directory_key(*log, pid));
                }
            }
        }
        // Trim points must be durable before the records below them disappear.
        shared.db.write_opt(wb, &sync_write_opts())?;
        drop(meta_cf);
        for &(log, trim) in &report.trimmed {
            self.logs.entry(log).or_default().trim_point = trim;
        }
        {
            let mut view = shared.view.write().unwrap_or_else(|p| p.into_inner());
            for &(log, _) in &report.trimmed {
                view.logs.insert(log, self.logs[&log].clone());
            }
            for &pid in &report.dropped {
                view.dir.remove_partition(pid);
            }
        }
        shared
            .watchers
            .notify(report.trimmed.iter().map(|(log, _)| *log));
        for &pid in &report.dropped {
            self.dir.remove_partition(pid);
            self.dir_lagging.retain(|&(_, p)| p != pid);
            self.dir_marked.remove(&pid);
            shared.db.drop_cf(&pid.cf_name())?;
            tracing::info!(partition = %pid, "dropped partition");
        }
        Ok(report)
    }
}
