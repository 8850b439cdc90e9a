//! The same workloads against either system: closed loop (`c` appends in flight), open loop
//! (a fixed-rate schedule, latency measured from each append's *intended* send time, so a
//! stall is charged to every append it delays: no coordinated omission), a tailing reader
//! (append → delivery), and a backfill (load, then read everything back).
//!
//! A "log" is a Tally log or a JetStream stream (one subject each): the unit both systems
//! order and replicate on its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::{Client, Delivery, ReadFrom, ReadOptions, ReadUntil};
use tally_common::LogId;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::procs;

/// Open-loop appends in flight beyond which a send is skipped and counted as an error (the
/// system is far past its capacity; memory stays bounded).
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 50_000;
/// How long after a round's end its unanswered appends are waited for.
const ROUND_GRACE: Duration = Duration::from_secs(30);
/// Distinct error messages kept per round.
const ERRORS_KEPT: usize = 3;
/// Bytes at the start of a tail payload: send time (ns) and a "measured" flag.
const STAMP_BYTES: usize = 9;
/// How long a tail reader may lag behind the last acknowledgement before it is given up.
const TAIL_DRAIN: Duration = Duration::from_secs(10);

/// Where appends go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Tally: one client, appends rotate over `logs`.
    Tally {
        /// The client.
        client: Client,
        /// Logs the appends rotate over.
        logs: Arc<Vec<LogId>>,
    },
    /// JetStream: one connection, publishes rotate over `subjects` (one stream each).
    Nats {
        /// The JetStream context.
        js: jetstream::Context,
        /// Subjects the publishes rotate over.
        subjects: Arc<Vec<String>>,
    },
}

impl Target {
    /// Appends `payload` to log number `k` (modulo the logs) and waits for the
    /// acknowledgement (Tally: the LSN; JetStream: the publish ack).
    pub async fn append(&self, k: usize, payload: &Bytes) -> Result<(), String> {
        match self {
            Target::Tally { client, logs } => client
                .append(logs[k % logs.len()], payload.to_vec())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Target::Nats { js, subjects } => {
                let subject = subjects[k % subjects.len()].clone();
                match js.publish(subject, payload.clone()).await {
                    Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

/// `n` distinct incompressible payloads of `size` bytes.
pub fn payloads(size: usize, n: usize) -> Arc<Vec<Bytes>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ size as u64;
    Arc::new(
        (0..n)
            .map(|_| {
                let v: Vec<u8> = (0..size)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                Bytes::from(v)
            })
            .collect(),
    )
}

/// Latencies in µs, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What one measured round saw.
#[derive(Debug)]
pub struct Round {
    /// Acknowledgement latencies (µs) of the measured appends.
    pub hist: Histogram<u64>,
    /// Successful measured appends.
    pub ok: u64,
    /// Failed measured appends (and skipped open-loop sends).
    pub errors: u64,
    /// Some error messages with counts.
    pub error_messages: BTreeMap<String, u64>,
    /// Measured seconds (start of the interval to the last acknowledgement).
    pub secs: f64,
    /// CPU seconds of the system's server processes over the interval.
    pub server_cpu_secs: f64,
    /// CPU seconds of this process (the load generator) over the interval.
    pub client_cpu_secs: f64,
    /// Payload bytes of one append.
    pub record_bytes: usize,
}

/// How a round drives its appends.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `c` tasks with one append in flight each.
    Closed(usize),
    /// A fixed schedule of this many appends per second, each its own task.
    Open(f64),
}

/// Runs one round: `warmup` unmeasured, then `duration` measured; CPU over `pids`.
pub async fn round(
    target: &Target,
    payloads: &Arc<Vec<Bytes>>,
    load: Load,
    warmup: Duration,
    duration: Duration,
    pids: &[u32],
) -> anyhow::Result<Round> {
    let record_bytes = payloads[0].len();
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let results = Arc::new(std::sync::Mutex::new(Partial::new()));
    let mut tasks = JoinSet::new();
    match load {
        Load::Closed(c) => {
            for i in 0..c {
                let (target, payloads, results) =
                    (target.clone(), payloads.clone(), results.clone());
                tasks.spawn(async move {
                    let mut mine = Partial::new();
                    let mut k = i;
                    loop {
                        let start = Instant::now();
                        if start >= end {
                            break;
                        }
                        let outcome = target.append(k, &payloads[k % payloads.len()]).await;
                        k += c;
                        let done = Instant::now();
                        mine.record(start >= measure_from, outcome, start, done);
                        if mine.errors_in_a_row > 0 {
                            // An error that comes back at once must not become a busy loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    results.lock().expect("results lock").merge(mine);
                });
            }
            tokio::time::sleep_until(measure_from).await;
        }
        Load::Open(rate) => {
            anyhow::ensure!(rate > 0.0, "open-loop rate must be positive");
            let start = Instant::now();
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut cpu_taken = false;
            for i in 0u64.. {
                let intended = start + Duration::from_secs_f64(i as f64 / rate);
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                if !cpu_taken && intended >= measure_from {
                    cpu_taken = true;
                    results.lock().expect("results lock").cpu_at_start(pids);
                }
                let measured = intended >= measure_from;
                if in_flight.load(Ordering::Relaxed) >= OPEN_LOOP_MAX_IN_FLIGHT {
                    let mut r = results.lock().expect("results lock");
                    r.record(
                        measured,
                        Err("skipped: open-loop appends in flight over the cap".into()),
                        intended,
                        intended,
                    );
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (target, payload, results, in_flight) = (
                    target.clone(),
                    payloads[i as usize % payloads.len()].clone(),
                    results.clone(),
                    in_flight.clone(),
                );
                tasks.spawn(async move {
                    let outcome = target.append(i as usize, &payload).await;
                    let done = Instant::now();
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    results
                        .lock()
                        .expect("results lock")
                        .record(measured, outcome, intended, done);
                });
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    let (cpu_server_before, cpu_client_before) = {
        let mut r = results.lock().expect("results lock");
        if r.cpu_before.is_none() {
            r.cpu_at_start(pids);
        }
        r.cpu_before.expect("set above")
    };
    // Appends still unanswered long after the round are given up (and counted as errors), so
    // a system that stops answering ends the round instead of hanging the run.
    let give_up = end + ROUND_GRACE;
    let mut abandoned = 0u64;
    loop {
        match tokio::time::timeout_at(give_up, tasks.join_next()).await {
            Ok(Some(t)) => t.context("append task panicked")?,
            Ok(None) => break,
            Err(_) => {
                abandoned = tasks.len() as u64;
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    let cpu_server = procs::cpu_secs_all(pids) - cpu_server_before;
    let cpu_client = procs::self_cpu_secs() - cpu_client_before;
    let mut r = Arc::try_unwrap(results)
        .map_err(|_| anyhow::anyhow!("append tasks still hold the results"))?
        .into_inner()
        .expect("results lock");
    if abandoned > 0 {
        // Closed loop: an abandoned task's own measurements are lost with it.
        r.errors += abandoned;
        r.messages.insert(
            format!(
                "append unanswered {} s after the round ended (task abandoned)",
                ROUND_GRACE.as_secs()
            ),
            abandoned,
        );
    }
    let secs = (r
        .last_ack
        .map_or(duration, |l| l.saturating_duration_since(measure_from)))
    .max(duration)
    .as_secs_f64();
    Ok(Round {
        hist: r.hist,
        ok: r.ok,
        errors: r.errors,
        error_messages: r.messages,
        secs,
        server_cpu_secs: cpu_server,
        client_cpu_secs: cpu_client,
        record_bytes,
    })
}

/// Results gathered by the append tasks.
struct Partial {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    errors_in_a_row: u64,
    messages: BTreeMap<String, u64>,
    last_ack: Option<Instant>,
    /// CPU seconds (servers, this process) when measuring started.
    cpu_before: Option<(f64, f64)>,
}

impl Partial {
    fn new() -> Partial {
        Partial {
            hist: histogram(),
            ok: 0,
            errors: 0,
            errors_in_a_row: 0,
            messages: BTreeMap::new(),
            last_ack: None,
            cpu_before: None,
        }
    }

    fn cpu_at_start(&mut self, pids: &[u32]) {
        self.cpu_before = Some((procs::cpu_secs_all(pids), procs::self_cpu_secs()));
    }

    fn record(
        &mut self,
        measured: bool,
        outcome: Result<(), String>,
        from: Instant,
        done: Instant,
    ) {
        match outcome {
            Ok(()) => {
                self.errors_in_a_row = 0;
                if measured {
                    self.ok += 1;
                    self.hist.saturating_record(micros(done - from));
                    self.last_ack = Some(self.last_ack.map_or(done, |l| l.max(done)));
                }
            }
            Err(e) => {
                self.errors_in_a_row += 1;
                if measured {
                    self.errors += 1;
                    if self.messages.len() < ERRORS_KEPT || self.messages.contains_key(&e) {
                        *self.messages.entry(e).or_default() += 1;
                    }
                }
            }
        }
    }

    fn merge(&mut self, other: Partial) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        for (m, n) in other.messages {
            if self.messages.len() < ERRORS_KEPT || self.messages.contains_key(&m) {
                *self.messages.entry(m).or_default() += n;
            }
        }
        self.last_ack = match (self.last_ack, other.last_ack) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One system's figures for a case, over all its rounds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Figures {
    /// Successful appends per second.
    pub appends_per_sec: f64,
    /// Payload MB (10^6 bytes) acknowledged per second.
    pub mb_per_sec: f64,
    /// Acknowledgement latency percentiles in µs (open loop: from the intended send time).
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Successful measured appends.
    pub appends: u64,
    /// Failed measured appends.
    pub errors: u64,
    /// Some error messages.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_messages: BTreeMap<String, u64>,
    /// Measured seconds over all rounds.
    pub secs: f64,
    /// CPU cores the server processes used on average.
    pub server_cores: f64,
    /// CPU seconds of the server processes per GB (10^9 bytes) of payload acknowledged.
    pub server_cpu_secs_per_gb: f64,
    /// CPU seconds of the load generator (this process) per GB of payload acknowledged.
    pub client_cpu_secs_per_gb: f64,
    /// Rounds merged.
    pub rounds: usize,
}

/// Merges the rounds of one system: rates over the summed time, percentiles over the merged
/// histogram.
pub fn figures(rounds: &[Round]) -> Figures {
    let mut hist = histogram();
    let mut f = Figures {
        rounds: rounds.len(),
        ..Figures::default()
    };
    let (mut server_cpu, mut client_cpu) = (0.0, 0.0);
    let mut bytes = 0.0;
    for r in rounds {
        hist.add(&r.hist).expect("same histogram bounds");
        f.appends += r.ok;
        f.errors += r.errors;
        f.secs += r.secs;
        server_cpu += r.server_cpu_secs;
        client_cpu += r.client_cpu_secs;
        bytes += (r.ok * r.record_bytes as u64) as f64;
        for (m, n) in &r.error_messages {
            *f.error_messages.entry(m.clone()).or_default() += n;
        }
    }
    if f.secs > 0.0 {
        f.appends_per_sec = f.appends as f64 / f.secs;
        f.mb_per_sec = bytes / 1e6 / f.secs;
        f.server_cores = server_cpu / f.secs;
    }
    if bytes > 0.0 {
        f.server_cpu_secs_per_gb = server_cpu / (bytes / 1e9);
        f.client_cpu_secs_per_gb = client_cpu / (bytes / 1e9);
    }
    if f.appends > 0 {
        f.p50_us = hist.value_at_quantile(0.50);
        f.p99_us = hist.value_at_quantile(0.99);
        f.p999_us = hist.value_at_quantile(0.999);
    }
    f
}

/// A tailing reader's figures: append → delivery latency while appends arrive open loop.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TailFigures {
    /// Appends per second of the writer's schedule.
    pub rate_per_sec: f64,
    /// Measured appends acknowledged.
    pub appends: u64,
    /// Measured appends delivered to the reader.
    pub delivered: u64,
    /// Append → delivery latency percentiles in µs (from the intended send time).
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Acknowledgement latency p99 of the same appends, µs.
    pub ack_p99_us: u64,
}

fn nanos_since(base: std::time::Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Appends `record_bytes` records to the target's first log at `rate` per second while a
/// reader follows that log from its tail; every payload carries its intended send time.
pub async fn tail(
    target: &Target,
    record_bytes: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<TailFigures> {
    anyhow::ensure!(
        record_bytes >= STAMP_BYTES,
        "tail records need a time stamp"
    );
    let base = std::time::Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = stop_flag::Flag::default();
    let reading = match target {
        Target::Tally { client, logs } => {
            let log = logs[0];
            let tail = client.tail_lsn(log).await.context("tail of the tail log")?;
            let reader = client
                .read(
                    log,
                    ReadOptions::range(ReadFrom::Lsn(tail.next()), ReadUntil::Forever),
                )
                .await
                .context("follow the tail log")?;
            let (delivered, stop) = (delivered.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reader = reader;
                let mut hist = histogram();
                loop {
                    let next = tokio::select! {
                        d = reader.next() => d,
                        () = stop.wait() => None,
                    };
                    let Some(d) = next else { break };
                    let now = nanos_since(base);
                    if let Delivery::Record(r) = d.context("tail read")? {
                        stamp(&r.payload, now, &mut hist, &delivered)?;
                    }
                }
                anyhow::Ok(hist)
            })
        }
        Target::Nats { js, subjects } => {
            let stream = js
                .get_stream(&subjects[0])
                .await
                .context("the tail stream")?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .context("ordered consumer")?;
            let mut messages = consumer.messages().await.context("consume")?;
            let (delivered, stop) = (delivered.clone(), stop.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                loop {
                    let next = tokio::select! {
                        m = messages.next() => m,
                        () = stop.wait() => None,
                    };
                    let Some(m) = next else { break };
                    let now = nanos_since(base);
                    let m = m.map_err(|e| anyhow::anyhow!("tail consume: {e}"))?;
                    stamp(&m.payload, now, &mut hist, &delivered)?;
                }
                anyhow::Ok(hist)
            })
        }
    };

    let padding = payloads(record_bytes, 1)[0].clone();
    let warm = (warmup.as_secs_f64() * rate).round() as u64;
    let measured = (duration.as_secs_f64() * rate).round().max(1.0) as u64;
    let acks = Arc::new(std::sync::Mutex::new((histogram(), 0u64)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..warm + measured {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        let is_measured = i >= warm;
        let mut p = padding.to_vec();
        let sent_ns = u64::try_from((intended.into_std() - base).as_nanos()).unwrap_or(0);
        p[..8].copy_from_slice(&sent_ns.to_le_bytes());
        p[8] = u8::from(is_measured);
        let payload = Bytes::from(p);
        let (target, acks) = (target.clone(), acks.clone());
        tasks.spawn(async move {
            let outcome = target.append(0, &payload).await;
            if outcome.is_ok() && is_measured {
                let mut a = acks.lock().expect("acks lock");
                a.0.saturating_record(micros(intended.elapsed()));
                a.1 += 1;
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let (ack_hist, appends) = {
        let a = acks.lock().expect("acks lock");
        (a.0.clone(), a.1)
    };
    let deadline = Instant::now() + TAIL_DRAIN;
    while delivered.load(Ordering::Relaxed) < appends && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.set();
    let hist = reading.await.context("tail reader panicked")??;
    Ok(TailFigures {
        rate_per_sec: rate,
        appends,
        delivered: delivered.load(Ordering::Relaxed),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        ack_p99_us: ack_hist.value_at_quantile(0.99),
    })
}

fn stamp(
    payload: &[u8],
    now_ns: u64,
    hist: &mut Histogram<u64>,
    delivered: &AtomicU64,
) -> anyhow::Result<()> {
    let s = payload
        .get(..STAMP_BYTES)
        .context("a tail record without a time stamp")?;
    if s[8] == 1 {
        let sent = u64::from_le_bytes(s[..8].try_into()?);
        hist.saturating_record((now_ns.saturating_sub(sent) / 1000).max(1));
        delivered.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A one-shot stop flag a task can wait on (a `watch` channel underneath).
mod stop_flag {
    use tokio::sync::watch;

    #[derive(Clone, Debug)]
    pub struct Flag(watch::Sender<bool>);

    impl Default for Flag {
        fn default() -> Flag {
            Flag(watch::Sender::new(false))
        }
    }

    impl Flag {
        pub fn set(&self) {
            self.0.send_replace(true);
        }

        pub async fn wait(&self) {
            let mut rx = self.0.subscribe();
            // The sender lives in `self`, so this only ends once the flag is set.
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// Backfill figures of one system.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BackfillFigures {
    /// Records loaded (1 KiB each).
    pub records: u64,
    /// Payload bytes loaded.
    pub bytes: u64,
    /// Load rate, MB/s.
    pub load_mb_per_sec: f64,
    /// Read-back rate of each round, MB/s.
    pub rounds_mb_per_sec: Vec<f64>,
    /// Best read-back rate, MB/s.
    pub mb_per_sec: f64,
    /// Server CPU seconds per GB read back (best round).
    pub server_cpu_secs_per_gb: f64,
}

/// Records per Tally `append_batch` call and JetStream publishes per pipeline during a load.
const LOAD_BATCH: usize = 256;
/// Load calls (Tally) or pipelines (JetStream) in flight.
const LOAD_IN_FLIGHT: usize = 8;

/// Loads `records` 1 KiB records into the target's first log; returns the seconds taken.
pub async fn load(target: &Target, records: u64) -> anyhow::Result<f64> {
    let payloads = payloads(1024, 64);
    let next = Arc::new(AtomicU64::new(0));
    let batches = records.div_ceil(LOAD_BATCH as u64);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..LOAD_IN_FLIGHT {
        let (target, payloads, next) = (target.clone(), payloads.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(());
                }
                let first = b * LOAD_BATCH as u64;
                let n = (LOAD_BATCH as u64).min(records - first) as usize;
                match &target {
                    Target::Tally { client, logs } => {
                        let batch = (0..n)
                            .map(|i| payloads[(first as usize + i) % payloads.len()].to_vec())
                            .collect();
                        client
                            .append_batch(logs[0], batch)
                            .await
                            .map_err(|e| anyhow::anyhow!("load: {e}"))?;
                    }
                    Target::Nats { js, subjects } => {
                        let mut acks = Vec::with_capacity(n);
                        for i in 0..n {
                            let p = payloads[(first as usize + i) % payloads.len()].clone();
                            acks.push(
                                js.publish(subjects[0].clone(), p)
                                    .await
                                    .map_err(|e| anyhow::anyhow!("load: {e}"))?,
                            );
                        }
                        for a in acks {
                            a.await.map_err(|e| anyhow::anyhow!("load: {e}"))?;
                        }
                    }
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.context("load task panicked")??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Reads the target's first log from its start to its end (`records` records expected);
/// returns (seconds from the start of the read to the last delivery, payload bytes).
pub async fn read_all(target: &Target, records: u64) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    match target {
        Target::Tally { client, logs } => {
            let mut reader = client
                .read(
                    logs[0],
                    ReadOptions::range(ReadFrom::Oldest, ReadUntil::Tail),
                )
                .await
                .context("start the backfill read")?;
            while let Some(d) = reader.next().await {
                match d.context("backfill read")? {
                    Delivery::Record(r) => {
                        n += 1;
                        bytes += r.payload.len() as u64;
                    }
                    Delivery::Gap { kind, .. } => {
                        anyhow::ensure!(
                            kind != tally_client::GapKind::DataLoss,
                            "backfill read: data loss gap"
                        );
                    }
                }
            }
        }
        Target::Nats { js, subjects } => {
            let stream = js.get_stream(&subjects[0]).await?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .context("ordered consumer")?;
            let mut messages = consumer.messages().await?;
            while n < records {
                let m = messages
                    .next()
                    .await
                    .context("the consumer ended early")?
                    .map_err(|e| anyhow::anyhow!("backfill consume: {e}"))?;
                n += 1;
                bytes += m.payload.len() as u64;
            }
        }
    }
    anyhow::ensure!(
        n == records,
        "backfill read {n} records, {records} were loaded"
    );
    Ok((start.elapsed().as_secs_f64(), bytes))
}
