//! Per-node metrics handles (DESIGN §11, Observability). Each role records into its own handle
//! ([`SequencerMetrics`], [`StorageMetrics`]) carried in the role's config; a node bundles them
//! in a [`NodeMetrics`] and registers them in a `prometheus_client` [`Registry`] that its admin
//! HTTP port encodes on `/metrics`. Nothing here is a process global: `tally dev` and the tests
//! run several nodes in one process, each with its own handles and registry.
//!
//! Recording is cheap on the hot paths: counters are atomics, and [`Histogram`] is a fixed set of
//! atomic buckets (no lock per observation, unlike `prometheus_client`'s own histogram). Values
//! that are state rather than events (logs running, partitions, queue depth, open streams) are
//! not recorded at all: the node reads them from the roles when `/metrics` is scraped.
//!
//! A handle's `Default` is a fresh, unregistered set of metrics, so code that never exports
//! metrics (tests, benchmarks) pays a few allocations and nothing else. Handles compare equal
//! to each other: they are plumbing carried in configs, not configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client;

/// Upper bounds (seconds) of the latency buckets: 50 µs to 10 s, about three per decade.
pub const LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of durations with fixed buckets ([`LATENCY_BUCKETS_SECONDS`]),
/// recorded with atomic adds only. Cloning gives another handle to the same histogram.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for HistogramInner {
    fn default() -> Self {
        HistogramInner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// A copy of a [`Histogram`] at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations in total.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, observations in that bucket)`, not cumulative; the last bound
    /// is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// The upper bound of the bucket holding quantile `q` (0..=1), `None` when empty. Bucket
    /// resolution only: good for a status page, not for benchmarks.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(*bound);
            }
        }
        self.buckets.last().map(|(b, _)| *b)
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        let inner = &self.inner;
        inner.buckets[idx].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        inner.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram now. Concurrent observations may be half counted (bucket but not count);
    /// the count reported is the sum of the buckets, so the exposition stays consistent.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let inner = &self.inner;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum_seconds: inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &s.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

macro_rules! equal_handles {
    ($t:ty) => {
        impl PartialEq for $t {
            /// Metrics handles are not configuration: any two compare equal.
            fn eq(&self, _: &Self) -> bool {
                true
            }
        }
        impl Eq for $t {}
    };
}

/// What the sequencer role records (its scrape-time values — logs running, recoveries — are
/// read from the role when `/metrics` is scraped).
#[derive(Clone, Debug, Default)]
pub struct SequencerMetrics {
    /// `Sequence` requests answered with a grant.
    pub grants: Counter,
    /// LSNs granted (one per appended record).
    pub appends: Counter,
    /// LSNs reported stored by their appenders (`ReportStored`).
    pub appends_completed: Counter,
    /// From a grant to the `ReportStored` of its batch: the append latency the sequencer sees.
    pub append_latency: Histogram,
    /// `Sequence` requests answered `SeqNoBufs` (the epoch's window was full).
    pub no_bufs: Counter,
    /// `Sequence` requests redirected to another sequencer.
    pub redirects: Counter,
    /// Times a log's release point moved forward.
    pub releases: Counter,
    /// Epochs activated through the epoch store (first activations and reactivations).
    pub activations: Counter,
    /// Activations that failed (epoch store error or timeout, superseded, too many logs).
    pub activation_failures: Counter,
}

equal_handles!(SequencerMetrics);

impl SequencerMetrics {
    /// Registers every metric under `sequencer_…` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("sequencer");
        r.register(
            "grants",
            "Sequence requests answered with a grant",
            self.grants.clone(),
        );
        r.register(
            "appends",
            "LSNs granted to appends (one per record)",
            self.appends.clone(),
        );
        r.register(
            "appends_completed",
            "LSNs reported stored by their appenders",
            self.appends_completed.clone(),
        );
        r.register_with_unit(
            "append_latency",
            "Time from a grant to the ReportStored of its batch",
            Unit::Seconds,
            self.append_latency.clone(),
        );
        r.register(
            "no_bufs",
            "Sequence requests refused because the epoch's window was full",
            self.no_bufs.clone(),
        );
        r.register(
            "redirects",
            "Sequence requests redirected to the log's sequencer",
            self.redirects.clone(),
        );
        r.register(
            "releases",
            "Times a log's release point moved forward",
            self.releases.clone(),
        );
        r.register(
            "activations",
            "Epochs activated in the epoch store",
            self.activations.clone(),
        );
        r.register(
            "activation_failures",
            "Activations that failed",
            self.activation_failures.clone(),
        );
    }
}

/// What the storage role records (its scrape-time values — in-flight stores, open read
/// streams, partitions, fsyncs — are read from the role when `/metrics` is scraped).
#[derive(Clone, Debug, Default)]
pub struct StorageMetrics {
    /// Store batches acknowledged `Stored`.
    pub stores: Counter,
    /// Records in acknowledged store batches.
    pub stored_records: Counter,
    /// Payload bytes in acknowledged store batches.
    pub stored_bytes: Counter,
    /// Store batches answered anything but `Stored`.
    pub stores_refused: Counter,
    /// From admission to the answer of a store batch (including the fsync of durable ones).
    pub store_latency: Histogram,
    /// Read streams opened.
    pub read_streams_opened: Counter,
    /// Records shipped by read streams.
    pub read_records: Counter,
    /// Payload bytes shipped by read streams.
    pub read_bytes: Counter,
    /// Seals written (`Seal` requests of recovering sequencers).
    pub seals: Counter,
    /// Copies deleted because a recovery this node missed overruled them (DESIGN §7 purging).
    pub purged_copies: Counter,
    /// Releases of a log held back because the epochs below could not be settled yet.
    pub releases_held: Counter,
}

equal_handles!(StorageMetrics);

impl StorageMetrics {
    /// Registers every metric under `storage_…` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("storage");
        r.register(
            "stores",
            "Store batches acknowledged Stored",
            self.stores.clone(),
        );
        r.register(
            "stored_records",
            "Records in acknowledged store batches",
            self.stored_records.clone(),
        );
        r.register_with_unit(
            "stored",
            "Payload bytes in acknowledged store batches",
            Unit::Bytes,
            self.stored_bytes.clone(),
        );
        r.register(
            "stores_refused",
            "Store batches answered other than Stored (overloaded, preempted, no space, …)",
            self.stores_refused.clone(),
        );
        r.register_with_unit(
            "store_latency",
            "Time from admission to the answer of a store batch (fsync included)",
            Unit::Seconds,
            self.store_latency.clone(),
        );
        r.register(
            "read_streams_opened",
            "Read streams opened",
            self.read_streams_opened.clone(),
        );
        r.register(
            "read_records",
            "Records shipped by read streams",
            self.read_records.clone(),
        );
        r.register_with_unit(
            "read",
            "Payload bytes shipped by read streams",
            Unit::Bytes,
            self.read_bytes.clone(),
        );
        r.register("seals", "Seals written", self.seals.clone());
        r.register(
            "purged_copies",
            "Copies deleted because a recovery this node missed overruled them",
            self.purged_copies.clone(),
        );
        r.register(
            "releases_held",
            "Releases of a log held back until the epochs below are settled",
            self.releases_held.clone(),
        );
    }
}

/// The metrics handles of one node; clone it freely (every field is a handle).
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    pub sequencer: SequencerMetrics,
    pub storage: StorageMetrics,
}

equal_handles!(NodeMetrics);

impl NodeMetrics {
    /// A registry (prefix `tally`) holding this node's recorded metrics; the node adds its
    /// scrape-time collectors to it.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("tally");
        self.sequencer.register(&mut registry);
        self.storage.register(&mut registry);
        registry
    }
}

/// Encodes `registry` in the OpenMetrics text format (what `/metrics` serves).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_exposition() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS_SECONDS.len() + 1);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((s.sum_seconds - 60.003_04).abs() < 1e-6);
        assert_eq!(s.quantile_upper_bound(0.5), Some(0.005));
        assert_eq!(s.quantile_upper_bound(0.01), Some(0.000_05));

        let metrics = NodeMetrics::default();
        metrics
            .sequencer
            .append_latency
            .observe(Duration::from_millis(2));
        metrics.sequencer.appends.inc_by(5);
        let text = encode(&metrics.registry());
        assert!(text.contains("tally_sequencer_appends_total 5"), "{text}");
        assert!(
            text.contains("tally_sequencer_append_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("tally_sequencer_append_latency_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tally_storage_stored_bytes_total 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        assert_eq!(
            Histogram::default().snapshot().quantile_upper_bound(0.5),
            None
        );
    }
}
