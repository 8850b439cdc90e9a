//! [`ClientConfig`]: every knob of the client runtime with its default in one place, and
//! [`ClientConfig::validate`] with messages that name the field. The append timeouts and
//! placement options are the pure appender's [`AppendPolicy`]; graylist intervals are its
//! [`GraylistConfig`]; the transport's limits are the payload and batch limits appends obey;
//! [`CoalesceConfig`] bounds how concurrent appends to one log are gathered into one grant.

use std::path::PathBuf;
use std::time::Duration;

use tally_common::limits::FRAME_OVERHEAD_BYTES;
use tally_common::transport::TransportConfig;
use tally_common::{Limits, NodeInfo, NodeSet};

use crate::appender::AppendPolicy;
use crate::graylist::GraylistConfig;
use crate::placement::DomainScope;

/// Configuration of one [`crate::Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of nodes to ask for the cluster state first (any node serves it).
    pub seeds: Vec<String>,
    /// Directory with `ca.pem` and the client certificate `<cert_name>.pem` / `.key`.
    pub certs_dir: PathBuf,
    /// Base name of the client certificate and key files (default `client`).
    pub cert_name: String,
    /// QUIC settings and the limits (payload, batch, frame) appends obey.
    pub transport: TransportConfig,
    /// Store timeouts (exponential per wave), the whole append's timeout, failure domains.
    /// The append timeout covers everything from the call to its outcome, sequencing included.
    pub append: AppendPolicy,
    /// With `append.domain_scope` unset: spread copies over racks (`DomainScope::RACK`) as
    /// soon as some node of the node set has a location, and over nodes only otherwise.
    pub auto_domain_scope: bool,
    /// How long slow, overloaded, full, disabled or unreachable nodes are avoided.
    pub graylist: GraylistConfig,
    /// Deadline of one metadata or `Sequence` call (also capped by the append's deadline).
    pub request_timeout: Duration,
    /// How often the cluster state is fetched again in the background; it is also refetched
    /// when a node cannot be reached or a redirect names a node the view does not know.
    pub cluster_refresh_interval: Duration,
    /// First wait after `SeqNoBufs` or a retryable sequencer error; doubles up to the maximum.
    pub sequencer_backoff_initial: Duration,
    /// Upper bound of that wait.
    pub sequencer_backoff_max: Duration,
    /// Most redirects one `Sequence` attempt follows before asking the next node in rank order
    /// with `no_redirect` (breaks loops between nodes whose views disagree).
    pub max_redirects: usize,
    /// Deadline of the `ReportStored` sent after an append completed (in the background).
    pub report_timeout: Duration,
    /// A sequencer that has not even acknowledged a `Sequence` request at the transport level
    /// this long after it went out is taken for dead, frozen or cut off: the next node in
    /// rank order is asked to take the log over (sequencer failover). A live but busy
    /// sequencer acknowledges within milliseconds and gets the whole `request_timeout`.
    pub sequencer_silence_timeout: Duration,
    /// How long a sequencer found silent, unreachable or slow is asked last (after the others
    /// in rank order), so every append does not pay for it again; about a membership lease,
    /// after which a dead node has left the cluster state.
    pub sequencer_suspect_for: Duration,
    /// How long a sequencer found silent or unreachable — a `Sequence` or liveness check it did
    /// not acknowledge within `sequencer_silence_timeout`, or no connection — is taken for
    /// dead: while another node redirects a log to it, that node is asked to take the log over
    /// at once. Only the process found silent is: a restart (a new incarnation in the cluster
    /// state) is checked first. After this, a redirect to a suspect first costs one liveness
    /// check (`GetClusterState` within `sequencer_silence_timeout`, shared by concurrent
    /// appends), so one stall does not move a live node's logs for long.
    pub sequencer_dead_for: Duration,
    /// How concurrent appends to one log share a grant, its STOREs and its report.
    pub coalesce: CoalesceConfig,
}

/// Coalescing of concurrent appends to one log (DESIGN §6 step 1). While a `Sequence` for a
/// log is on its way, further appends to that log wait; when it returns, those waiting go out
/// together as one batch: one grant, one STORE per copyset member, one `ReportStored`. There
/// is no timer: an append to an idle log goes at once, alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// Records one coalesced batch holds at most (an `append_batch` larger than this goes
    /// alone, whole). At most `limits.max_records_per_batch`.
    pub max_batch_records: u32,
    /// Bytes (payloads plus per-record overhead) a coalesced batch grows to at most; its
    /// first append goes whatever its size. At most one STORE frame.
    pub max_batch_bytes: usize,
    /// Batches of one log between their `Sequence` and their outcome: the next batch is
    /// sequenced while earlier ones write their copies. At least 1.
    pub max_batches_in_flight: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            max_batch_records: 1024,
            max_batch_bytes: 1024 * 1024,
            max_batches_in_flight: 2,
        }
    }
}

impl CoalesceConfig {
    /// Checks the bounds against the transport's `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        if self.max_batch_records == 0 || self.max_batch_records > limits.max_records_per_batch {
            return Err(invalid(
                "coalesce.max_batch_records",
                format!(
                    "{} is outside 1..={} (limits.max_records_per_batch)",
                    self.max_batch_records, limits.max_records_per_batch
                ),
            ));
        }
        let frame = limits.max_frame_bytes.saturating_sub(FRAME_OVERHEAD_BYTES);
        if self.max_batch_bytes == 0 || self.max_batch_bytes > frame {
            return Err(invalid(
                "coalesce.max_batch_bytes",
                format!(
                    "{} is outside 1..={frame} (one STORE frame)",
                    self.max_batch_bytes
                ),
            ));
        }
        if !(1..=MAX_BATCHES_IN_FLIGHT).contains(&self.max_batches_in_flight) {
            return Err(invalid(
                "coalesce.max_batches_in_flight",
                format!(
                    "{} is outside 1..={MAX_BATCHES_IN_FLIGHT}",
                    self.max_batches_in_flight
                ),
            ));
        }
        Ok(())
    }
}

/// Upper bound of [`CoalesceConfig::max_batches_in_flight`]: beyond a few the batches only
/// get smaller.
pub const MAX_BATCHES_IN_FLIGHT: usize = 64;

impl ClientConfig {
    /// Defaults for a cluster reached through `seeds`, with certificates in `certs_dir`.
    pub fn new(seeds: Vec<String>, certs_dir: impl Into<PathBuf>) -> ClientConfig {
        ClientConfig {
            seeds,
            certs_dir: certs_dir.into(),
            cert_name: "client".to_owned(),
            transport: TransportConfig::default(),
            append: AppendPolicy::default(),
            auto_domain_scope: true,
            graylist: GraylistConfig::default(),
            request_timeout: Duration::from_secs(5),
            cluster_refresh_interval: Duration::from_secs(10),
            sequencer_backoff_initial: Duration::from_millis(5),
            sequencer_backoff_max: Duration::from_secs(1),
            max_redirects: 3,
            report_timeout: Duration::from_secs(5),
            sequencer_silence_timeout: Duration::from_millis(750),
            sequencer_suspect_for: Duration::from_secs(10),
            sequencer_dead_for: Duration::from_secs(2),
            coalesce: CoalesceConfig::default(),
        }
    }

    /// The failure-domain scope for a node set whose members are `nodes` (see
    /// `auto_domain_scope`).
    pub fn domain_scope_for(&self, node_set: &NodeSet, nodes: &[NodeInfo]) -> Option<DomainScope> {
        if self.append.domain_scope.is_some() || !self.auto_domain_scope {
            return self.append.domain_scope;
        }
        let located = nodes
            .iter()
            .any(|n| node_set.contains(n.id) && !n.location.is_empty());
        located.then_some(DomainScope::RACK)
    }

    /// Checks ranges; the message names the field and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        if self.seeds.is_empty() {
            return Err(invalid("seeds", "must name at least one node".into()));
        }
        if self.cert_name.is_empty() {
            return Err(invalid("cert_name", "must not be empty".into()));
        }
        let positive = [
            (
                "append.store_timeout_initial",
                self.append.store_timeout_initial,
            ),
            ("append.store_timeout_max", self.append.store_timeout_max),
            ("append.append_timeout", self.append.append_timeout),
            ("request_timeout", self.request_timeout),
            ("cluster_refresh_interval", self.cluster_refresh_interval),
            ("sequencer_backoff_initial", self.sequencer_backoff_initial),
            ("sequencer_backoff_max", self.sequencer_backoff_max),
            ("report_timeout", self.report_timeout),
            ("sequencer_silence_timeout", self.sequencer_silence_timeout),
            ("sequencer_suspect_for", self.sequencer_suspect_for),
            ("sequencer_dead_for", self.sequencer_dead_for),
        ];
        for (field, d) in positive {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero".into()));
            }
        }
        if self.append.store_timeout_initial > self.append.store_timeout_max {
            return Err(invalid(
                "append.store_timeout_initial",
                format!(
                    "{:?} is above append.store_timeout_max {:?}",
                    self.append.store_timeout_initial, self.append.store_timeout_max
                ),
            ));
        }
        if self.sequencer_backoff_initial > self.sequencer_backoff_max {
            return Err(invalid(
                "sequencer_backoff_initial",
                format!(
                    "{:?} is above sequencer_backoff_max {:?}",
                    self.sequencer_backoff_initial, self.sequencer_backoff_max
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.graylist.max_slow_fraction) {
            return Err(invalid(
                "graylist.max_slow_fraction",
                format!("{} is outside 0..=1", self.graylist.max_slow_fraction),
            ));
        }
        self.transport
            .limits
            .validate()
            .map_err(|e| invalid("transport.limits", e.to_string()))?;
        self.coalesce.validate(&self.transport.limits)
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `field` is out of range for `reason`.
    #[error("client config: {field} {reason}")]
    Invalid {
        /// The field, as `ClientConfig`'s path names it (`append.append_timeout`).
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::new(vec!["127.0.0.1:4000".into()], "/tmp/certs")
    }

    #[test]
    fn defaults_validate() {
        config().validate().unwrap();
    }

    #[test]
    fn domains_are_spread_when_the_node_set_has_locations() {
        use tally_common::NodeId;
        use tally_common::meta::{Roles, StorageState};
        let node = |id: u32, location: &str| NodeInfo {
            id: NodeId(id),
            address: String::new(),
            roles: Roles {
                sequencer: false,
                storage: true,
            },
            location: location.into(),
            weight: 1,
            state: StorageState::ReadWrite,
            incarnation: 0,
        };
        let set = NodeSet::new(vec![NodeId(1), NodeId(2)]);
        let c = config();
        assert_eq!(c.domain_scope_for(&set, &[node(1, ""), node(2, "")]), None);
        // A located node outside the node set does not count.
        assert_eq!(
            c.domain_scope_for(&set, &[node(1, ""), node(3, "r.d.k")]),
            None
        );
        assert_eq!(
            c.domain_scope_for(&set, &[node(1, "r.d.k1"), node(2, "r.d.k2")]),
            Some(DomainScope::RACK)
        );
        let mut fixed = config();
        fixed.append.domain_scope = Some(DomainScope::REGION);
        assert_eq!(
            fixed.domain_scope_for(&set, &[node(1, "")]),
            Some(DomainScope::REGION)
        );
        let mut off = config();
        off.auto_domain_scope = false;
        assert_eq!(off.domain_scope_for(&set, &[node(1, "r.d.k1")]), None);
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |c: ClientConfig| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            Ok(()) => panic!("accepted {c:?}"),
        };
        assert_eq!(
            field(ClientConfig {
                seeds: Vec::new(),
                ..config()
            }),
            "seeds"
        );
        let mut c = config();
        c.append.append_timeout = Duration::ZERO;
        assert_eq!(field(c), "append.append_timeout");
        let mut c = config();
        c.append.store_timeout_initial = Duration::from_secs(120);
        assert_eq!(field(c), "append.store_timeout_initial");
        let mut c = config();
        c.transport.limits.max_records_per_batch = 0;
        assert_eq!(field(c), "transport.limits");
        let mut c = config();
        c.coalesce.max_batch_records = c.transport.limits.max_records_per_batch + 1;
        assert_eq!(field(c), "coalesce.max_batch_records");
        let mut c = config();
        c.coalesce.max_batch_bytes = c.transport.limits.max_frame_bytes;
        assert_eq!(field(c), "coalesce.max_batch_bytes");
        let mut c = config();
        c.coalesce.max_batches_in_flight = 0;
        assert_eq!(field(c), "coalesce.max_batches_in_flight");
    }
}
