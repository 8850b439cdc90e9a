//! [`LogsDbError`]: everything LogsDB can refuse or fail with. Corruption is a typed error
//! (and a typed read item), never "absent" and never data.

use std::path::PathBuf;

use tally_common::{ChecksumMismatch, CopysetError, Epoch, LogId, Lsn, NodeId};

use super::config::ConfigError;

/// What exactly was found corrupt in a stored value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptKind {
    #[error("value of {len} bytes is shorter than its {need}-byte layout")]
    Truncated { len: usize, need: usize },
    #[error("unknown value format version {0}")]
    UnknownVersion(u8),
    #[error("value checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("bad copyset: {0}")]
    Copyset(CopysetError),
    #[error("unknown record flag bits {0:#x}")]
    Flags(u32),
    #[error("payload length {declared} does not match the {actual} bytes present")]
    PayloadLength { declared: usize, actual: usize },
    #[error("malformed key")]
    Key,
    #[error("malformed metadata value for {0}")]
    Meta(&'static str),
}

/// Errors of LogsDB operations.
#[derive(Debug, thiserror::Error)]
pub enum LogsDbError {
    #[error("invalid LogsDB configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("RocksDB error: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("data directory {0} is locked by another process")]
    Locked(PathBuf),
    #[error(
        "data directory belongs to cluster {found_cluster:?} node {found_node}, \
         not cluster {expected_cluster:?} node {expected_node}"
    )]
    IdentityMismatch {
        expected_cluster: String,
        expected_node: NodeId,
        found_cluster: String,
        found_node: NodeId,
    },
    #[error("data directory {0} holds a database but no identity file; refusing to open")]
    IdentityMissing(PathBuf),
    #[error("identity file {path} is invalid: {reason}")]
    IdentityInvalid { path: PathBuf, reason: String },
    #[error("corrupt record {log:?} {lsn}: {kind}")]
    Corrupt {
        log: LogId,
        lsn: Lsn,
        kind: CorruptKind,
    },
    #[error("corrupt metadata: {0}")]
    CorruptMeta(CorruptKind),
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("{count} records in one write exceed the limit of {max}")]
    TooManyRecords { count: usize, max: usize },
    #[error("invalid record {log:?} {lsn}: {reason}")]
    InvalidRecord {
        log: LogId,
        lsn: Lsn,
        reason: &'static str,
    },
    #[error("record {log:?} {lsn}: {source}")]
    PayloadChecksum {
        log: LogId,
        lsn: Lsn,
        source: ChecksumMismatch,
    },
    #[error("record {log:?} {lsn}: {source}")]
    Copyset {
        log: LogId,
        lsn: Lsn,
        source: CopysetError,
    },
    #[error("{log:?} is sealed at {seal}: store preempted")]
    Preempted { log: LogId, seal: Epoch },
    #[error("LogsDB stopped accepting writes after a write or sync failure: {0}")]
    Failed(String),
    #[error("LogsDB is closed")]
    Closed,
}

impl LogsDbError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LogsDbError {
        LogsDbError::Io {
            path: path.into(),
            source,
        }
    }
}
