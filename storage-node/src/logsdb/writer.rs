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
//! After publishing, the writer wakes the [`super::LogWatch`]es of logs whose last released
//! LSN or trim point moved (tailing read streams).
//!
//! On any write or sync error LogsDB stops acknowledging: every later request fails with
//! `Failed` until the process restarts (DESIGN §7).

use std::collections::{BTreeSet, HashMap};
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

/// Fields of a log's metadata changed in the current batch.
#[derive(Default)]
struct Touched {
    dir: BTreeSet<(LogId, PartitionId)>,
    meta: BTreeSet<(LogId, MetaTag)>,
    lng: BTreeSet<(LogId, Epoch)>,
    partitions: BTreeSet<PartitionId>,
}

/// One batch being assembled.
#[derive(Default)]
struct Batch {
    wb: WriteBatch,
    touched: Touched,
    /// Encoded values written in this batch, for repeated writes to one LSN.
    pending: HashMap<(LogId, Lsn), Vec<u8>>,
    fast: Vec<Pending>,
    durable: Vec<Pending>,
    has_fast_store: bool,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: tokio::sync::mpsc::Receiver<Request>,
    sync_tx: SyncSender<Vec<Pending>>,
    dir: Directory,
    logs: HashMap<LogId, LogMeta>,
    fast_marked: bool,
    groups_since_file_check: u32,
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
                if maybe_there || batch.pending.contains_key(&(log, lsn)) {
                    let cf = Self::cf(db, cfs, pid)?;
                    batch
                        .wb
                        .delete_cf(&cf, keys::record_key(DATA_TAG, log, lsn));
                    batch.wb.delete_cf(&cf, keys::record_key(CSI_TAG, log, lsn));
                    batch.pending.remove(&(log, lsn));
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
            let cf = Self::cf(db, cfs, pid)?;
            let data_key = keys::record_key(DATA_TAG, log, lsn);
            let existing = match batch.pending.get(&(log, lsn)) {
                Some(bytes) => Some(bytes.clone()),
                None if maybe_there => db.get_cf(&cf, data_key)?,
                None => None,
            };
            let (value, csi) = match existing {
                None => {
                    let csi = value::encode_csi(&r.header);
                    (r.value, csi)
                }
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
            let bytes = (2 * keys::RECORD_KEY_LEN + value.len() + csi.len()) as u64;
            batch.wb.put_cf(&cf, data_key, &value);
            batch
                .wb
                .put_cf(&cf, keys::record_key(CSI_TAG, log, lsn), &csi);
            self.dir
                .record_write(log, pid, lsn, r.header.timestamp_ms, bytes);
            batch.touched.dir.insert((log, pid));
            batch.touched.partitions.insert(pid);
            batch.pending.insert((log, lsn), value);
            self.shared.stats.records.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the batch, publishes it to readers, and acknowledges (or hands to the syncer).
    fn commit(&mut self, mut batch: Batch) {
        if batch.fast.is_empty() && batch.durable.is_empty() && batch.wb.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        if shared.failure.get().is_some() {
            for (reply, _) in batch.fast.into_iter().chain(batch.durable) {
                let _ = reply.send(Err(shared.failed().unwrap_or(LogsDbError::Closed)));
            }
            return;
        }
        let meta_cf = shared.meta_cf();
        for &(log, pid) in &batch.touched.dir {
            if let Some(e) = self.dir.entry(log, pid) {
                batch
                    .wb
                    .put_cf(&meta_cf, keys::directory_key(log, pid), e.encode());
            }
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
            batch.wb.put_cf(&meta_cf, keys::log_key(tag, log), v);
        }
        for &(log, epoch) in &batch.touched.lng {
            let lng = self
                .logs
                .get(&log)
                .and_then(|m| m.epoch_lng.get(&epoch).copied())
                .unwrap_or_default();
            batch.wb.put_cf(
                &meta_cf,
                keys::epoch_lng_key(log, epoch),
                lng.0.to_be_bytes(),
            );
        }
        let mut durable = std::mem::take(&mut batch.durable);
        if batch.has_fast_store && !self.fast_marked {
            // An unclean shutdown may now lose acknowledged `fast` writes: say so durably
            // before acknowledging the first one.
            batch
                .wb
                .put_cf(&meta_cf, keys::meta_key(MetaTag::RunState), [0u8, 1u8]);
            durable.append(&mut batch.fast);
            self.fast_marked = true;
        }
        drop(meta_cf);
        if let Err(e) = shared
            .db
            .write_opt(std::mem::take(&mut batch.wb), &WriteOptions::default())
        {
            shared.fail(format!("write: {e}"));
            for (reply, _) in batch.fast.into_iter().chain(durable) {
                let _ = reply.send(Err(LogsDbError::Failed(format!("write: {e}"))));
            }
            return;
        }
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
            shared.db.drop_cf(&pid.cf_name())?;
            tracing::info!(partition = %pid, "dropped partition");
        }
        Ok(report)
    }
}
