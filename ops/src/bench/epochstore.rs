//! `tally bench epochstore`: activation latency of the epoch store.
//!
//! Starts a local etcd (Debian's `/usr/bin/etcd`, through the test harness: loopback, a
//! temporary data directory on the local disk, fsync on), registers five storage nodes,
//! creates one log and times sequential activations (read + compare-and-swap, node-set
//! selection included). The same run is repeated on the file store (temp file + fsync +
//! rename + directory fsync) and the in-memory store for reference. Prints p50 / p99 / max
//! per backend and optionally writes them as JSON.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_common::ids::{LogId, NodeId};
use tally_common::meta::{LogAttributes, NodeInfo, Roles, StorageState};
use tally_epochstore::harness::EtcdHarness;
use tally_epochstore::{ActivateOptions, EpochStore, FileEpochStore, MemoryEpochStore};
use tokio::time::Instant;

#[derive(Debug, Args)]
pub struct EpochstoreBenchArgs {
    /// A short run (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Activations measured per backend (after `WARMUP` unmeasured ones).
const ACTIVATIONS: usize = 1000;
const ACTIVATIONS_QUICK: usize = 100;
const WARMUP: usize = 20;

#[derive(Debug, Serialize)]
struct Row {
    backend: &'static str,
    activations: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    mean_us: f64,
    per_second: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    storage_nodes: usize,
    replication: u8,
    results: Vec<Row>,
}

pub fn run(args: EpochstoreBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: EpochstoreBenchArgs) -> anyhow::Result<()> {
    let n = if args.quick {
        ACTIVATIONS_QUICK
    } else {
        ACTIVATIONS
    };
    let mut results = Vec::new();

    let etcd = EtcdHarness::start()
        .await
        .context("start a local etcd (is /usr/bin/etcd installed?)")?;
    let store = etcd
        .store("bench")
        .await
        .context("connect to the local etcd")?;
    results.push(measure("etcd", &store, n).await?);
    drop(store);
    drop(etcd);

    let dir = tempfile::Builder::new()
        .prefix("tally-bench-epochstore-")
        .tempdir()?;
    let store = FileEpochStore::open(dir.path()).context("open the file store")?;
    results.push(measure("file", &store, n).await?);
    drop(store);

    results.push(measure("memory", &MemoryEpochStore::new(), n).await?);

    println!(
        "epoch store activation latency ({n} sequential activations of one log, 5 storage nodes, R=3)"
    );
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "backend", "activations", "p50 µs", "p99 µs", "max µs", "mean µs", "per s"
    );
    for r in &results {
        println!(
            "{:<8} {:>12} {:>10} {:>10} {:>10} {:>10.0} {:>10.0}",
            r.backend, r.activations, r.p50_us, r.p99_us, r.max_us, r.mean_us, r.per_second
        );
    }
    if let Some(path) = args.json {
        let report = Report {
            benchmark: "epochstore",
            storage_nodes: 5,
            replication: 3,
            results,
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn measure(backend: &'static str, store: &dyn EpochStore, n: usize) -> anyhow::Result<Row> {
    let mut leases = Vec::new();
    for id in 1..=5 {
        let info = NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 7000 + id),
            roles: Roles {
                sequencer: true,
                storage: true,
            },
            location: String::new(),
            weight: 1,
            state: StorageState::ReadWrite,
            incarnation: 0,
        };
        leases.push(store.register_node(info, Duration::from_secs(30)).await?);
    }
    let log = LogId(1);
    store.create_log(log, LogAttributes::default()).await?;
    for _ in 0..WARMUP {
        store.activate(log, ActivateOptions::default()).await?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        store.activate(log, ActivateOptions::default()).await?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let elapsed = started.elapsed();
    for lease in leases {
        lease.deregister().await?;
    }
    Ok(Row {
        backend,
        activations: n,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
        mean_us: hist.mean(),
        per_second: n as f64 / elapsed.as_secs_f64(),
    })
}
