//! The chaos harness (issue #7): real processes under a nemesis, then a judge.
//!
//! A run starts a 3-member etcd, storage nodes and sequencer nodes as separate OS processes
//! (`procs`), creates the logs (R = 3), and runs producers that append unique payloads
//! (`<log>-<producer>-<n>`) to every log while tailing readers follow some logs. Every 5–10 s
//! (seeded) the nemesis heals the previous fault and injects the next (`nemesis`):
//!
//! | kind | what |
//! | --- | --- |
//! | `kill_storage` | SIGKILL a storage node; restarted at the next step |
//! | `kill_sequencer` | SIGKILL the sequencer that owns a random log; restarted at the next step |
//! | `kill_etcd` | SIGKILL one etcd member; restarted at the next step |
//! | `pause_sequencer` | SIGSTOP the sequencer that owns a random log for the whole step (past failover), then SIGCONT |
//! | `partition` | cut one node from up to two others (both directions) with the fault-injecting UDP layer |
//!
//! Network cuts use the fault-injecting UDP socket under quinn (cargo feature
//! `fault-injection` of `tally-common`, `common/src/transport/endpoint.rs`): each node process
//! drops datagrams to the addresses listed in its `<dir>/faults/<id>` file.
//!
//! After the last step everything is healed, producers stop, every log is drained from the
//! oldest LSN to its tail by fresh readers, and `checker` judges the history: lost,
//! duplicated, inconsistent, order violations, false data loss (see its docs). Failover time
//! is measured per sequencer kill / pause: for each log whose epoch changed after the fault,
//! the time from the fault to the first acknowledged append in the new epoch.
//!
//! Negative controls (`--control`) prove the judge can fail: `no-seal` makes storage nodes
//! accept stores from sealed epochs, and `no-fsync` makes them acknowledge durable stores
//! without syncing while the nemesis kills every storage node at once (losing what the
//! processes had not written out).

pub mod checker;
pub mod procs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tally_client::{Client, ClientConfig, Delivery, ReadFrom, ReadOptions, ReadUntil};
use tally_common::meta::LogAttributes;
use tally_common::{LogId, Lsn, NodeId, placement};
use tally_epochstore::{EpochStore as _, EtcdStore};
use tokio_util::sync::CancellationToken;

use checker::{AppendOp, Outcome, ReaderTrace, Seen, Verdict};
use procs::{NodeExtras, Procs, Role};

/// A negative control: a deliberate bug the judge must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    /// The real system.
    None,
    /// Storage nodes ignore seals.
    NoSeal,
    /// Storage nodes do not fsync; the nemesis kills all storage nodes at once.
    NoFsync,
}

/// What to run.
#[derive(Clone, Debug, clap::Args)]
pub struct ChaosConfig {
    /// Seconds of faults (the drain and checks come after).
    #[arg(long, default_value_t = 300)]
    pub duration: u64,
    /// Seed of the nemesis schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 5)]
    pub storage_nodes: u32,
    #[arg(long, default_value_t = 3)]
    pub sequencers: u32,
    #[arg(long, default_value_t = 10)]
    pub logs: u64,
    /// Concurrent producers per log (each appends one record at a time).
    #[arg(long, default_value_t = 2)]
    pub producers_per_log: u32,
    /// Logs followed by a tailing reader during the run.
    #[arg(long, default_value_t = 3)]
    pub tailing_readers: u32,
    /// Shortest and longest step of the nemesis, in seconds.
    #[arg(long, default_value_t = 5)]
    pub min_step: u64,
    #[arg(long, default_value_t = 10)]
    pub max_step: u64,
    #[arg(long, value_enum, default_value_t = Control::None)]
    pub control: Control,
    /// Keep the run's directory (node logs, data) here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The binary that runs nodes (`<exe> node --config F`); default: this executable.
    #[arg(skip)]
    pub node_exe: Option<PathBuf>,
}

/// The chaos JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration_s: u64,
    pub control: Control,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub faults: BTreeMap<String, u64>,
    pub faults_total: u64,
    pub failover_samples: usize,
    pub failover_p50_ms: Option<u64>,
    pub failover_p99_ms: Option<u64>,
    pub drain_s: f64,
    pub dir: String,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let v = &self.verdict;
        let mut out = String::new();
        out.push_str(&format!(
            "chaos seed {} control {:?}: {} s of faults, drain {:.1} s\n",
            self.seed, self.control, self.duration_s, self.drain_s
        ));
        for (k, n) in &self.faults {
            out.push_str(&format!("  fault {k:<16} {n}\n"));
        }
        out.push_str(&format!(
            "  appends: acked {} indeterminate {} ({} present) failed {}; records read {}\n",
            v.acked, v.indeterminate, v.indeterminate_present, v.failed, v.records_read
        ));
        out.push_str(&format!(
            "  lost {} duplicated {} inconsistent {} order_violations {} false_dataloss {}\n",
            v.lost, v.duplicated, v.inconsistent, v.order_violations, v.false_dataloss
        ));
        out.push_str(&format!(
            "  failover ({} samples): p50 {:?} ms p99 {:?} ms\n",
            self.failover_samples, self.failover_p50_ms, self.failover_p99_ms
        ));
        for e in &v.examples {
            out.push_str(&format!("  ! {e}\n"));
        }
        out.push_str(if self.passed() { "PASS\n" } else { "FAIL\n" });
        out
    }
}

/// A fault the nemesis injected, for failover measurement.
#[derive(Clone, Debug)]
struct FaultEvent {
    kind: &'static str,
    at_us: u64,
    /// The logs whose sequencer was the victim (sequencer faults only).
    logs: Vec<LogId>,
}

/// What is still to be healed at the next step.
#[derive(Debug)]
enum Active {
    Restart(NodeId),
    Resume(NodeId),
    RestartEtcd(usize),
    Cut,
    RestartAllStorage,
}

/// Runs one chaos run and judges it.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let tmp;
    let dir = match &config.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            anyhow::ensure!(
                std::fs::read_dir(d)?.next().is_none(),
                "--dir {} must be a new or empty directory",
                d.display()
            );
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("tally-chaos-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let extras = NodeExtras {
        storage_section: match config.control {
            Control::None => String::new(),
            Control::NoSeal => "unsafe_ignore_seals = true".into(),
            Control::NoFsync => "unsafe_skip_fsync = true".into(),
        },
    };
    let node_exe = match &config.node_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("find the chaos binary")?,
    };
    let mut procs = Procs::start(
        &dir,
        &node_exe,
        config.storage_nodes,
        config.sequencers,
        &extras,
    )
    .await?;
    let store = EtcdStore::connect(procs.etcd.config(procs::CLUSTER))
        .await
        .context("connect to etcd")?;
    let logs: Vec<LogId> = (1..=config.logs).map(LogId).collect();
    for log in &logs {
        let attributes = LogAttributes {
            replication: 3.min(config.storage_nodes as u8),
            ..LogAttributes::default()
        };
        store.create_log(*log, attributes).await?;
    }
    let client_config = ClientConfig::new(procs.seeds(), &procs.certs);
    let client = Arc::new(Client::connect(client_config.clone()).await?);
    let epoch0 = Instant::now();
    let now_us = move || epoch0.elapsed().as_micros() as u64;

    // Producers.
    let stop = CancellationToken::new();
    let ops: Arc<Mutex<Vec<AppendOp>>> = Arc::default();
    let mut tasks = Vec::new();
    for log in &logs {
        for p in 0..config.producers_per_log {
            let (client, ops, stop, log) = (client.clone(), ops.clone(), stop.clone(), *log);
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let payload = format!("{}-{p}-{n}", log.0).into_bytes();
                    n += 1;
                    let invoked_us = now_us();
                    let result = client.append(log, payload.clone()).await;
                    let outcome = match result {
                        Ok(lsn) => Outcome::Acked(lsn),
                        Err(e) if e.certainly_not_appended() => Outcome::Failed,
                        Err(_) => Outcome::Indeterminate,
                    };
                    let failed = !matches!(outcome, Outcome::Acked(_));
                    ops.lock().unwrap().push(AppendOp {
                        log,
                        payload,
                        invoked_us,
                        completed_us: now_us(),
                        outcome,
                    });
                    if failed {
                        // Not a wait for a condition: producers pace their retries.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }

    // Tailing readers.
    let mut readers = Vec::new();
    for log in logs.iter().take(config.tailing_readers as usize) {
        let (client, stop, log) = (client.clone(), stop.clone(), *log);
        readers.push(tokio::spawn(async move {
            let options = ReadOptions::range(ReadFrom::Oldest, ReadUntil::Forever);
            follow(
                &client,
                log,
                options,
                format!("tail-{}", log.0),
                false,
                stop,
            )
            .await
        }));
    }

    // The nemesis.
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut events: Vec<FaultEvent> = Vec::new();
    let mut active: Vec<Active> = Vec::new();
    let end = Instant::now() + Duration::from_secs(config.duration);
    while Instant::now() < end {
        let step = rng.random_range(config.min_step..=config.max_step.max(config.min_step));
        let wake = (Instant::now() + Duration::from_secs(step)).min(end);
        tokio::time::sleep_until(wake.into()).await;
        heal(&mut procs, &mut active).await?;
        if Instant::now() >= end {
            break;
        }
        let kind = inject(&mut procs, &mut rng, &logs, &config, &mut active)
            .await
            .context("inject a fault")?;
        if kind.0 == NO_FAULT {
            tracing::info!(detail = %kind.2, "no fault this step");
            continue;
        }
        tracing::info!(kind = kind.0, logs = ?kind.1, detail = %kind.2, "fault injected");
        *faults.entry(kind.0.to_owned()).or_default() += 1;
        events.push(FaultEvent {
            kind: kind.0,
            at_us: now_us(),
            logs: kind.1,
        });
    }
    heal(&mut procs, &mut active).await?;
    procs.heal_all().await?;
    // Settle: every log takes an append on the healed cluster (which activates a sequencer
    // and runs any recovery still owed), then the producers stop.
    let healed_us = now_us();
    settle(&ops, &logs, healed_us).await?;
    stop.cancel();
    for t in tasks {
        t.await?;
    }
    let mut traces = Vec::new();
    for r in readers {
        traces.push(r.await??);
    }

    // The drain: fresh client, fresh readers, oldest to tail, once every acknowledged LSN is
    // released (the tail is past it).
    let drain_started = Instant::now();
    let drain_client = Client::connect(client_config).await?;
    let acked_max = max_acked(&ops.lock().unwrap());
    for log in &logs {
        if let Some(max) = acked_max.get(log) {
            wait_tail(&drain_client, *log, *max).await?;
        }
        let options = ReadOptions::range(ReadFrom::Oldest, ReadUntil::Tail);
        let trace = follow(
            &drain_client,
            *log,
            options,
            format!("drain-{}", log.0),
            true,
            CancellationToken::new(),
        )
        .await?;
        traces.push(trace);
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    drain_client.close().await;
    client.close().await;

    let ops = std::mem::take(&mut *ops.lock().unwrap());
    let history: String = ops
        .iter()
        .map(|o| {
            format!(
                "{} {} {} {} {:?}\n",
                o.log,
                String::from_utf8_lossy(&o.payload),
                o.invoked_us,
                o.completed_us,
                o.outcome
            )
        })
        .collect();
    std::fs::write(dir.join("history.txt"), history)?;
    let verdict = checker::check(&ops, &traces);
    let mut samples = failovers(&ops, &events);
    samples.sort();
    let pct = |p: f64| -> Option<u64> {
        if samples.is_empty() {
            return None;
        }
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        Some(samples[i] / 1000)
    };
    Ok(ChaosReport {
        seed: config.seed,
        duration_s: config.duration,
        control: config.control,
        verdict,
        faults_total: faults.values().sum(),
        faults,
        failover_samples: samples.len(),
        failover_p50_ms: pct(0.50),
        failover_p99_ms: pct(0.99),
        drain_s,
        dir: dir.display().to_string(),
    })
}

/// How long the healed cluster may take to serve every log again, and to release every
/// acknowledged LSN. Exceeding it is a liveness failure of the run.
const SETTLE: Duration = Duration::from_secs(120);

/// Waits until every log has an append acknowledged after `healed_us`.
async fn settle(ops: &Mutex<Vec<AppendOp>>, logs: &[LogId], healed_us: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let pending: Vec<LogId> = {
            let ops = ops.lock().unwrap();
            logs.iter()
                .copied()
                .filter(|l| {
                    !ops.iter().any(|o| {
                        o.log == *l
                            && o.invoked_us >= healed_us
                            && matches!(o.outcome, Outcome::Acked(_))
                    })
                })
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "logs {pending:?} took no append within {SETTLE:?} of healing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The highest acknowledged LSN per log.
fn max_acked(ops: &[AppendOp]) -> BTreeMap<LogId, Lsn> {
    let mut max = BTreeMap::new();
    for o in ops {
        if let Outcome::Acked(lsn) = o.outcome {
            let m = max.entry(o.log).or_insert(lsn);
            *m = (*m).max(lsn);
        }
    }
    max
}

/// Waits until the tail of `log` reaches `lsn`.
async fn wait_tail(client: &Client, log: LogId, lsn: Lsn) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match client.tail_lsn(log).await {
            Ok(tail) if tail >= lsn => return Ok(()),
            Ok(tail) => anyhow::ensure!(
                Instant::now() < deadline,
                "{log}: tail {tail} never reached the acknowledged {lsn}"
            ),
            Err(e) => anyhow::ensure!(
                Instant::now() < deadline,
                "{log}: no tail within {SETTLE:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `log` with `options` until the reader ends or `stop`, recording every delivery.
async fn follow(
    client: &Client,
    log: LogId,
    options: ReadOptions,
    name: String,
    drain: bool,
    stop: CancellationToken,
) -> anyhow::Result<ReaderTrace> {
    let mut reader = client
        .read(log, options)
        .await
        .with_context(|| format!("{name}: start reading"))?;
    let mut trace = ReaderTrace {
        log,
        reader: name.clone(),
        start: reader.from_lsn(),
        drain,
        seen: Vec::new(),
    };
    loop {
        let next = tokio::select! {
            next = reader.next() => next,
            _ = stop.cancelled() => break,
        };
        match next {
            None => break,
            Some(Ok(Delivery::Record(r))) => trace.seen.push(Seen::Record {
                lsn: r.header.lsn,
                payload: r.payload,
            }),
            Some(Ok(Delivery::Gap { kind, from, to })) => {
                trace.seen.push(Seen::Gap { kind, from, to })
            }
            Some(Err(e)) => anyhow::bail!("{name}: read failed: {e}"),
        }
    }
    Ok(trace)
}

/// The live sequencer that owns `log` (the same rendezvous placement clients use).
fn owner(procs: &Procs, log: LogId) -> Option<NodeId> {
    let live: Vec<(NodeId, u32)> = procs
        .nodes
        .values()
        .filter(|n| n.role == Role::Sequencer && n.is_running() && !n.is_paused())
        .map(|n| (n.id, 1))
        .collect();
    placement::owner(log.0, &live)
}

/// What [`inject`] returns when the chosen fault has no target (not counted as a fault).
const NO_FAULT: &str = "none";

/// Injects one fault; returns its kind and the logs whose sequencer it hit.
async fn inject(
    procs: &mut Procs,
    rng: &mut StdRng,
    logs: &[LogId],
    config: &ChaosConfig,
    active: &mut Vec<Active>,
) -> anyhow::Result<(&'static str, Vec<LogId>, String)> {
    if config.control == Control::NoFsync {
        // Every storage node at once: unsynced acknowledged writes die with the processes.
        for id in procs.ids(Role::Storage) {
            procs.node(id).kill();
        }
        active.push(Active::RestartAllStorage);
        return Ok(("kill_all_storage", Vec::new(), "all storage nodes".into()));
    }
    const KINDS: [&str; 5] = [
        "kill_storage",
        "kill_sequencer",
        "kill_etcd",
        "pause_sequencer",
        "partition",
    ];
    let kind = *KINDS.choose(rng).expect("kinds");
    match kind {
        "kill_storage" => {
            let id = *procs.ids(Role::Storage).choose(rng).expect("storage");
            procs.node(id).kill();
            active.push(Active::Restart(id));
            Ok((kind, Vec::new(), format!("node {id}")))
        }
        "kill_sequencer" | "pause_sequencer" => {
            let log = *logs.choose(rng).expect("logs");
            let Some(victim) = owner(procs, log) else {
                return Ok((NO_FAULT, Vec::new(), "no live sequencer to hit".into()));
            };
            let owned: Vec<LogId> = logs
                .iter()
                .copied()
                .filter(|l| owner(procs, *l) == Some(victim))
                .collect();
            if kind == "kill_sequencer" {
                procs.node(victim).kill();
                active.push(Active::Restart(victim));
            } else {
                procs.node(victim).pause()?;
                active.push(Active::Resume(victim));
            }
            Ok((kind, owned, format!("node {victim}")))
        }
        "kill_etcd" => {
            let i = rng.random_range(0..procs.etcd.size());
            procs.etcd.kill(i);
            active.push(Active::RestartEtcd(i));
            Ok((kind, Vec::new(), format!("etcd member {i}")))
        }
        _ => {
            let ids: Vec<NodeId> = procs.nodes.keys().copied().collect();
            let a = *ids.choose(rng).expect("nodes");
            let others: Vec<NodeId> = ids.iter().copied().filter(|b| *b != a).collect();
            let count = rng.random_range(1..=2usize.min(others.len()));
            let b: Vec<NodeId> = others.choose_multiple(rng, count).copied().collect();
            procs.cut(a, &b)?;
            active.push(Active::Cut);
            Ok(("partition", Vec::new(), format!("node {a} from {b:?}")))
        }
    }
}

/// Undoes the active faults.
async fn heal(procs: &mut Procs, active: &mut Vec<Active>) -> anyhow::Result<()> {
    for a in active.drain(..) {
        match a {
            Active::Restart(id) => procs.node(id).start().await?,
            Active::Resume(id) => procs.node(id).resume()?,
            Active::RestartEtcd(i) => procs.etcd.restart(i).await?,
            Active::Cut => procs.heal_cuts()?,
            Active::RestartAllStorage => {
                for id in procs.ids(Role::Storage) {
                    procs.node(id).start().await?;
                }
            }
        }
    }
    Ok(())
}

/// Failover samples in µs: per sequencer fault and per log it hit, from the fault to the
/// first acknowledged append in a higher epoch than the last one acknowledged before it.
fn failovers(ops: &[AppendOp], events: &[FaultEvent]) -> Vec<u64> {
    let mut samples = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        if ev.kind != "kill_sequencer" && ev.kind != "pause_sequencer" {
            continue;
        }
        let until = events.get(i + 1).map_or(u64::MAX, |n| n.at_us);
        for log in &ev.logs {
            let acked = || {
                ops.iter().filter_map(move |o| match o.outcome {
                    Outcome::Acked(lsn) if o.log == *log => Some((o.completed_us, lsn)),
                    _ => None,
                })
            };
            let before = acked()
                .filter(|(t, _)| *t <= ev.at_us)
                .map(|(_, l)| l.epoch())
                .max();
            let Some(before) = before else { continue };
            let first = acked()
                .filter(|(t, l)| *t > ev.at_us && *t < until && l.epoch() > before)
                .map(|(t, _)| t)
                .min();
            if let Some(t) = first {
                samples.push(t - ev.at_us);
            }
        }
    }
    samples
}
