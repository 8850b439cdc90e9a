//! The storage role of Tally (DESIGN §7). Today this crate holds LogsDB, the node's local log
//! store: one RocksDB instance with a `meta` column family and time partitions as column
//! families, a partition directory, group-committed writes, per-log metadata (trim points,
//! seals, release pointers, LNGs), checksummed reads, `find_time`, `data_size` and retention.
//! It has no network code; the STORE/SEAL/RELEASE server and read streams sit on top of it.
//!
//! Layout: [`logsdb`] (the store; its main type is [`logsdb::LogsDb`]).

pub mod logsdb;

pub use logsdb::{
    Clock, FindTimeAccuracy, LogMeta, LogRecord, LogsDb, LogsDbConfig, LogsDbError, ManualClock,
    NodeIdentity, OpenReport, ReadItem, SystemClock,
};
