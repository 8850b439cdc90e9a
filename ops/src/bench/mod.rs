//! `tally bench …`: benchmarks that print a table and can write JSON.

use clap::{Args, Subcommand};

mod epochstore;
mod read;
pub mod storage;
mod write;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// LogsDB against raw RocksDB: unsynced and synced writes, sequential reads.
    Storage(storage::StorageBenchArgs),
    /// Epoch store activation latency (etcd started locally, or the file store).
    Epochstore(epochstore::EpochstoreBenchArgs),
    /// The write path end to end: appends/s and ack latency at concurrency 1, 16, 256,
    /// durable and fast (an in-process dev cluster, or `--seed`).
    Write(write::WriteBenchArgs),
    /// The read path end to end: backfill of ≥ 1 GiB (single copy and all-send-all) and
    /// append-to-delivery latency of a tailing reader (an in-process dev cluster, or `--seed`).
    Read(read::ReadBenchArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Storage(a) => storage::run(a),
        BenchCommand::Epochstore(a) => epochstore::run(a),
        BenchCommand::Write(a) => write::run(a),
        BenchCommand::Read(a) => read::run(a),
    }
}
