//! [`LogsDbConfig`]: partition limits, write queue and batch limits, and the RocksDB settings
//! derived from them. Defaults live here and only here.

use tally_common::limits::{
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RECORDS_PER_BATCH, HARD_MAX_PAYLOAD_BYTES,
};

/// Configuration of one LogsDB instance. Validate with [`LogsDbConfig::validate`] (done by
/// `LogsDb::open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsDbConfig {
    /// A new partition starts when the newest one is this old.
    pub partition_duration_ms: u64,
    /// A new partition starts when the newest one holds this many bytes (keys + values).
    pub partition_size_bytes: u64,
    /// A new partition starts when the newest one has this many SST files.
    pub partition_file_limit: u32,
    /// Largest payload accepted in one record.
    pub max_payload_bytes: usize,
    /// Most records in one store request.
    pub max_records_per_write: usize,
    /// Write requests queued for each writer thread before callers wait (backpressure).
    pub queue_capacity: usize,
    /// Most bytes of record values a writer thread puts in one group commit.
    pub max_group_bytes: usize,
    /// Writer threads, each owning the logs `log % writer_threads` (their metadata, directory
    /// entries and writes; RocksDB joins their concurrent writes into one WAL write and
    /// inserts into the memtables in parallel). Default: the available cores, 2 to 4.
    pub writer_threads: usize,
    /// Memtable size of each partition column family.
    pub memtable_bytes: usize,
    /// Memtable budget across all column families.
    pub total_memtable_bytes: usize,
    /// Size of the WAL after which RocksDB flushes the oldest memtables.
    pub max_wal_bytes: u64,
    /// Block cache shared by all partitions.
    pub block_cache_bytes: usize,
    /// Deliberate bugs for the chaos harness's negative controls. Never set in production.
    pub unsafe_controls: UnsafeControls,
}

/// Deliberate safety bugs, so the chaos harness can prove its checker catches them (issue 7's
/// negative controls). Both default to off; a node with either on logs a warning at open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnsafeControls {
    /// Stores of epochs at or below the seal (or soft seal) are accepted instead of refused
    /// with `Preempted`: a sealed, replaced sequencer can still get appends acknowledged.
    pub ignore_seals: bool,
    /// The WAL is kept in process memory (RocksDB `manual_wal_flush`) and never synced, yet
    /// durable stores are acknowledged: a SIGKILL loses acknowledged records.
    pub skip_fsync: bool,
}

impl Default for LogsDbConfig {
    fn default() -> Self {
        LogsDbConfig {
            partition_duration_ms: 15 * 60 * 1000,
            partition_size_bytes: 1 << 30,
            partition_file_limit: 200,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_records_per_write: DEFAULT_MAX_RECORDS_PER_BATCH as usize,
            queue_capacity: 1024,
            max_group_bytes: 32 << 20,
            writer_threads: default_writer_threads(),
            memtable_bytes: 64 << 20,
            total_memtable_bytes: 512 << 20,
            max_wal_bytes: 1 << 30,
            block_cache_bytes: 256 << 20,
            unsafe_controls: UnsafeControls::default(),
        }
    }
}

/// The available cores, at least 2 and at most 4.
fn default_writer_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4)
}

impl LogsDbConfig {
    /// Small partitions and buffers, for tests.
    pub fn small_for_tests() -> LogsDbConfig {
        LogsDbConfig {
            partition_size_bytes: 64 << 10,
            memtable_bytes: 1 << 20,
            total_memtable_bytes: 16 << 20,
            max_wal_bytes: 64 << 20,
            block_cache_bytes: 8 << 20,
            queue_capacity: 256,
            ..LogsDbConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("partition_duration_ms", self.partition_duration_ms),
            ("partition_size_bytes", self.partition_size_bytes),
            ("partition_file_limit", self.partition_file_limit as u64),
            ("max_records_per_write", self.max_records_per_write as u64),
            ("queue_capacity", self.queue_capacity as u64),
            ("max_group_bytes", self.max_group_bytes as u64),
            ("writer_threads", self.writer_threads as u64),
            ("memtable_bytes", self.memtable_bytes as u64),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_payload_bytes > HARD_MAX_PAYLOAD_BYTES {
            return Err(ConfigError::PayloadAboveCap(self.max_payload_bytes));
        }
        if self.writer_threads > 64 {
            return Err(ConfigError::WriterThreads(self.writer_threads));
        }
        if self.partition_file_limit > 100_000 {
            return Err(ConfigError::FileLimit(self.partition_file_limit));
        }
        Ok(())
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("max_payload_bytes = {0} is above the hard cap of {HARD_MAX_PAYLOAD_BYTES}")]
    PayloadAboveCap(usize),
    #[error("writer_threads = {0} is above 64")]
    WriterThreads(usize),
    #[error("partition_file_limit = {0} is above 100000")]
    FileLimit(u32),
}

/// How much of a file being written (a flush's SST) may wait for writeback before RocksDB
/// hands it to the disk, and — with `strict_bytes_per_sync` — the most it may have in flight.
pub const SST_BYTES_PER_SYNC: u64 = 1 << 20;

/// Database-wide RocksDB options: one WAL shared by every column family, fsync only when
/// asked (group commit decides when), memtable budget shared by all partitions, pipelined
/// writes (for the concurrent batches of the writer threads), SST writes paced to the disk.
pub fn db_options(config: &LogsDbConfig) -> rocksdb::Options {
    let mut opts = base_options();
    apply_db_options(&mut opts, config);
    opts
}

/// A default `Options` with what the `rocksdb` crate has no setter for, applied through
/// RocksDB's option-string parser on a fresh object (so no Rust-side handle is lost in the
/// copy the parser makes): `strict_bytes_per_sync`, see [`apply_db_options`].
fn base_options() -> rocksdb::Options {
    rocksdb::Options::default()
        .get_options_from_string("strict_bytes_per_sync=true")
        .expect("RocksDB knows strict_bytes_per_sync")
}

/// Applies the database-wide half of [`db_options`] to `opts` (a benchmark gives raw RocksDB
/// LogsDB's partition options plus these on one object).
pub fn apply_db_options(opts: &mut rocksdb::Options, config: &LogsDbConfig) {
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(config.total_memtable_bytes);
    opts.set_max_total_wal_size(config.max_wal_bytes);
    opts.set_max_background_jobs(2);
    opts.set_max_open_files(10_000);
    // The writer threads' batches: RocksDB writes one group's WAL record while the previous
    // group is still being inserted into the memtables (in parallel, one batch per writer).
    opts.set_enable_pipelined_write(true);
    // A flush writes a whole memtable (64 MiB) into the page cache at memory speed and then
    // syncs it: left alone, the disk gets it in one burst at the end, and every WAL fdatasync
    // of the node (and of anything sharing the disk) queues behind it — a 30-45 ms stall of
    // every durable append at each flush. Handing SST data to the disk every MiB, and with
    // `strict_bytes_per_sync` (set in `base_options`) waiting for the previous MiB before
    // handing over the next, keeps at most ~1 MiB of it ahead of a WAL sync. The flush only
    // waits when the disk is behind, which is when it should.
    opts.set_bytes_per_sync(SST_BYTES_PER_SYNC);
    if config.unsafe_controls.skip_fsync {
        opts.set_manual_wal_flush(true);
    }
}

/// Options of one partition column family: L0 only (auto compaction off, so partitions are
/// never rewritten; the SST-file limit starts a new partition instead), no write stalls on the
/// L0 file count, bloom filters for the point lookups of the precedence merge, lz4 blocks.
pub fn partition_cf_options(config: &LogsDbConfig, cache: &rocksdb::Cache) -> rocksdb::Options {
    // The base options, for a caller that opens a plain RocksDB with these options plus
    // [`apply_db_options`] on one object (the raw-RocksDB benchmark): database-wide settings
    // in a column family's options are ignored.
    let mut opts = base_options();
    opts.set_write_buffer_size(config.memtable_bytes);
    opts.set_disable_auto_compactions(true);
    let stall = i32::try_from(config.partition_file_limit.saturating_mul(4))
        .unwrap_or(i32::MAX)
        .max(1000);
    opts.set_level_zero_slowdown_writes_trigger(stall);
    opts.set_level_zero_stop_writes_trigger(stall);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_bloom_filter(10.0, false);
    block.set_block_size(64 << 10);
    opts.set_block_based_table_factory(&block);
    opts
}

/// Options of the `meta` column family: small values, ordinary leveled compaction.
pub(crate) fn meta_cf_options(cache: &rocksdb::Cache) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_write_buffer_size(4 << 20);
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_block_cache(cache);
    opts.set_block_based_table_factory(&block);
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_is_refused() {
        LogsDbConfig::default().validate().unwrap();
        LogsDbConfig::small_for_tests().validate().unwrap();
        let c = LogsDbConfig {
            queue_capacity: 0,
            ..LogsDbConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("queue_capacity")));
    }

    #[test]
    fn writer_threads_default_and_bounds() {
        let n = LogsDbConfig::default().writer_threads;
        assert!((2..=4).contains(&n), "{n}");
        let c = |writer_threads| LogsDbConfig {
            writer_threads,
            ..LogsDbConfig::default()
        };
        assert_eq!(c(0).validate(), Err(ConfigError::Zero("writer_threads")));
        assert_eq!(c(65).validate(), Err(ConfigError::WriterThreads(65)));
        c(1).validate().unwrap();
    }
}
