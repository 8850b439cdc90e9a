//! State shared by the public handle, the writer threads and the syncer thread: the database,
//! the readers' view of the directory and metadata, the failure latch, write counters, the
//! per-log change watchers; and the syncer thread itself (one `flush_wal(sync)` for every
//! hand-off queued).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use rocksdb::{BoundColumnFamily, WriteOptions};
use tally_common::LogId;
use tally_common::metrics::Histogram;

use super::Db;
use super::clock::Clock;
use super::config::LogsDbConfig;
use super::directory::Directory;
use super::error::LogsDbError;
use super::log_meta::LogMeta;
use super::notify::LogWatchers;
use super::request::{OpResult, Reply};
use super::value_pool::ValuePool;

pub(crate) const META_CF: &str = "meta";
/// What readers see: the directory and per-log metadata as of the last commit.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub dir: Directory,
    pub logs: HashMap<LogId, LogMeta>,
}

/// State shared by the public handle, the writer and the syncer.
pub(crate) struct Shared {
    pub db: Db,
    pub config: LogsDbConfig,
    pub clock: Arc<dyn Clock>,
    pub view: RwLock<View>,
    pub failure: OnceLock<String>,
    pub partition_opts: rocksdb::Options,
    pub stats: Counters,
    /// Tailing readers waiting for a log's release or trim point to move.
    pub watchers: Arc<LogWatchers>,
    /// Record-value buffers the writers hand back after a commit, for callers to encode into.
    pub values: ValuePool,
}

/// Write-path counters, for metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub groups: AtomicU64,
    pub requests: AtomicU64,
    pub records: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub synced_replies: AtomicU64,
    /// Duration of each WAL fsync of the syncer thread.
    pub wal_sync_latency: Histogram,
}

/// A snapshot of the write-path counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Groups the writer threads committed (one RocksDB write each).
    pub groups: u64,
    /// Write requests processed.
    pub requests: u64,
    /// Records written (after merges; discarded and preempted ones excluded).
    pub records: u64,
    /// WAL fsyncs by the syncer thread.
    pub wal_syncs: u64,
    /// Replies that waited for a WAL fsync.
    pub synced_replies: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> WriteStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WriteStats {
            groups: get(&self.groups),
            requests: get(&self.requests),
            records: get(&self.records),
            wal_syncs: get(&self.wal_syncs),
            synced_replies: get(&self.synced_replies),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("db", &self.db)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn fail(&self, what: String) {
        tracing::error!(error = %what, "LogsDB stops acknowledging writes");
        let _ = self.failure.set(what);
    }

    pub(crate) fn failed(&self) -> Option<LogsDbError> {
        self.failure.get().map(|m| LogsDbError::Failed(m.clone()))
    }

    pub(crate) fn meta_cf(&self) -> Arc<BoundColumnFamily<'_>> {
        self.db
            .cf_handle(META_CF)
            .expect("meta column family exists while open")
    }
}

pub(crate) fn sync_write_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

/// A reply waiting for the WAL sync.
pub(crate) type Pending = (Reply, OpResult);

/// The syncer thread: one `flush_wal(sync)` for every hand-off queued, then the replies.
pub(crate) fn run_syncer(shared: Arc<Shared>, rx: Receiver<Vec<Pending>>) {
    while let Ok(mut pending) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            pending.extend(more);
        }
        let outcome = match shared.failure.get() {
            Some(msg) => Err(msg.clone()),
            // Negative control: acknowledge without writing the WAL out.
            None if shared.config.unsafe_controls.skip_fsync => Ok(()),
            None => {
                let started = Instant::now();
                let synced = shared.db.flush_wal(true);
                shared.stats.wal_sync_latency.observe(started.elapsed());
                synced.map_err(|e| format!("WAL sync: {e}"))
            }
        };
        match outcome {
            Ok(()) => {
                shared.stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .synced_replies
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                // Newest first, for the reason given at `writer::send_replies`.
                super::writer::send_replies(pending);
            }
            Err(msg) => {
                shared.fail(msg.clone());
                for (reply, _) in pending {
                    let _ = reply.send(Err(LogsDbError::Failed(msg.clone())));
                }
            }
        }
    }
}
