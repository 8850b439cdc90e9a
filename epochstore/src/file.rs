//! [`FileEpochStore`]: the embedded single-machine epoch store (`tally dev`, one process).
//!
//! Layout of its directory:
//!
//! ```text
//! <dir>/LOCK                 held with an exclusive flock while a store has it open
//! <dir>/logs/<log_id>.json   one LogMetadata per log, JSON (readable with any editor)
//! <dir>/logs/*.tmp           a write in progress; a leftover from a crash is deleted at open
//! <dir>/data-dirs/<node>.json the data directory bound to a storage node id (DESIGN §7)
//! ```
//!
//! Every change writes the whole log file to a temporary file, fsyncs it, renames it over the
//! old one and fsyncs the directory, so after a SIGKILL at any point each log file holds
//! either the old or the new value, never a torn one; the rename is the commit point and a
//! change is acknowledged only after it is durable. A copy of every log is cached in memory
//! and updated only after its write is durable. After any I/O error the store refuses further
//! writes (the state of a failed fsync is unknown), which surfaces as `Io` errors.
//! Membership is in-process only (module `members`): one machine, one process.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fs2::FileExt;
use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{DataDirBinding, DataDirId, LogAttributes, LogMetadata, NodeInfo};

use crate::members::LocalMembership;
use crate::store::{
    ActivateOptions, Activation, BoxFuture, EpochStore, EpochStoreError, NodeLease, NodeWatch,
    Result,
};
use crate::update::{self, DataDirRecord};

/// Default deadline of one file-store call.
pub const DEFAULT_FILE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    logs_dir: PathBuf,
    /// Held for the store's lifetime: the flock is released when this closes.
    _lock: File,
    cache: Mutex<BTreeMap<LogId, LogMetadata>>,
    failed: AtomicBool,
}

/// The file-backed epoch store. Cloning shares the same open store.
#[derive(Clone, Debug)]
pub struct FileEpochStore {
    inner: Arc<Inner>,
    members: LocalMembership,
    call_timeout: Duration,
}

fn io_error(what: &str, path: &Path, e: io::Error) -> EpochStoreError {
    EpochStoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl FileEpochStore {
    /// Opens (creating if needed) the store in `dir` and locks it against other processes.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileEpochStore> {
        let dir = dir.as_ref().to_path_buf();
        let logs_dir = dir.join("logs");
        fs::create_dir_all(&logs_dir).map_err(|e| io_error("create", &logs_dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_error("open", &lock_path, e))?;
        lock.try_lock_exclusive()
            .map_err(|_| EpochStoreError::Locked {
                path: dir.display().to_string(),
            })?;
        sync_dir(&dir).map_err(|e| io_error("fsync", &dir, e))?;

        let mut logs = BTreeMap::new();
        let entries = fs::read_dir(&logs_dir).map_err(|e| io_error("read", &logs_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("read", &logs_dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
                continue;
            }
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = fs::read(&path).map_err(|e| io_error("read", &path, e))?;
            let meta: LogMetadata =
                serde_json::from_slice(&bytes).map_err(|e| EpochStoreError::Corrupt {
                    key: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            logs.insert(LogId(id), meta);
        }
        Ok(FileEpochStore {
            inner: Arc::new(Inner {
                dir,
                logs_dir,
                _lock: lock,
                cache: Mutex::new(logs),
                failed: AtomicBool::new(false),
            }),
            members: LocalMembership::default(),
            call_timeout: DEFAULT_FILE_CALL_TIMEOUT,
        })
    }

    /// Sets the deadline of every call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> FileEpochStore {
        self.call_timeout = timeout;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, BTreeMap<LogId, LogMetadata>> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on the blocking pool under the cache lock, which serializes every write of
    /// the store, unless an earlier write failed; bounded by the call timeout.
    async fn write_locked<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Inner, &mut BTreeMap<LogId, LogMetadata>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut cache = inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            if inner.failed.load(Ordering::Acquire) {
                return Err(EpochStoreError::Io(
                    "an earlier write failed; restart needed".into(),
                ));
            }
            job(&inner, &mut cache)
        });
        match tokio::time::timeout(self.call_timeout, task).await {
            Err(_) => Err(EpochStoreError::Timeout {
                after: self.call_timeout,
            }),
            Ok(Err(e)) => Err(EpochStoreError::Io(format!("write task failed: {e}"))),
            Ok(Ok(r)) => r,
        }
    }

    /// Runs a read-modify-write of one log on the blocking pool, under the cache lock.
    /// `decide` returns the new value to persist, or `None` to leave the log unchanged.
    async fn mutate<T: Send + 'static>(
        &self,
        log: LogId,
        decide: impl FnOnce(Option<&LogMetadata>) -> Result<(Option<LogMetadata>, T)> + Send + 'static,
    ) -> Result<T> {
        self.write_locked(move |inner, cache| {
            let (updated, out) = decide(cache.get(&log))?;
            if let Some(meta) = updated {
                let bytes = serde_json::to_vec_pretty(&meta)
                    .map_err(|e| EpochStoreError::Backend(format!("encode: {e}")))?;
                if let Err(e) = write_atomic(&inner.logs_dir, &format!("{}.json", log.0), &bytes) {
                    inner.failed.store(true, Ordering::Release);
                    return Err(io_error("write log in", &inner.logs_dir, e));
                }
                cache.insert(log, meta);
            }
            Ok(out)
        })
        .await
    }

    /// Reads the binding of `node`, binds `dir` if there is none (durably, before answering).
    fn bind_data_dir_locked(inner: &Inner, node: NodeId, dir: DataDirId) -> Result<DataDirBinding> {
        let dirs = inner.dir.join("data-dirs");
        let name = format!("{}.json", node.0);
        let path = dirs.join(&name);
        let bound = match fs::read(&path) {
            Ok(bytes) => {
                let record: DataDirRecord =
                    serde_json::from_slice(&bytes).map_err(|e| EpochStoreError::Corrupt {
                        key: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                Some(record.data_dir)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let answer = update::data_dir_binding(bound, dir);
        if answer == DataDirBinding::New {
            let bytes = serde_json::to_vec_pretty(&DataDirRecord {
                node,
                data_dir: dir,
            })
            .map_err(|e| EpochStoreError::Backend(format!("encode: {e}")))?;
            let written = fs::create_dir_all(&dirs)
                .and_then(|()| sync_dir(&inner.dir))
                .and_then(|()| write_atomic(&dirs, &name, &bytes));
            if let Err(e) = written {
                inner.failed.store(true, Ordering::Release);
                return Err(io_error("write data-directory binding in", &dirs, e));
            }
        }
        Ok(answer)
    }
}

/// Writes `bytes` to `dir/name` so that a crash leaves the old or the new content.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl EpochStore for FileEpochStore {
    fn create_log(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            let meta = update::new_log(log, attributes)?;
            self.mutate(log, move |current| match current {
                Some(_) => Err(EpochStoreError::AlreadyExists { log }),
                None => Ok((Some(meta.clone()), meta)),
            })
            .await
        })
    }

    fn get_log(&self, log: LogId) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            self.cached()
                .get(&log)
                .cloned()
                .ok_or(EpochStoreError::NotFound { log })
        })
    }

    fn list_logs(&self) -> BoxFuture<'_, Result<BTreeMap<LogId, LogMetadata>>> {
        Box::pin(async move { Ok(self.cached().clone()) })
    }

    fn update_attributes(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            self.mutate(log, move |current| {
                let current = current.ok_or(EpochStoreError::NotFound { log })?;
                let updated = update::set_attributes(current, attributes)?;
                Ok((Some(updated.clone()), updated))
            })
            .await
        })
    }

    fn activate(&self, log: LogId, options: ActivateOptions) -> BoxFuture<'_, Result<Activation>> {
        Box::pin(async move {
            let nodes = self.members.list();
            self.mutate(log, move |current| {
                let current = current.ok_or(EpochStoreError::NotFound { log })?;
                let (updated, activation) = update::activate(log, current, &nodes, &options)?;
                Ok((Some(updated), activation))
            })
            .await
        })
    }

    fn set_last_clean_epoch(
        &self,
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        recovered: Option<tally_common::RecoveredEpoch>,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            self.mutate(log, move |current| {
                let current = current.ok_or(EpochStoreError::NotFound { log })?;
                match update::set_last_clean_epoch(current, epoch, tail, recovered)? {
                    Some(updated) => Ok((Some(updated.clone()), updated)),
                    None => Ok((None, current.clone())),
                }
            })
            .await
        })
    }

    fn register_node(&self, info: NodeInfo, ttl: Duration) -> BoxFuture<'_, Result<NodeLease>> {
        Box::pin(async move { self.members.register(info, ttl) })
    }

    fn list_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>>> {
        Box::pin(async move { Ok(self.members.list()) })
    }

    fn watch_nodes(&self) -> BoxFuture<'_, Result<NodeWatch>> {
        Box::pin(async move { Ok(self.members.watch()) })
    }

    fn bind_data_dir(&self, node: NodeId, dir: DataDirId) -> BoxFuture<'_, Result<DataDirBinding>> {
        Box::pin(async move {
            self.write_locked(move |inner, _| {
                FileEpochStore::bind_data_dir_locked(inner, node, dir)
            })
            .await
        })
    }
}
