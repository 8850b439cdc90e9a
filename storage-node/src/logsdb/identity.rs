//! The node identity file (`IDENTITY`: cluster name, node id and the directory's own id) that
//! pins a data directory to one node of one cluster, and the exclusive lock (`LOCK`) that keeps
//! a second process out.
//!
//! The identity file is TOML: `format = 1`, `cluster = "…"`, `node_id = N`, `data_dir =
//! "<16 hex digits>"` (a [`DataDirId`] drawn when the directory is created; the server binds it
//! to the node id in the epoch store, DESIGN §7); written atomically (temporary file, fsync,
//! rename, fsync of the directory). The id is drawn again whenever the directory holds no
//! database (its `db/` deleted, or a first start that crashed before creating it), and for a
//! file from before `data_dir` existed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use tally_common::{DataDirId, NodeId};

use super::error::LogsDbError;

const IDENTITY_FILE: &str = "IDENTITY";
const LOCK_FILE: &str = "LOCK";
const IDENTITY_FORMAT: u32 = 1;
const MAX_CLUSTER_NAME: usize = 128;

/// Which node of which cluster a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub cluster: String,
    pub node_id: NodeId,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    format: u32,
    cluster: String,
    node_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_dir: Option<DataDirId>,
}

impl NodeIdentity {
    pub fn new(cluster: impl Into<String>, node_id: NodeId) -> NodeIdentity {
        NodeIdentity {
            cluster: cluster.into(),
            node_id,
        }
    }

    /// Checks `dir`'s identity file against `self`, creating it when the directory is new, and
    /// returns the directory's id. `db_exists`: a database is already there, so a missing
    /// identity file is an error.
    pub(crate) fn check_or_create(
        &self,
        dir: &Path,
        db_exists: bool,
    ) -> Result<DataDirId, LogsDbError> {
        let invalid = |reason: String| LogsDbError::IdentityInvalid {
            path: dir.join(IDENTITY_FILE),
            reason,
        };
        if self.cluster.is_empty() || self.cluster.len() > MAX_CLUSTER_NAME {
            return Err(invalid(format!(
                "cluster name must be 1..={MAX_CLUSTER_NAME} bytes"
            )));
        }
        let path = dir.join(IDENTITY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                if bytes.len() > 4096 {
                    return Err(invalid("file larger than 4 KiB".into()));
                }
                let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
                let file: IdentityFile =
                    toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
                if file.format != IDENTITY_FORMAT {
                    return Err(invalid(format!("unknown format {}", file.format)));
                }
                if file.cluster != self.cluster || NodeId(file.node_id) != self.node_id {
                    return Err(LogsDbError::IdentityMismatch {
                        expected_cluster: self.cluster.clone(),
                        expected_node: self.node_id,
                        found_cluster: file.cluster,
                        found_node: NodeId(file.node_id),
                    });
                }
                match file.data_dir {
                    // No database (never created, or deleted): the directory holds none of
                    // the data an earlier id stood for, so it is a new directory.
                    Some(id) if db_exists => Ok(id),
                    _ => {
                        let id = DataDirId::random();
                        tracing::info!(dir = %dir.display(), data_dir = %id, "data directory gets a new id");
                        self.write(dir, id)?;
                        Ok(id)
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if db_exists {
                    return Err(LogsDbError::IdentityMissing(dir.to_owned()));
                }
                let id = DataDirId::random();
                self.write(dir, id)?;
                Ok(id)
            }
            Err(e) => Err(LogsDbError::io(path, e)),
        }
    }

    fn write(&self, dir: &Path, data_dir: DataDirId) -> Result<(), LogsDbError> {
        let file = IdentityFile {
            format: IDENTITY_FORMAT,
            cluster: self.cluster.clone(),
            node_id: self.node_id.0,
            data_dir: Some(data_dir),
        };
        let text = toml::to_string(&file).map_err(|e| LogsDbError::IdentityInvalid {
            path: dir.join(IDENTITY_FILE),
            reason: e.to_string(),
        })?;
        let tmp = dir.join("IDENTITY.tmp");
        let io = |p: &Path| {
            let p = p.to_owned();
            move |e| LogsDbError::io(p, e)
        };
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let path = dir.join(IDENTITY_FILE);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
}

/// An exclusive advisory lock on a data directory, held while LogsDB is open.
#[derive(Debug)]
pub(crate) struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, LogsDbError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogsDbError::io(&path, e))?;
        file.try_lock_exclusive()
            .map_err(|_| LogsDbError::Locked(dir.to_owned()))?;
        Ok(DirLock { file, path })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Err(e) = FileExt::unlock(&self.file) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not unlock data directory");
        }
    }
}
