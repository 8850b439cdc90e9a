//! [`NodeProbe`]: what a running node knows about itself, read from its roles on demand. It
//! answers `GetNodeStatus` (a [`NodeStatus`]), `/health` and `/ready`, and is the
//! `prometheus_client` collector of the node's scrape-time values (logs running, recoveries,
//! store queue depth, open read streams, LogsDB fsyncs and partitions, connections), which
//! are state, not events, so nothing records them on a hot path.
//!
//! Rates ("appends per second") come from a sampler ([`NodeProbe::sample_loop`]) that reads the
//! counters once a second and keeps the last few seconds; until it has two samples a rate is
//! the average since the node started.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use tally_common::meta::{Roles, StorageState};
use tally_common::metrics::NodeMetrics;
use tally_common::transport::ConnectionCount;
use tally_common::wire::status::{
    MAX_STATUS_LOGS, MAX_STATUS_PROBLEMS, NodeStatus, Rate, SequencedLog, SequencerStatus,
    StorageStatus,
};
use tally_common::{LogId, NodeId};
use tally_sequencer::runtime::SequencerNode;
use tally_storage_node::server::StorageNode;
use tokio_util::sync::CancellationToken;

/// How often the sampler reads the counters.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: rates cover the last `SAMPLES - 1` intervals.
const SAMPLES: usize = 6;

/// Counter values at one moment, for rates.
#[derive(Debug, Clone, Default)]
struct Sample {
    appends: u64,
    per_log: HashMap<LogId, u64>,
    stored_records: u64,
    stored_bytes: u64,
    read_records: u64,
}

/// A node's view of itself. See the module documentation.
#[derive(Debug)]
pub struct NodeProbe {
    id: NodeId,
    roles: Roles,
    started: Instant,
    /// Set once the admin port is bound.
    admin: OnceLock<String>,
    metrics: NodeMetrics,
    storage: Option<Arc<StorageNode>>,
    sequencer: Option<Arc<SequencerNode>>,
    /// Set once the endpoint is bound.
    connections: OnceLock<ConnectionCount>,
    shutdown: CancellationToken,
    samples: Mutex<VecDeque<(Instant, Sample)>>,
}

impl NodeProbe {
    /// A probe of a node with these roles (before its endpoint and admin port are bound).
    pub fn new(
        id: NodeId,
        roles: Roles,
        metrics: NodeMetrics,
        storage: Option<Arc<StorageNode>>,
        sequencer: Option<Arc<SequencerNode>>,
        shutdown: CancellationToken,
    ) -> NodeProbe {
        NodeProbe {
            id,
            roles,
            started: Instant::now(),
            admin: OnceLock::new(),
            metrics,
            storage,
            sequencer,
            connections: OnceLock::new(),
            shutdown,
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
        }
    }

    /// The endpoint is bound: count its connections.
    pub fn set_connections(&self, connections: ConnectionCount) {
        let _ = self.connections.set(connections);
    }

    /// The admin port is bound at `addr`.
    pub fn set_admin(&self, addr: String) {
        let _ = self.admin.set(addr);
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The roles the node runs.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// The admin port's bound address, once bound.
    pub fn admin(&self) -> Option<&str> {
        self.admin.get().map(String::as_str)
    }

    /// The storage role, if the node runs it.
    pub fn storage(&self) -> Option<&Arc<StorageNode>> {
        self.storage.as_ref()
    }

    /// The sequencer role, if the node runs it.
    pub fn sequencer(&self) -> Option<&Arc<SequencerNode>> {
        self.sequencer.as_ref()
    }

    fn samples(&self) -> MutexGuard<'_, VecDeque<(Instant, Sample)>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the counters every second until `shutdown`, keeping the last few samples.
    pub async fn sample_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let sample = self.sample();
            let mut samples = self.samples();
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back((Instant::now(), sample));
        }
    }

    fn sample(&self) -> Sample {
        let mut s = Sample::default();
        if let Some(seq) = &self.sequencer {
            s.appends = seq.metrics().appends.get();
            let (_, logs) = seq.log_summaries(MAX_STATUS_LOGS);
            s.per_log = logs.iter().map(|l| (l.log, l.granted)).collect();
        }
        let m = &self.metrics.storage;
        s.stored_records = m.stored_records.get();
        s.stored_bytes = m.stored_bytes.get();
        s.read_records = m.read_records.get();
        s
    }

    /// The rate of the counter `get` picks: over the sampler's window, or since the start
    /// while the sampler has fewer than two samples.
    fn rate(&self, now: &Sample, get: impl Fn(&Sample) -> Option<u64>) -> Rate {
        let samples = self.samples();
        let since_start = || {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            Rate::over(get(now).unwrap_or(0), ms)
        };
        let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else {
            return since_start();
        };
        if samples.len() < 2 {
            return since_start();
        }
        let ms = u64::try_from(t1.duration_since(*t0).as_millis()).unwrap_or(u64::MAX);
        // A log that started running inside the window counts from zero.
        let (a, b) = (get(first).unwrap_or(0), get(last).unwrap_or(0));
        Rate::over(b.saturating_sub(a), ms)
    }

    /// `/health`: the process is up and its roles run (a restart is what would help
    /// otherwise). The reasons it is not, if any.
    pub fn health(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.shutdown.is_cancelled() {
            problems.push("the node is shutting down".to_owned());
        }
        if let Some(storage) = &self.storage {
            match storage.storage_state() {
                StorageState::ReadOnly => problems.push(
                    "storage: LogsDB refuses writes after a write failure (read-only until \
                     restart)"
                        .to_owned(),
                ),
                StorageState::Disabled | StorageState::Gone => {
                    problems.push("storage: the role is disabled".to_owned());
                }
                _ => {}
            }
        }
        problems
    }

    /// `/ready`: the node is healthy, in membership and can take writes (free disk above the
    /// minimum). The reasons it is not, if any.
    pub fn readiness(&self) -> Vec<String> {
        let mut problems = self.health();
        if let Some(seq) = &self.sequencer {
            let view = seq.membership().view();
            if !view.ready {
                problems.push("sequencer: membership not loaded yet".to_owned());
            } else if !view.nodes.contains_key(&self.id) {
                problems.push("sequencer: this node is not in its membership view".to_owned());
            }
        }
        if let Some(storage) = &self.storage {
            // Not a health problem: a restart frees no disk. The node serves reads meanwhile.
            if storage.disk().is_full() {
                problems.push(format!(
                    "storage: free disk below the minimum, stores refused ({} bytes free)",
                    storage.disk().free_bytes()
                ));
            }
            let view = storage.cluster().current();
            if !view.ready {
                problems.push("storage: membership not loaded yet".to_owned());
            } else if !view.nodes.contains_key(&self.id) {
                problems.push("storage: this node is not in its membership view".to_owned());
            }
        }
        problems
    }

    /// What the node answers to `GetNodeStatus`.
    pub fn status(&self) -> NodeStatus {
        let now = self.sample();
        let health = self.health();
        let healthy = health.is_empty();
        let mut problems = self.readiness();
        let ready = problems.is_empty();
        problems.truncate(MAX_STATUS_PROBLEMS);
        let sequencer = self.sequencer.as_ref().map(|seq| {
            let (running, logs) = seq.log_summaries(MAX_STATUS_LOGS);
            let recoveries = seq.recovery_stats();
            SequencerStatus {
                appends: now.appends,
                append_rate: self.rate(&now, |s| Some(s.appends)),
                logs_running: u32::try_from(running).unwrap_or(u32::MAX),
                recoveries_active: recoveries.active,
                recoveries_completed: recoveries.completed,
                recoveries_failed: recoveries.failed + recoveries.preempted,
                logs: logs
                    .into_iter()
                    .map(|l| SequencedLog {
                        log: l.log,
                        epoch: l.epoch,
                        last_released: l.last_released,
                        next_lsn: l.next_lsn,
                        unreleased: l.unreleased,
                        recovering: l.recovering,
                        preempted: l.preempted,
                        append_rate: self.rate(&now, |s| s.per_log.get(&l.log).copied()),
                    })
                    .collect(),
            }
        });
        let storage = self.storage.as_ref().map(|st| {
            let db = st.logsdb();
            StorageStatus {
                state: st.storage_state(),
                stored_records: now.stored_records,
                stored_bytes: now.stored_bytes,
                store_rate: self.rate(&now, |s| Some(s.stored_records)),
                store_bytes_rate: self.rate(&now, |s| Some(s.stored_bytes)),
                stores_in_flight: stores_in_flight(st),
                fsyncs: db.write_stats().wal_syncs,
                partitions: u32::try_from(db.partitions().len()).unwrap_or(u32::MAX),
                logs: u32::try_from(db.logs().len()).unwrap_or(u32::MAX),
                read_streams_open: u32::try_from(st.open_read_streams()).unwrap_or(u32::MAX),
                read_rate: self.rate(&now, |s| Some(s.read_records)),
                free_disk_bytes: st.disk().free_bytes(),
            }
        });
        NodeStatus {
            node: self.id,
            roles: self.roles,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            admin: self.admin.get().cloned(),
            healthy,
            ready,
            problems,
            sequencer,
            storage,
        }
    }
}

fn stores_in_flight(storage: &StorageNode) -> u32 {
    let max = storage.config().max_in_flight_stores as usize;
    u32::try_from(max.saturating_sub(storage.admission().available_requests())).unwrap_or(u32::MAX)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// The scrape-time values (see the module documentation), registered in the node's registry.
impl Collector for NodeProbe {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "node_uptime",
            "Time since the node started",
            Some(&Unit::Seconds),
            int(self.started.elapsed().as_secs()),
        )?;
        gauge(
            &mut e,
            "node_healthy",
            "1 when /health answers 200",
            None,
            i64::from(self.health().is_empty()),
        )?;
        gauge(
            &mut e,
            "node_ready",
            "1 when /ready answers 200",
            None,
            i64::from(self.readiness().is_empty()),
        )?;
        if let Some(c) = self.connections.get() {
            gauge(
                &mut e,
                "transport_connections",
                "Open QUIC connections of the node's endpoint",
                None,
                int(c.get()),
            )?;
        }
        if let Some(seq) = &self.sequencer {
            let (running, _) = seq.log_summaries(0);
            gauge(
                &mut e,
                "sequencer_logs_running",
                "Logs this node runs an epoch of",
                None,
                int(running),
            )?;
            let r = seq.recovery_stats();
            gauge(
                &mut e,
                "sequencer_recoveries_active",
                "Log recoveries running now",
                None,
                int(r.active),
            )?;
            for (name, help, v) in [
                (
                    "sequencer_recoveries_started",
                    "Log recoveries started",
                    r.started,
                ),
                (
                    "sequencer_recoveries_completed",
                    "Log recoveries that finished and let their log release",
                    r.completed,
                ),
                (
                    "sequencer_recoveries_failed",
                    "Log recoveries that could not start",
                    r.failed,
                ),
                (
                    "sequencer_recoveries_preempted",
                    "Log recoveries aborted by a higher seal",
                    r.preempted,
                ),
                (
                    "sequencer_recoveries_cancelled",
                    "Log recoveries stopped because their epoch stopped running here",
                    r.cancelled,
                ),
                (
                    "sequencer_epochs_recovered",
                    "Epochs recorded clean in the epoch store",
                    r.epochs_recovered,
                ),
                (
                    "sequencer_recovery_stores",
                    "Recovery stores sent",
                    r.stores_sent,
                ),
            ] {
                counter(&mut e, name, help, v)?;
            }
        }
        if let Some(st) = &self.storage {
            gauge(
                &mut e,
                "storage_stores_in_flight",
                "Store batches admitted and not answered yet (the store queue)",
                None,
                int(stores_in_flight(st)),
            )?;
            gauge(
                &mut e,
                "storage_read_streams_open",
                "Read streams open now",
                None,
                int(st.open_read_streams()),
            )?;
            gauge(
                &mut e,
                "storage_read_only",
                "1 when LogsDB refuses writes after a write failure",
                None,
                i64::from(st.storage_state() == StorageState::ReadOnly),
            )?;
            gauge(
                &mut e,
                "storage_free_disk",
                "Free bytes on the data directory's file system at the last check",
                Some(&Unit::Bytes),
                int(st.disk().free_bytes()),
            )?;
            let db = st.logsdb();
            let syncs = db.wal_sync_latency();
            syncs.encode(e.encode_descriptor(
                "logsdb_wal_sync_latency",
                "Duration of each WAL fsync of group commit (durable stores wait for one)",
                Some(&Unit::Seconds),
                syncs.metric_type(),
            )?)?;
            let w = db.write_stats();
            for (name, help, v) in [
                (
                    "logsdb_fsyncs",
                    "WAL fsyncs by the syncer thread",
                    w.wal_syncs,
                ),
                (
                    "logsdb_write_groups",
                    "Group commits of the writer thread (one RocksDB write each)",
                    w.groups,
                ),
                (
                    "logsdb_write_requests",
                    "Write requests processed by the writer thread",
                    w.requests,
                ),
                (
                    "logsdb_records_written",
                    "Records written by the writer thread",
                    w.records,
                ),
            ] {
                counter(&mut e, name, help, v)?;
            }
            gauge(
                &mut e,
                "logsdb_partitions",
                "LogsDB time partitions",
                None,
                int(db.partitions().len()),
            )?;
        }
        Ok(())
    }
}
