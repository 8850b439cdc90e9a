//! The storage role of Tally (DESIGN §7).
//!
//! Layout: [`logsdb`] (the node's local log store, [`logsdb::LogsDb`]: one RocksDB instance
//! with a `meta` column family and time partitions as column families, a partition directory,
//! group-committed writes, per-log metadata — trim points, seals, release pointers, LNGs —
//! checksummed reads, `find_time`, `data_size` and retention; no network code) and [`server`]
//! (the network role on top of it, [`server::StorageNode`]: STORE with admission control,
//! checksum, seal and disk-space checks; RELEASE, SEAL, CLEAN, TRIM, recovery digests; read
//! streams with flow control, tail following and server-side filters ([`server::read`]);
//! cluster state and log metadata for clients; registration in membership).

pub mod logsdb;
pub mod server;

pub use logsdb::{
    Clock, FindTimeAccuracy, LogMeta, LogRecord, LogsDb, LogsDbConfig, LogsDbError, ManualClock,
    NodeIdentity, OpenReport, ReadItem, SystemClock,
};
