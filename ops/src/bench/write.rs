//! `tally bench write`: the write path end to end (issue 5). 1 KiB records appended through
//! [`tally_client::Client`] by a closed loop of `c` tasks (each task has one append in flight
//! at a time, so `c` is the number of appends in flight), for every concurrency of
//! `--concurrency` (default 1, 16, 256) and every durability mode of `--durability` (default
//! durable, fast). Reports appends per second and the acknowledgement latency (call to LSN)
//! p50 / p99 / p999 per case, errors counted, and the group-commit gain: the durable rate at
//! concurrency 256 over the durable rate at concurrency 1. With `--rate R1,R2,…` it runs
//! open-loop cases instead: appends start at a fixed rate whatever the answers (each in its own
//! task) and latency counts from the intended start, so stalls show in the percentiles
//! instead of slowing the load down.
//!
//! Target: with no `--seed`, a dev cluster started in this process in a temporary directory,
//! through the same code as `tally dev` (1 sequencer node + 3 storage nodes on loopback QUIC,
//! file epoch store, dev LogsDB sizes); the load generator shares the process and its tokio
//! runtime. With `--seed HOST:PORT` (and `--certs DIR`), a running cluster (`tally dev`, or
//! real servers).
//!
//! Logs: the durability is a log attribute, so each mode has its own logs: `--logs N` logs
//! (default 4) from 1001 for `durable`, from 2001 for `fast`, created with `--replication`
//! (default 2, as `tally dev`) unless they exist (an existing log of the wrong durability is an
//! error). The appends of every task rotate over the mode's logs.
//!
//! Each case first runs unmeasured for a warm-up (1 s; `--quick` 0.5 s: connections,
//! sequencer activations), then `--duration` seconds (default 10, `--quick` 2) are measured:
//! every append started in that interval counts, and the rate divides the successful ones by
//! the time from the start of the interval to the last acknowledgement. Also reported: the
//! process's CPU use in cores (`/proc/self/stat`), and with the in-process cluster the storage
//! nodes' LogsDB counters over the measured interval: WAL fsyncs per second, durable writes
//! per fsync, and records written per append (R, unless store timeouts sent further waves).
//! `--store-timeout-ms` overrides the client's first-wave store timeout, `--coalesce-in-flight`
//! and `--coalesce-max-records` the client's coalescing of concurrent appends to one log
//! (diagnostics: the defaults are the client's own; `--coalesce-max-records 1` sends every
//! append alone with its own grant, STOREs and report, as the client did before coalescing,
//! except that a log's grant requests still go one at a time).
//! With the in-process cluster, LogsDB write requests per append (`db_writes_per_append`:
//! the STOREs, about R when every append goes alone and R / n when batches of n appends
//! share their STOREs, plus the release points the sequencer broadcasts, which add about one
//! per append when appends are sparse) shows the coalescing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::{Client, ClientConfig};
use tally_common::LogId;
use tally_common::meta::{Durability, LogAttributes, Roles};
use tally_common::wire::ErrorCode;
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_epochstore::{EpochStore, FileEpochStore};
use tally_storage_node::logsdb::WriteStats;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::log::{DurabilityArg, call_cluster};
use crate::{dev, node};

#[derive(Debug, Args)]
pub struct WriteBenchArgs {
    /// Benchmark a running cluster through these nodes (`host:port`, comma-separated) instead
    /// of a dev cluster started in this process.
    #[arg(long, env = "TALLY_SEED", value_delimiter = ',')]
    seed: Vec<String>,
    /// Certificates for `--seed`: `ca.pem`, `client.pem`, `client.key`
    /// [default: $TALLY_DEV_DIR/certs, else ./.tally-dev/certs].
    #[arg(long, env = "TALLY_CERTS", requires = "seed")]
    certs: Option<PathBuf>,
    /// A short run (CI smoke): 2 s per case unless `--duration` says otherwise.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds measured per case [default: 10, with --quick 2].
    #[arg(long)]
    duration: Option<f64>,
    /// Logs per durability mode that the appends rotate over (durable: 1001.., fast: 2001..).
    #[arg(long, alias = "log", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    logs: u64,
    /// Appends in flight (closed-loop tasks), one case each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Open-loop rates (appends per second, comma-separated), one case each, run instead of
    /// the closed-loop cases: appends start on a fixed schedule whatever the answers, and
    /// latency counts from each append's intended start, so a stall is charged to every
    /// append it delays (no coordinated omission).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Durability modes, one set of cases each.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "durable,fast"
    )]
    durability: Vec<DurabilityArg>,
    /// Replication of the logs the benchmark creates.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    replication: u8,
    /// The client's store timeout of the first wave, in milliseconds [default: the client's
    /// default, 10 ms]; a store not answered in time is sent again to a new copyset.
    #[arg(long)]
    store_timeout_ms: Option<u64>,
    /// Coalescing: batches of one log between grant request and outcome at once [default:
    /// the client's, 2].
    #[arg(long)]
    coalesce_in_flight: Option<usize>,
    /// Coalescing: records one batch of concurrent appends holds at most [default: the
    /// client's, 1024]; 1 sends every append alone with its own grant, STOREs and report
    /// (a log's grant requests still go one at a time).
    #[arg(long)]
    coalesce_max_records: Option<u32>,
}

pub(super) const RECORD_BYTES: usize = 1024;
const DISTINCT_PAYLOADS: usize = 64;
pub(super) const STORAGE_NODES: u32 = 3;
const FIRST_DURABLE_LOG: u64 = 1001;
const FIRST_FAST_LOG: u64 = 2001;
/// Distinct error messages printed per case (all errors are counted).
const ERRORS_SHOWN: usize = 5;
/// Most appends an open-loop case has outstanding; later starts are skipped (and counted).
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 100_000;

#[derive(Debug, Serialize)]
struct Case {
    appends_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    errors: u64,
    appends: u64,
    /// CPU time of this process (load generator, and with no `--seed` the whole cluster) per
    /// second of the measured interval: 2.0 is both cores of a 2-core machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_cores: Option<f64>,
    /// In-process cluster only: WAL fsyncs per second over all storage nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_fsyncs_per_sec: Option<f64>,
    /// In-process cluster only: durable writes acknowledged per WAL fsync.
    #[serde(skip_serializing_if = "Option::is_none")]
    stores_per_fsync: Option<f64>,
    /// In-process cluster only: records LogsDB wrote per successful append (R when no store
    /// was sent twice; more when store timeouts sent further waves).
    #[serde(skip_serializing_if = "Option::is_none")]
    records_per_append: Option<f64>,
    /// In-process cluster only: LogsDB write requests (STOREs, release points) per successful
    /// append: about R plus the releases when every append goes alone, R / n when batches of
    /// n appends share their STOREs.
    #[serde(skip_serializing_if = "Option::is_none")]
    db_writes_per_append: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    target: String,
    record_bytes: usize,
    logs_per_mode: u64,
    replication: u8,
    duration_secs: f64,
    warmup_secs: f64,
    quick: bool,
    cases: BTreeMap<String, Case>,
    /// `durable_c256.appends_per_sec / durable_c1.appends_per_sec` (when both ran).
    group_commit_gain: Option<f64>,
}

fn mode_name(d: DurabilityArg) -> &'static str {
    match d {
        DurabilityArg::Durable => "durable",
        DurabilityArg::Fast => "fast",
    }
}

fn mode_logs(d: DurabilityArg, n: u64) -> Vec<LogId> {
    let first = match d {
        DurabilityArg::Durable => FIRST_DURABLE_LOG,
        DurabilityArg::Fast => FIRST_FAST_LOG,
    };
    (first..first + n).map(LogId).collect()
}

pub fn run(args: WriteBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|&c| c > 0),
        "--concurrency needs positive numbers"
    );
    anyhow::ensure!(!args.durability.is_empty(), "--durability names no mode");
    if let Some(d) = args.duration {
        anyhow::ensure!(
            d.is_finite() && d > 0.0,
            "--duration must be a positive number of seconds"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run_async(args))
}

/// The cluster a benchmark measures: the one at `seed` (certificates in `certs`, default the
/// dev directory's), or, with no seed, a dev cluster started in this process (stop it with
/// [`LocalCluster::stop`]). Returns it, the client seeds, the certificates directory and a
/// description for the report.
pub(super) async fn target_cluster(
    seed: &[String],
    certs: Option<&std::path::Path>,
    replication: u8,
) -> anyhow::Result<(Option<LocalCluster>, Vec<String>, PathBuf, String)> {
    if seed.is_empty() {
        eprintln!(
            "starting a dev cluster in this process (1 sequencer + {STORAGE_NODES} storage nodes)"
        );
        let (local, seed, certs) = LocalCluster::start(replication).await?;
        Ok((
            Some(local),
            vec![seed.to_string()],
            certs,
            format!("in-process dev cluster (1 sequencer + {STORAGE_NODES} storage nodes)"),
        ))
    } else {
        let certs = certs.map_or_else(dev::default_certs_dir, |c| c.to_owned());
        let target = format!("cluster at {}", seed.join(","));
        Ok((None, seed.to_vec(), certs, target))
    }
}

/// A dev cluster in this process (the `tally dev` machinery in a temporary directory).
pub(super) struct LocalCluster {
    nodes: Vec<node::RunningNode>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl LocalCluster {
    pub(super) async fn start(
        replication: u8,
    ) -> anyhow::Result<(LocalCluster, SocketAddr, PathBuf)> {
        anyhow::ensure!(u32::from(replication) <= STORAGE_NODES);
        let tmp = tempfile::Builder::new()
            .prefix("tally-bench-write-")
            .tempdir()?;
        let dir = tmp.path().canonicalize()?;
        let certs = dir.join("certs");
        dev::ensure_certs(&certs)?;
        let store: Arc<dyn EpochStore> = Arc::new(FileEpochStore::open(dir.join("epochstore"))?);
        let shutdown = CancellationToken::new();
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut nodes = Vec::new();
        let started = async {
            for id in 2..=STORAGE_NODES + 1 {
                let roles = Roles {
                    sequencer: false,
                    storage: true,
                };
                let spec = dev::node_spec(&dir, id, roles, any_port);
                nodes.push(node::start(spec, store.clone(), shutdown.clone()).await?);
            }
            let roles = Roles {
                sequencer: true,
                storage: false,
            };
            let spec = dev::node_spec(&dir, 1, roles, any_port);
            nodes.push(node::start(spec, store.clone(), shutdown.clone()).await?);
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = started {
            shutdown.cancel();
            dev::stop(nodes).await;
            return Err(e);
        }
        let members: Vec<_> = nodes.iter().map(|n| n.id).collect();
        for node in &nodes {
            node::wait_for_members(node, &members).await;
        }
        let seed = nodes.last().expect("the sequencer node").addr;
        let cluster = LocalCluster {
            nodes,
            shutdown,
            _dir: tmp,
        };
        Ok((cluster, seed, certs))
    }

    /// LogsDB write counters summed over the storage nodes.
    fn write_stats(&self) -> WriteStats {
        let mut sum = WriteStats::default();
        for s in self.nodes.iter().filter_map(|n| n.storage()) {
            let w = s.logsdb().write_stats();
            sum.groups += w.groups;
            sum.requests += w.requests;
            sum.records += w.records;
            sum.wal_syncs += w.wal_syncs;
            sum.synced_replies += w.synced_replies;
        }
        sum
    }

    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        anyhow::ensure!(
            dev::stop(self.nodes).await,
            "some nodes of the benchmark cluster did not stop cleanly"
        );
        Ok(())
    }
}

async fn run_async(args: WriteBenchArgs) -> anyhow::Result<()> {
    let duration =
        Duration::from_secs_f64(args.duration.unwrap_or(if args.quick { 2.0 } else { 10.0 }));
    let warmup = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };

    let (local, seeds, certs, target) =
        target_cluster(&args.seed, args.certs.as_deref(), args.replication).await?;

    let result = bench(&args, &seeds, &certs, local.as_ref(), duration, warmup).await;
    if let Some(local) = local {
        local.stop().await?;
    }
    let (cases, order) = result?;

    let rate = |name: &str| cases.get(name).map(|c| c.appends_per_sec);
    let group_commit_gain = match (rate("durable_c256"), rate("durable_c1")) {
        (Some(many), Some(one)) if one > 0.0 => Some(many / one),
        _ => None,
    };
    println!(
        "write path end to end: {target}, {RECORD_BYTES}-byte records, {} logs per mode, R={}, {:.1} s per case",
        args.logs,
        args.replication,
        duration.as_secs_f64()
    );
    println!(
        "{:<14} {:>10} {:>8} {:>8} {:>8} {:>6} {:>5} {:>8} {:>12} {:>11} {:>13}",
        "case",
        "appends/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "errors",
        "cpu",
        "fsyncs/s",
        "writes/fsync",
        "recs/append",
        "dbw/append"
    );
    for name in &order {
        let c = &cases[name];
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
        };
        println!(
            "{name:<14} {:>10.0} {:>8} {:>8} {:>8} {:>6} {:>5} {:>8} {:>12} {:>11} {:>13}",
            c.appends_per_sec,
            c.p50_us,
            c.p99_us,
            c.p999_us,
            c.errors,
            opt(c.cpu_cores, 2),
            opt(c.wal_fsyncs_per_sec, 0),
            opt(c.stores_per_fsync, 1),
            opt(c.records_per_append, 2),
            opt(c.db_writes_per_append, 3)
        );
    }
    match group_commit_gain {
        Some(g) => println!(
            "group-commit gain (durable c256 ÷ durable c1): {g:.1}× (target ≥ 20×: {})",
            if g >= 20.0 { "met" } else { "missed" }
        ),
        None => println!("group-commit gain: needs the durable cases at concurrency 1 and 256"),
    }
    let errors: u64 = cases.values().map(|c| c.errors).sum();
    if errors > 0 {
        println!("{errors} appends failed in total (see the messages above)");
    }

    if let Some(path) = &args.json {
        let report = Report {
            benchmark: "write",
            target,
            record_bytes: RECORD_BYTES,
            logs_per_mode: args.logs,
            replication: args.replication,
            duration_secs: duration.as_secs_f64(),
            warmup_secs: warmup.as_secs_f64(),
            quick: args.quick,
            cases,
            group_commit_gain,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Creates the logs, connects the client and runs every case; the cases by name and their
/// order.
async fn bench(
    args: &WriteBenchArgs,
    seeds: &[String],
    certs: &std::path::Path,
    local: Option<&LocalCluster>,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<(BTreeMap<String, Case>, Vec<String>)> {
    for &mode in &args.durability {
        ensure_logs(
            seeds,
            certs,
            &mode_logs(mode, args.logs),
            mode,
            args.replication,
        )
        .await?;
    }
    let mut config = ClientConfig::new(seeds.to_vec(), certs);
    if let Some(ms) = args.store_timeout_ms {
        config.append.store_timeout_initial = Duration::from_millis(ms.max(1));
    }
    if let Some(n) = args.coalesce_in_flight {
        config.coalesce.max_batches_in_flight = n;
    }
    if let Some(n) = args.coalesce_max_records {
        config.coalesce.max_batch_records = n;
    }
    let client = Client::connect(config).await.with_context(|| {
        format!(
            "cannot connect to {} with the certificates in {}",
            seeds.join(","),
            certs.display()
        )
    })?;
    let payloads = Arc::new(payloads());
    let mut cases = BTreeMap::new();
    let mut order = Vec::new();
    for &mode in &args.durability {
        let logs = Arc::new(mode_logs(mode, args.logs));
        for &rate in &args.rate {
            let name = format!("{}_open{rate:.0}", mode_name(mode));
            eprintln!(
                "{name}: {rate:.0} appends/s open loop, {:.1} s warm-up + {:.1} s",
                warmup.as_secs_f64(),
                duration.as_secs_f64()
            );
            let case = run_open_case(
                &client, &logs, &payloads, rate, warmup, duration, local, &name,
            )
            .await?;
            cases.insert(name.clone(), case);
            order.push(name);
        }
        let closed: &[usize] = if args.rate.is_empty() {
            &args.concurrency
        } else {
            &[]
        };
        for &concurrency in closed {
            let name = format!("{}_c{concurrency}", mode_name(mode));
            eprintln!(
                "{name}: {concurrency} appends in flight, {:.1} s warm-up + {:.1} s",
                warmup.as_secs_f64(),
                duration.as_secs_f64()
            );
            let case = run_case(
                &client,
                &logs,
                &payloads,
                concurrency,
                warmup,
                duration,
                local,
                &name,
            )
            .await?;
            cases.insert(name.clone(), case);
            order.push(name);
        }
    }
    client.close().await;
    Ok((cases, order))
}

/// 64 distinct incompressible 1 KiB payloads.
pub(super) fn payloads() -> Vec<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..DISTINCT_PAYLOADS)
        .map(|_| {
            (0..RECORD_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

/// What one closed-loop task measured.
struct TaskResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_ack: Instant,
}

pub(super) fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

#[allow(clippy::too_many_arguments)]
async fn run_case(
    client: &Client,
    logs: &Arc<Vec<LogId>>,
    payloads: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    local: Option<&LocalCluster>,
    name: &str,
) -> anyhow::Result<Case> {
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let progress = crate::cli::progress::Progress::spinner(format!(
        "{name}: {:.0?} of warm-up, then {:.0?} measured",
        warmup, duration
    ));
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let (client, logs, payloads) = (client.clone(), logs.clone(), payloads.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult {
                hist: latency_histogram()?,
                ok: 0,
                errors: BTreeMap::new(),
                last_ack: measure_from,
            };
            let mut k = i;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let log = logs[k % logs.len()];
                let payload = payloads[k % payloads.len()].clone();
                k += 1;
                let outcome = client.append(log, payload).await;
                let done = Instant::now();
                let measured = start >= measure_from;
                match outcome {
                    Ok(_) if measured => {
                        let us = (done - start).as_micros().max(1);
                        r.hist
                            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
                        r.ok += 1;
                        r.last_ack = r.last_ack.max(done);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if measured {
                            *r.errors.entry(e.to_string()).or_default() += 1;
                        }
                        // An error that comes back at once must not turn into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            anyhow::Ok(r)
        }));
    }
    tokio::time::sleep_until(measure_from).await;
    let before = Before::now(local);
    let mut hist = latency_histogram()?;
    let (mut ok, mut last_ack) = (0u64, measure_from);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let r = t.await.context("append task panicked")??;
        hist.add(&r.hist)?;
        ok += r.ok;
        last_ack = last_ack.max(r.last_ack);
        for (msg, n) in r.errors {
            *errors.entry(msg).or_default() += n;
        }
    }
    progress.finish();
    let elapsed = (last_ack - measure_from).max(duration);
    Ok(finish_case(
        name, local, before, elapsed, &hist, ok, &errors,
    ))
}

/// The cluster's counters when the measured interval started.
struct Before {
    stats: Option<WriteStats>,
    cpu: Option<f64>,
}

impl Before {
    fn now(local: Option<&LocalCluster>) -> Before {
        Before {
            stats: local.map(LocalCluster::write_stats),
            cpu: process_cpu_secs(),
        }
    }
}

/// One open-loop case: appends start at `rate` per second on a fixed schedule, each in its
/// own task, rotating over `logs`; latency counts from the intended start. At most
/// [`OPEN_LOOP_MAX_IN_FLIGHT`] appends are outstanding: a start due while that many are is
/// skipped and counted as an error (a stuck cluster ends the case instead of piling up tasks).
#[allow(clippy::too_many_arguments)]
async fn run_open_case(
    client: &Client,
    logs: &Arc<Vec<LogId>>,
    payloads: &Arc<Vec<Vec<u8>>>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    local: Option<&LocalCluster>,
    name: &str,
) -> anyhow::Result<Case> {
    anyhow::ensure!(rate > 0.0, "--rate needs positive rates");
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let progress = crate::cli::progress::Progress::spinner(format!(
        "{name}: {:.0?} of warm-up, then {:.0?} measured",
        warmup, duration
    ));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut before = None;
    let mut skipped = 0u64;
    for i in 0u64.. {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let measured = intended >= measure_from;
        if measured && before.is_none() {
            before = Some(Before::now(local));
        }
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= OPEN_LOOP_MAX_IN_FLIGHT {
            skipped += u64::from(measured);
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k = i as usize;
        let (client, log, payload) = (
            client.clone(),
            logs[k % logs.len()],
            payloads[k % payloads.len()].clone(),
        );
        let (done_tx, in_flight) = (done_tx.clone(), in_flight.clone());
        tokio::spawn(async move {
            let outcome = client.append(log, payload).await;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let _ = done_tx.send((measured, intended, Instant::now(), outcome.map(|_| ())));
        });
    }
    drop(done_tx);
    let before = before.unwrap_or_else(|| Before::now(local));
    let mut hist = latency_histogram()?;
    let (mut ok, mut last_ack) = (0u64, measure_from);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    if skipped > 0 {
        errors.insert(
            format!("skipped: {OPEN_LOOP_MAX_IN_FLIGHT} appends were in flight"),
            skipped,
        );
    }
    while let Some((measured, intended, done, outcome)) = done_rx.recv().await {
        if !measured {
            continue;
        }
        match outcome {
            Ok(()) => {
                let us = (done - intended).as_micros().max(1);
                hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
                ok += 1;
                last_ack = last_ack.max(done);
            }
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    progress.finish();
    let elapsed = (last_ack - measure_from).max(duration);
    Ok(finish_case(
        name, local, before, elapsed, &hist, ok, &errors,
    ))
}

/// The figures of a case from what was measured over `elapsed`.
fn finish_case(
    name: &str,
    local: Option<&LocalCluster>,
    before: Before,
    elapsed: Duration,
    hist: &Histogram<u64>,
    ok: u64,
    errors: &BTreeMap<String, u64>,
) -> Case {
    let (stats_before, cpu_before) = (before.stats, before.cpu);
    let stats_after = local.map(LocalCluster::write_stats);
    let cpu_cores = match (cpu_before, process_cpu_secs()) {
        (Some(b), Some(a)) => Some((a - b) / elapsed.as_secs_f64()),
        _ => None,
    };
    let error_count: u64 = errors.values().sum();
    for (msg, n) in errors.iter().take(ERRORS_SHOWN) {
        eprintln!("{name}: {n} × {msg}");
    }
    if errors.len() > ERRORS_SHOWN {
        eprintln!(
            "{name}: … and {} other error messages",
            errors.len() - ERRORS_SHOWN
        );
    }
    let (wal_fsyncs_per_sec, stores_per_fsync, records_per_append, db_writes_per_append) =
        match (stats_before, stats_after) {
            (Some(b), Some(a)) => {
                let syncs = a.wal_syncs - b.wal_syncs;
                let replies = a.synced_replies - b.synced_replies;
                let records = a.records - b.records;
                let requests = a.requests - b.requests;
                (
                    Some(syncs as f64 / elapsed.as_secs_f64()),
                    (syncs > 0).then(|| replies as f64 / syncs as f64),
                    (ok > 0).then(|| records as f64 / ok as f64),
                    (ok > 0).then(|| requests as f64 / ok as f64),
                )
            }
            _ => (None, None, None, None),
        };
    Case {
        appends_per_sec: ok as f64 / elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        errors: error_count,
        appends: ok,
        cpu_cores,
        wal_fsyncs_per_sec,
        stores_per_fsync,
        records_per_append,
        db_writes_per_append,
    }
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, clock ticks of
/// 1/100 s); `None` elsewhere.
pub(super) fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start with field 3, the state;
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Makes sure `logs` exist with durability `mode`: creates the missing ones through a
/// sequencer node (`CreateLog`), checks the existing ones (`GetLogMetadata`).
pub(super) async fn ensure_logs(
    seeds: &[String],
    certs: &std::path::Path,
    logs: &[LogId],
    mode: DurabilityArg,
    replication: u8,
) -> anyhow::Result<()> {
    let durability = match mode {
        DurabilityArg::Durable => Durability::Durable,
        DurabilityArg::Fast => Durability::Fast,
    };
    let attributes = LogAttributes {
        replication,
        durability,
        ..LogAttributes::default()
    };
    for &log in logs {
        let create = ClientRequest::CreateLog {
            log,
            attributes: attributes.clone(),
        };
        match call_cluster(seeds, certs, &create, true).await? {
            ClientResponse::LogCreated => {}
            ClientResponse::Error(e) if e.code == ErrorCode::AlreadyExists => {
                let show = ClientRequest::GetLogMetadata { log };
                match call_cluster(seeds, certs, &show, true).await? {
                    ClientResponse::LogMetadata(meta) => anyhow::ensure!(
                        meta.attributes.durability == durability,
                        "log {log} exists with durability {:?}, the benchmark needs {:?}",
                        meta.attributes.durability,
                        durability
                    ),
                    other => anyhow::bail!("log {log}: unexpected answer {other:?}"),
                }
            }
            other => anyhow::bail!("cannot create log {log}: {other:?}"),
        }
    }
    Ok(())
}
