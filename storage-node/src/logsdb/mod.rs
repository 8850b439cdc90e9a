//! LogsDB: the partitioned RocksDB record store of a storage node (DESIGN §7).
//!
//! One RocksDB instance per node. The `meta` column family holds per-log metadata, the
//! partition list and the partition directory; every time partition is its own column family
//! `p<id>` holding records keyed by `(log, lsn)` plus a copyset-index entry per record.
//! Partitions are never compacted into each other; retention drops whole partitions.
//!
//! Modules, one main type each:
//! - `config`: [`LogsDbConfig`] (partition limits, queue and batch limits, RocksDB tuning).
//! - `clock`: [`Clock`] with [`SystemClock`] and [`ManualClock`] (tests drive time).
//! - `error`: [`LogsDbError`].
//! - `keys`: key layouts of the partition and `meta` column families (persisted).
//! - `value`: the stored record value and copyset-index value (persisted, versioned).
//! - `value_pool`: record-value buffers recycled from the writer threads to the callers.
//! - `merge`: the precedence merge of several writes to one LSN.
//! - `log_meta`: [`LogMeta`], the per-log metadata, and the preemption rule.
//! - `directory`: the partition list and the (log, partition) directory.
//! - `identity`: [`NodeIdentity`] file and the data-directory lock.
//! - `request`: write operations and their acknowledgement tickets.
//! - `shared`: state shared by the handle and the threads; the WAL syncer thread.
//! - `writer`: the writer threads, each owning the logs of one shard (group commit).
//! - `reader`: [`LogIterator`] and [`CopysetIterator`], and point reads of one LSN.
//! - `notify`: [`LogWatch`], per-log wake-ups when the release or trim point moves.
//! - `query`: `find_time` and `data_size`.
//! - `retention`: which logs to trim and which partitions to drop.
//! - `open`: loading the `meta` column family and reconciling partitions on open.
//! - `store`: [`LogsDb`], the public face.

mod clock;
mod config;
mod directory;
mod error;
mod identity;
mod keys;
mod log_meta;
mod merge;
mod notify;
mod open;
mod query;
mod reader;
mod request;
mod retention;
#[cfg(test)]
mod sharding_tests;
mod shared;
mod store;
mod value;
mod value_pool;
#[cfg(test)]
mod write_path_tests;
mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, LogsDbConfig, UnsafeControls};
pub use directory::{DirEntry, PartitionId, PartitionInfo};
pub use error::{CorruptKind, LogsDbError};
pub use identity::NodeIdentity;
pub use log_meta::{LogMeta, preemption};
pub use notify::LogWatch;
pub use query::FindTimeAccuracy;
pub use reader::{CopysetEntry, CopysetIterator, LogIterator, ReadItem};
pub use request::{Ticket, TrimOutcome};
pub use retention::RetentionReport;
pub use shared::WriteStats;
pub use store::{LogsDb, OpenReport};
pub use value::LogRecord;

/// The RocksDB handle type LogsDB uses (column families created and dropped through `&self`).
pub type Db = rocksdb::DBWithThreadMode<rocksdb::MultiThreaded>;

/// Column-family options of one partition, exposed so a benchmark can give raw RocksDB the
/// very same settings.
pub use config::{apply_db_options, db_options, partition_cf_options};
