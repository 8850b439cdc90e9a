//! `tally bench read`: the read path end to end (issue 6), in three phases on the cluster of
//! `tally bench write` (a dev cluster in this process, R = 2 over 3 storage nodes, or
//! `--seed HOST:PORT --certs DIR`).
//!
//! 1. **Load**: `--load-mib` MiB (default 1024, `--quick` 64) of 1 KiB incompressible records
//!    appended to one durable log (`--log`, default 3001) with [`Client::append_batch`], 256
//!    records per call, 16 calls in flight (the client coalesces them into ~1 MiB batches).
//!    A batch that certainly was not appended is sent again; one whose outcome is unknown is
//!    counted (its records may then show up in the backfill without an LSN to expect).
//! 2. **Backfill**: a fresh reader `from` the oldest LSN (or, when the log held records before
//!    the load, the first LSN loaded) `until` the tail, timed from `Client::read` to the last
//!    delivery, once with single-copy delivery (the default: one node of each copyset ships
//!    the record) and once all-send-all (every node ships every copy). Records/s and MB/s
//!    count delivered payload bytes (MB = 10^6 bytes). The reader's own counters give the
//!    payload bytes shipped per payload byte delivered (≈ 1 single copy, ≈ R all-send-all).
//!    Verified while reading: every acknowledged LSN is delivered, in order, nothing else
//!    (unless some load appends ended indeterminate), no `DataLoss` gap; gaps are counted.
//! 3. **Tail**: a reader follows the next log (`--log` + 1) from its tail while a writer
//!    appends 1 KiB records on an open-loop schedule, `--tail-rate` per second (default
//!    1,000), each append its own task so a slow one never delays the next: a warm-up (1 s,
//!    `--quick` 0.5 s) then `--tail-secs` (default 10, `--quick` 3) measured. Every payload
//!    starts with the time it was sent (ns since an `Instant` this process shares with the
//!    reader) and a measured flag; on delivery the reader records now − sent. Verified: the
//!    reader delivers every acknowledged append. Also reported: the appends' ack latency.
//!
//! Exits with an error (after printing and writing the JSON) when a verification failed.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::{
    Client, ClientConfig, Delivery, GapKind, ReadFrom, ReadOptions, ReadUntil, Reader,
};
use tally_common::{LogId, Lsn};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::write::{
    RECORD_BYTES, ensure_logs, latency_histogram, payloads, process_cpu_secs, target_cluster,
};
use crate::cli::log::DurabilityArg;
use crate::cli::read::gap_name;

#[derive(Debug, Args)]
pub struct ReadBenchArgs {
    /// Benchmark a running cluster through these nodes (`host:port`, comma-separated) instead
    /// of a dev cluster started in this process.
    #[arg(long, env = "TALLY_SEED", value_delimiter = ',')]
    seed: Vec<String>,
    /// Certificates for `--seed`: `ca.pem`, `client.pem`, `client.key`
    /// [default: $TALLY_DEV_DIR/certs, else ./.tally-dev/certs].
    #[arg(long, env = "TALLY_CERTS", requires = "seed")]
    certs: Option<PathBuf>,
    /// A short run (CI smoke): 64 MiB loaded, 0.5 s + 3 s of tailing.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// MiB of payload loaded for the backfill [default: 1024, with --quick 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    load_mib: Option<u64>,
    /// Appends per second of the tail phase's writer (open loop).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    tail_rate: u64,
    /// Seconds measured in the tail phase [default: 10, with --quick 3].
    #[arg(long)]
    tail_secs: Option<f64>,
    /// The log loaded and backfilled; the tail phase uses the next one. Created durable
    /// unless it exists.
    #[arg(long, default_value_t = 3001)]
    log: u64,
    /// Backfill rounds, each reading the whole load once single copy and once all-send-all;
    /// the best round of each mode is reported.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// The backfill readers' window: LSNs each node may ship ahead of the application
    /// [default: the client's, 512] (diagnostic).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    window: Option<u64>,
    /// Replication of the logs the benchmark creates.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    replication: u8,
}

const LOAD_BATCH_RECORDS: u64 = 256;
const LOAD_CALLS_IN_FLIGHT: usize = 16;
/// Tries of a load batch whose earlier tries certainly were not appended.
const LOAD_TRIES: u32 = 10;
/// How long the tail reader may take to deliver the last acknowledged append once the writer
/// stopped.
const TAIL_DRAIN: Duration = Duration::from_secs(30);
/// Bytes of a tail payload that carry the send time (8, little endian) and the measured flag.
const TAIL_STAMP_BYTES: usize = 9;

#[derive(Debug, Serialize)]
struct LoadReport {
    records: u64,
    payload_bytes: u64,
    secs: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    /// Batch calls that failed and were retried (certainly not appended).
    retried_batches: u64,
    /// Batch calls whose outcome is unknown (their records may be in the log).
    indeterminate_batches: u64,
}

#[derive(Debug, Serialize)]
struct BackfillCase {
    single_copy: bool,
    records: u64,
    payload_bytes: u64,
    secs: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    /// From `Client::read` to the first delivery.
    first_delivery_ms: f64,
    /// Gaps delivered, by kind.
    gaps: BTreeMap<&'static str, u64>,
    /// MB/s of every round, in order (the other figures are of the best round).
    rounds_mb_per_sec: Vec<f64>,
    /// `ReaderStats`: record copies the nodes shipped, and payload bytes shipped per payload
    /// byte delivered.
    records_received: u64,
    bytes_received_per_delivered: f64,
    rewinds: u64,
    /// CPU time of this process (reader, and with no `--seed` the whole cluster) per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_cores: Option<f64>,
    /// Acknowledged LSNs not delivered, and records delivered at LSNs not acknowledged.
    missing: u64,
    unexpected: u64,
}

#[derive(Debug, Serialize)]
struct TailCase {
    rate_per_sec: u64,
    measured_secs: f64,
    /// Measured appends acknowledged, and how many of them the reader delivered.
    appends: u64,
    delivered: u64,
    append_errors: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Append call to LSN, for the same measured appends.
    append_p50_us: u64,
    append_p99_us: u64,
    gaps: BTreeMap<&'static str, u64>,
    /// Acknowledged appends (warm-up included) the reader did not deliver in time.
    missing: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    target: String,
    record_bytes: usize,
    replication: u8,
    quick: bool,
    log: u64,
    tail_log: u64,
    /// The backfill readers' window (LSNs per node ahead of the application).
    window: u64,
    /// Single-copy delivery (the reader's default).
    backfill_mb_per_sec: f64,
    backfill_records_per_sec: f64,
    tail_p50_us: u64,
    tail_p99_us: u64,
    tail_p999_us: u64,
    load: LoadReport,
    /// `single_copy` and `all_send_all`.
    backfill: BTreeMap<&'static str, BackfillCase>,
    tail: TailCase,
    /// Verification failures (empty when everything was delivered as it should be).
    problems: Vec<String>,
}

pub fn run(args: ReadBenchArgs) -> anyhow::Result<()> {
    if let Some(s) = args.tail_secs {
        anyhow::ensure!(
            s.is_finite() && s > 0.0,
            "--tail-secs must be a positive number of seconds"
        );
    }
    anyhow::ensure!(
        args.log < u64::MAX,
        "--log must leave room for the tail log"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: ReadBenchArgs) -> anyhow::Result<()> {
    let (local, seeds, certs, target) =
        target_cluster(&args.seed, args.certs.as_deref(), args.replication).await?;
    let result = bench(&args, &seeds, &certs, target).await;
    if let Some(local) = local {
        local.stop().await?;
    }
    let report = result?;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    anyhow::ensure!(
        report.problems.is_empty(),
        "the read path delivered wrongly: {}",
        report.problems.join("; ")
    );
    Ok(())
}

async fn bench(
    args: &ReadBenchArgs,
    seeds: &[String],
    certs: &Path,
    target: String,
) -> anyhow::Result<Report> {
    let (log, tail_log) = (LogId(args.log), LogId(args.log + 1));
    ensure_logs(
        seeds,
        certs,
        &[log, tail_log],
        DurabilityArg::Durable,
        args.replication,
    )
    .await?;
    let client = Client::connect(ClientConfig::new(seeds.to_vec(), certs))
        .await
        .with_context(|| {
            format!(
                "cannot connect to {} with the certificates in {}",
                seeds.join(","),
                certs.display()
            )
        })?;
    let result = phases(args, &client, log, tail_log, target).await;
    client.close().await;
    result
}

async fn phases(
    args: &ReadBenchArgs,
    client: &Client,
    log: LogId,
    tail_log: LogId,
    target: String,
) -> anyhow::Result<Report> {
    let payloads = Arc::new(payloads());
    let was_empty = client
        .is_log_empty(log)
        .await
        .with_context(|| format!("is log {log} empty"))?;
    let mib = args.load_mib.unwrap_or(if args.quick { 64 } else { 1024 });
    let records = mib * (1 << 20) / RECORD_BYTES as u64;
    eprintln!("load: {records} records ({mib} MiB) into log {log}");
    let (load, mut acked) = load(client, log, &payloads, records).await?;
    eprintln!(
        "load: {:.1} s, {:.0} records/s",
        load.secs, load.records_per_sec
    );
    acked.sort_by_key(|r| *r.start());
    let from = match (was_empty, acked.first()) {
        (true, _) | (false, None) => ReadFrom::Oldest,
        (false, Some(first)) => {
            eprintln!(
                "log {log} held records before the load: backfill from {}",
                first.start()
            );
            ReadFrom::Lsn(*first.start())
        }
    };

    let mut problems = Vec::new();
    // Alternating rounds, so neither mode always reads the colder caches; the best round of
    // each mode counts, every round is verified.
    let mut backfill: BTreeMap<&'static str, BackfillCase> = BTreeMap::new();
    for round in 1..=args.rounds {
        for (name, single_copy) in [("single_copy", true), ("all_send_all", false)] {
            eprintln!("backfill {name}, round {round}: log {log} until its tail");
            let mut options = ReadOptions {
                single_copy,
                ..ReadOptions::range(from, ReadUntil::Tail)
            };
            if let Some(w) = args.window {
                options.window = w;
            }
            let case = backfill_case(client, log, options, &acked).await?;
            if case.missing > 0 {
                problems.push(format!(
                    "backfill {name}: {} acknowledged records not delivered",
                    case.missing
                ));
            }
            if case.unexpected > 0 && load.indeterminate_batches == 0 {
                problems.push(format!(
                    "backfill {name}: {} records delivered that were never acknowledged",
                    case.unexpected
                ));
            }
            if let Some(n) = case.gaps.get(gap_name(GapKind::DataLoss)) {
                problems.push(format!("backfill {name}: {n} data-loss gaps"));
            }
            let mut rounds = Vec::new();
            if let Some(best) = backfill.remove(name) {
                rounds = best.rounds_mb_per_sec.clone();
                if best.mb_per_sec >= case.mb_per_sec {
                    rounds.push(case.mb_per_sec);
                    backfill.insert(
                        name,
                        BackfillCase {
                            rounds_mb_per_sec: rounds,
                            ..best
                        },
                    );
                    continue;
                }
            }
            rounds.push(case.mb_per_sec);
            backfill.insert(
                name,
                BackfillCase {
                    rounds_mb_per_sec: rounds,
                    ..case
                },
            );
        }
    }

    let warmup = Duration::from_millis(if args.quick { 500 } else { 1000 });
    let measured =
        Duration::from_secs_f64(
            args.tail_secs
                .unwrap_or(if args.quick { 3.0 } else { 10.0 }),
        );
    eprintln!(
        "tail: log {tail_log}, {} appends/s, {:.1} s warm-up + {:.1} s",
        args.tail_rate,
        warmup.as_secs_f64(),
        measured.as_secs_f64()
    );
    let tail = tail_case(
        client,
        tail_log,
        &payloads,
        args.tail_rate,
        warmup,
        measured,
    )
    .await?;
    if tail.missing > 0 {
        problems.push(format!(
            "tail: {} acknowledged appends not delivered within {} s",
            tail.missing,
            TAIL_DRAIN.as_secs()
        ));
    }
    if let Some(n) = tail.gaps.get(gap_name(GapKind::DataLoss)) {
        problems.push(format!("tail: {n} data-loss gaps"));
    }

    let single = &backfill["single_copy"];
    Ok(Report {
        benchmark: "read",
        target,
        record_bytes: RECORD_BYTES,
        replication: args.replication,
        quick: args.quick,
        log: log.0,
        tail_log: tail_log.0,
        window: args.window.unwrap_or(ReadOptions::default().window),
        backfill_mb_per_sec: single.mb_per_sec,
        backfill_records_per_sec: single.records_per_sec,
        tail_p50_us: tail.p50_us,
        tail_p99_us: tail.p99_us,
        tail_p999_us: tail.p999_us,
        load,
        backfill,
        tail,
        problems,
    })
}

/// Appends `records` records to `log`; the report and the acknowledged LSN ranges.
async fn load(
    client: &Client,
    log: LogId,
    payloads: &Arc<Vec<Vec<u8>>>,
    records: u64,
) -> anyhow::Result<(LoadReport, Vec<RangeInclusive<Lsn>>)> {
    let batches = records.div_ceil(LOAD_BATCH_RECORDS);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let progress = crate::cli::progress::Progress::bar(records, "load", "records");
    for _ in 0..LOAD_CALLS_IN_FLIGHT {
        let (client, payloads, next) = (client.clone(), payloads.clone(), next.clone());
        let progress = progress.clone();
        tasks.spawn(async move {
            let (mut acked, mut retried, mut indeterminate) = (Vec::new(), 0u64, 0u64);
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let first = b * LOAD_BATCH_RECORDS;
                let n = LOAD_BATCH_RECORDS.min(records - first);
                let batch: Vec<Vec<u8>> = (first..first + n)
                    .map(|k| payloads[k as usize % payloads.len()].clone())
                    .collect();
                let mut tries = 0;
                loop {
                    tries += 1;
                    match client.append_batch(log, batch.clone()).await {
                        Ok(lsns) => {
                            acked.push(lsns);
                            progress.inc(n);
                            break;
                        }
                        Err(e) if e.certainly_not_appended() && tries < LOAD_TRIES => {
                            retried += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) if e.certainly_not_appended() => {
                            anyhow::bail!("load: a batch failed {tries} times, last: {e}")
                        }
                        Err(e) => {
                            eprintln!(
                                "load: a batch of {n} records may not have been appended: {e}"
                            );
                            indeterminate += 1;
                            break;
                        }
                    }
                }
            }
            anyhow::Ok((acked, retried, indeterminate))
        });
    }
    let (mut acked, mut retried_batches, mut indeterminate_batches) = (Vec::new(), 0, 0);
    while let Some(t) = tasks.join_next().await {
        let (a, r, i) = t.context("load task panicked")??;
        acked.extend(a);
        retried_batches += r;
        indeterminate_batches += i;
    }
    progress.finish();
    let secs = start.elapsed().as_secs_f64();
    let records: u64 = acked.iter().map(range_len).sum();
    let payload_bytes = records * RECORD_BYTES as u64;
    let report = LoadReport {
        records,
        payload_bytes,
        secs,
        records_per_sec: records as f64 / secs,
        mb_per_sec: payload_bytes as f64 / 1e6 / secs,
        retried_batches,
        indeterminate_batches,
    };
    Ok((report, acked))
}

fn range_len(r: &RangeInclusive<Lsn>) -> u64 {
    r.end().0 - r.start().0 + 1
}

/// Walks the sorted acknowledged LSN ranges alongside the deliveries.
struct Expected<'a> {
    ranges: &'a [RangeInclusive<Lsn>],
    /// The next acknowledged LSN not yet delivered (`None`: all were).
    next: Option<(usize, u64)>,
    missing: u64,
    unexpected: u64,
}

impl<'a> Expected<'a> {
    fn new(ranges: &'a [RangeInclusive<Lsn>]) -> Expected<'a> {
        let next = ranges.first().map(|r| (0, r.start().0));
        Expected {
            ranges,
            next,
            missing: 0,
            unexpected: 0,
        }
    }

    fn advance(&mut self) {
        if let Some((i, lsn)) = self.next {
            self.next = if lsn < self.ranges[i].end().0 {
                Some((i, lsn + 1))
            } else {
                self.ranges.get(i + 1).map(|r| (i + 1, r.start().0))
            };
        }
    }

    /// A record delivered at `lsn` (deliveries come in increasing LSN order).
    fn delivered(&mut self, lsn: Lsn) {
        while let Some((_, next)) = self.next {
            if next >= lsn.0 {
                break;
            }
            self.missing += 1;
            self.advance();
        }
        match self.next {
            Some((_, next)) if next == lsn.0 => self.advance(),
            _ => self.unexpected += 1,
        }
    }

    /// The read ended: whatever was not delivered is missing.
    fn finish(&mut self) {
        while self.next.is_some() {
            self.missing += 1;
            self.advance();
        }
    }
}

async fn backfill_case(
    client: &Client,
    log: LogId,
    options: ReadOptions,
    acked: &[RangeInclusive<Lsn>],
) -> anyhow::Result<BackfillCase> {
    let single_copy = options.single_copy;
    let cpu_before = process_cpu_secs();
    let start = Instant::now();
    let mut reader = client
        .read(log, options)
        .await
        .with_context(|| format!("start reading log {log}"))?;
    let mut expected = Expected::new(acked);
    let (mut records, mut payload_bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, start);
    let mut gaps = BTreeMap::new();
    let mut last_lsn = Lsn::INVALID;
    while let Some(delivery) = reader.next().await {
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        let delivery = delivery.with_context(|| format!("reading log {log}"))?;
        anyhow::ensure!(
            delivery.from() > last_lsn,
            "log {log}: delivery at {} after {last_lsn}",
            delivery.from()
        );
        last_lsn = delivery.to();
        match delivery {
            Delivery::Record(r) => {
                records += 1;
                payload_bytes += r.payload.len() as u64;
                expected.delivered(r.header.lsn);
            }
            Delivery::Gap { kind, .. } => *gaps.entry(gap_name(kind)).or_default() += 1,
        }
    }
    expected.finish();
    let secs = (last - start).as_secs_f64().max(1e-9);
    let cpu_cores = match (cpu_before, process_cpu_secs()) {
        (Some(b), Some(a)) => Some((a - b) / secs),
        _ => None,
    };
    let stats = reader.stats();
    Ok(BackfillCase {
        single_copy,
        records,
        payload_bytes,
        secs,
        records_per_sec: records as f64 / secs,
        mb_per_sec: payload_bytes as f64 / 1e6 / secs,
        first_delivery_ms: first.map_or(0.0, |f| (f - start).as_secs_f64() * 1e3),
        gaps,
        rounds_mb_per_sec: Vec::new(),
        records_received: stats.records_received,
        bytes_received_per_delivered: stats.payload_bytes_received as f64
            / stats.payload_bytes_delivered.max(1) as f64,
        rewinds: stats.rewinds,
        cpu_cores,
        missing: expected.missing,
        unexpected: expected.unexpected,
    })
}

/// What the tail reader saw.
struct TailRead {
    hist: Histogram<u64>,
    delivered_measured: u64,
    lsns: Vec<Lsn>,
    gaps: BTreeMap<&'static str, u64>,
}

/// Nanoseconds since `base`, the clock the tail payloads carry.
fn nanos_since(base: std::time::Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

async fn tail_case(
    client: &Client,
    log: LogId,
    payloads: &Arc<Vec<Vec<u8>>>,
    rate: u64,
    warmup: Duration,
    measured: Duration,
) -> anyhow::Result<TailCase> {
    let base = std::time::Instant::now();
    let tail = client
        .tail_lsn(log)
        .await
        .with_context(|| format!("the tail of log {log}"))?;
    let reader = client
        .read(
            log,
            ReadOptions::range(ReadFrom::Lsn(tail.next()), ReadUntil::Forever),
        )
        .await
        .with_context(|| format!("follow log {log}"))?;
    // The writer says up to which LSN the reader must deliver once it stopped appending.
    let (stop_tx, stop_rx) = watch::channel(None);
    let reading = tokio::spawn(follow(reader, base, stop_rx));

    let warm_ticks = (warmup.as_secs_f64() * rate as f64).round() as u64;
    let measured_ticks = (measured.as_secs_f64() * rate as f64).round().max(1.0) as u64;
    let acks = Arc::new(Mutex::new(Acks {
        hist: latency_histogram()?,
        lsns: Vec::new(),
        measured_ok: 0,
        errors: 0,
    }));
    let start = Instant::now();
    let mut appends = JoinSet::new();
    for i in 0..warm_ticks + measured_ticks {
        tokio::time::sleep_until(start + Duration::from_nanos(i * 1_000_000_000 / rate)).await;
        let is_measured = i >= warm_ticks;
        let mut payload = payloads[i as usize % payloads.len()].clone();
        payload[..8].copy_from_slice(&nanos_since(base).to_le_bytes());
        payload[TAIL_STAMP_BYTES - 1] = u8::from(is_measured);
        let (client, acks) = (client.clone(), acks.clone());
        appends.spawn(async move {
            let sent = Instant::now();
            let outcome = client.append(log, payload).await;
            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut a = acks.lock().expect("acks lock");
            match outcome {
                Ok(lsn) => {
                    a.lsns.push(lsn);
                    if is_measured {
                        a.measured_ok += 1;
                        a.hist.saturating_record(us.max(1));
                    }
                }
                Err(e) => {
                    if a.errors == 0 {
                        eprintln!("tail: append failed: {e}");
                    }
                    a.errors += 1;
                }
            }
        });
        while let Some(t) = appends.try_join_next() {
            t.context("append task panicked")?;
        }
    }
    while let Some(t) = appends.join_next().await {
        t.context("append task panicked")?;
    }
    let acks = Arc::try_unwrap(acks)
        .map_err(|_| anyhow::anyhow!("append tasks still hold the results"))?
        .into_inner()
        .expect("acks lock");
    let last = acks.lsns.iter().copied().max().unwrap_or(tail);
    stop_tx.send_replace(Some(last));
    let read = reading.await.context("tail reader panicked")??;

    let mut delivered = read.lsns;
    delivered.sort_unstable();
    let missing = acks
        .lsns
        .iter()
        .filter(|l| delivered.binary_search(l).is_err())
        .count() as u64;
    Ok(TailCase {
        rate_per_sec: rate,
        measured_secs: measured.as_secs_f64(),
        appends: acks.measured_ok,
        delivered: read.delivered_measured,
        append_errors: acks.errors,
        p50_us: read.hist.value_at_quantile(0.50),
        p99_us: read.hist.value_at_quantile(0.99),
        p999_us: read.hist.value_at_quantile(0.999),
        max_us: read.hist.max(),
        append_p50_us: acks.hist.value_at_quantile(0.50),
        append_p99_us: acks.hist.value_at_quantile(0.99),
        gaps: read.gaps,
        missing,
    })
}

/// What the tail writer's append tasks record.
struct Acks {
    hist: Histogram<u64>,
    lsns: Vec<Lsn>,
    measured_ok: u64,
    errors: u64,
}

/// Follows the log, recording append-to-delivery latencies, until it delivered the LSN `stop`
/// names (or `TAIL_DRAIN` after it was named).
async fn follow(
    mut reader: Reader,
    base: std::time::Instant,
    mut stop: watch::Receiver<Option<Lsn>>,
) -> anyhow::Result<TailRead> {
    let mut read = TailRead {
        hist: latency_histogram()?,
        delivered_measured: 0,
        lsns: Vec::new(),
        gaps: BTreeMap::new(),
    };
    let mut last_lsn = Lsn::INVALID;
    let mut deadline = None;
    loop {
        if let Some(until) = *stop.borrow_and_update() {
            if last_lsn >= until {
                break;
            }
            deadline.get_or_insert(Instant::now() + TAIL_DRAIN);
        }
        let drain = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            delivery = reader.next() => {
                let Some(delivery) = delivery else { break };
                let now_ns = nanos_since(base);
                let delivery = delivery.context("following the tail log")?;
                last_lsn = delivery.to();
                match delivery {
                    Delivery::Record(r) => {
                        read.lsns.push(r.header.lsn);
                        let stamp = r.payload.get(..TAIL_STAMP_BYTES).with_context(|| {
                            format!("record {} is too short for a time stamp", r.header.lsn)
                        })?;
                        let sent_ns = u64::from_le_bytes(stamp[..8].try_into()?);
                        if stamp[TAIL_STAMP_BYTES - 1] == 1 {
                            read.delivered_measured += 1;
                            let us = now_ns.saturating_sub(sent_ns) / 1000;
                            read.hist.saturating_record(us.max(1));
                        }
                    }
                    Delivery::Gap { kind, .. } => {
                        *read.gaps.entry(gap_name(kind)).or_default() += 1;
                    }
                }
            }
            changed = stop.changed() => {
                // The writer always sends before it drops the sender.
                changed.context("the tail writer went away")?;
            }
            () = drain => break,
        }
    }
    Ok(read)
}

fn print_report(r: &Report) {
    let l = &r.load;
    println!(
        "read path end to end: {}, {}-byte records, R={}, backfill window {}",
        r.target, r.record_bytes, r.replication, r.window
    );
    println!(
        "load: log {}, {} records ({:.0} MiB) in {:.1} s: {:.0} appends/s, {:.1} MB/s ({} batches retried, {} indeterminate)",
        r.log,
        l.records,
        l.payload_bytes as f64 / (1 << 20) as f64,
        l.secs,
        l.records_per_sec,
        l.mb_per_sec,
        l.retried_batches,
        l.indeterminate_batches
    );
    println!(
        "{:<14} {:>10} {:>11} {:>8} {:>8} {:>9} {:>10} {:>7} {:>5} {:>7} {:>9}",
        "backfill",
        "records",
        "records/s",
        "MB/s",
        "secs",
        "first ms",
        "recv/deliv",
        "rewinds",
        "cpu",
        "gaps",
        "missing"
    );
    for (name, c) in &r.backfill {
        let gaps: u64 = c.gaps.values().sum();
        println!(
            "{name:<14} {:>10} {:>11.0} {:>8.1} {:>8.2} {:>9.1} {:>10.2} {:>7} {:>5} {:>7} {:>9}",
            c.records,
            c.records_per_sec,
            c.mb_per_sec,
            c.secs,
            c.first_delivery_ms,
            c.bytes_received_per_delivered,
            c.rewinds,
            c.cpu_cores
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            gaps,
            c.missing + c.unexpected
        );
        let rounds: Vec<String> = c
            .rounds_mb_per_sec
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect();
        println!("{:<14}   MB/s per round: {}", "", rounds.join(", "));
        for (kind, n) in &c.gaps {
            println!("{:<14}   {n} {kind} gaps", "");
        }
    }
    let t = &r.tail;
    println!(
        "tail: log {}, {} appends/s open loop for {:.1} s; append to delivery (µs):",
        r.tail_log, t.rate_per_sec, t.measured_secs
    );
    println!(
        "{:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12} {:>7}",
        "appends", "delivered", "p50", "p99", "p999", "max", "ack p50", "ack p99", "errors"
    );
    println!(
        "{:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12} {:>7}",
        t.appends,
        t.delivered,
        t.p50_us,
        t.p99_us,
        t.p999_us,
        t.max_us,
        t.append_p50_us,
        t.append_p99_us,
        t.append_errors
    );
    if r.problems.is_empty() {
        println!("verified: every acknowledged record delivered once, in order, no data loss");
    } else {
        for p in &r.problems {
            println!("FAILED: {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(rs: &[(u64, u64)]) -> Vec<RangeInclusive<Lsn>> {
        rs.iter().map(|&(a, b)| Lsn(a)..=Lsn(b)).collect()
    }

    #[test]
    fn expected_walk_counts_missing_and_unexpected() {
        let acked = ranges(&[(1, 3), (10, 11)]);
        let mut e = Expected::new(&acked);
        for lsn in [1, 2, 3, 10, 11] {
            e.delivered(Lsn(lsn));
        }
        e.finish();
        assert_eq!((e.missing, e.unexpected), (0, 0));

        let mut e = Expected::new(&acked);
        for lsn in [1, 5, 11, 12] {
            e.delivered(Lsn(lsn));
        }
        e.finish();
        // 2, 3, 10 missing; 5 and 12 never acknowledged.
        assert_eq!((e.missing, e.unexpected), (3, 2));

        let mut e = Expected::new(&acked);
        e.delivered(Lsn(1));
        e.finish();
        assert_eq!((e.missing, e.unexpected), (4, 0));
    }
}
