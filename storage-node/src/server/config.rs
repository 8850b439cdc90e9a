//! [`StorageConfig`]: every knob of the storage server with its default in one place, and
//! [`StorageConfig::validate`] with messages that name the field and the allowed range. The
//! LogsDB settings ([`LogsDbConfig`]) are embedded and validated by LogsDB itself.

use std::path::PathBuf;
use std::time::Duration;

use tally_common::NodeId;
use tally_common::metrics::StorageMetrics;

use crate::logsdb::LogsDbConfig;

/// Configuration of the storage role on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// This node; must be named in a store's copyset.
    pub node: NodeId,
    /// The cluster name, checked against the data directory's identity file.
    pub cluster: String,
    /// Where LogsDB lives.
    pub data_dir: PathBuf,
    pub logsdb: LogsDbConfig,
    /// Store requests admitted at once (client and node protocols together); beyond it a
    /// store is answered `Overloaded` at once.
    pub max_in_flight_stores: u32,
    /// Payload bytes (plus a fixed per-record overhead) of admitted stores; beyond it a store
    /// is answered `Overloaded` at once. A batch larger than the whole budget is admitted
    /// alone (it takes the whole budget), so a valid batch is never refused forever.
    pub max_in_flight_store_bytes: u32,
    /// Below this much free space on the data directory's file system stores get `NoSpace`
    /// (LogDevice's free-disk-space threshold), before RocksDB itself runs out.
    pub min_free_disk_bytes: u64,
    /// How often free disk space is measured.
    pub disk_check_interval: Duration,
    /// Time to live of the membership lease (kept alive while the node runs).
    pub lease_ttl: Duration,
    /// Failure-domain path registered in membership (e.g. `region.dc.rack`).
    pub location: String,
    /// Placement weight registered in membership.
    pub weight: u32,
    /// Deadline of epoch-store calls made outside a request (startup, registration).
    pub epoch_store_timeout: Duration,
    /// Wait before watching membership again after the watch ended or failed.
    pub membership_retry: Duration,
    /// Most payload bytes in one pushed digest message (recovery), well below the frame limit.
    pub digest_batch_bytes: usize,
    /// Read streams open at once; beyond it `StartRead` is answered `Overloaded`.
    pub max_read_streams: u32,
    /// Most bytes (payloads plus a fixed overhead per record) in one pushed `Records` message
    /// of a read stream; a single larger record still goes alone. A stream holds at most two
    /// such batches in memory. Keep it well below the transport's frame limit.
    pub read_batch_bytes: usize,
    /// Where the role records its metrics (the node's handle; a fresh one by default).
    pub metrics: StorageMetrics,
}

impl StorageConfig {
    /// Defaults for `node` of `cluster` with its data in `data_dir`.
    pub fn new(node: NodeId, cluster: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            node,
            cluster: cluster.into(),
            data_dir: data_dir.into(),
            logsdb: LogsDbConfig::default(),
            max_in_flight_stores: 4096,
            max_in_flight_store_bytes: 256 << 20,
            min_free_disk_bytes: 256 << 20,
            disk_check_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(10),
            location: String::new(),
            weight: 1,
            epoch_store_timeout: Duration::from_secs(5),
            membership_retry: Duration::from_secs(1),
            digest_batch_bytes: 1 << 20,
            max_read_streams: 1024,
            read_batch_bytes: 256 << 10,
            metrics: StorageMetrics::default(),
        }
    }

    /// Checks ranges; the message names the field and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.node == NodeId(0) {
            return invalid("node", "must be a node id above 0");
        }
        if self.cluster.is_empty() {
            return invalid("cluster", "must not be empty");
        }
        if self.max_in_flight_stores == 0 {
            return invalid("max_in_flight_stores", "must be at least 1");
        }
        if self.max_in_flight_store_bytes == 0 {
            return invalid("max_in_flight_store_bytes", "must be at least 1");
        }
        for (field, d) in [
            ("disk_check_interval", self.disk_check_interval),
            ("lease_ttl", self.lease_ttl),
            ("epoch_store_timeout", self.epoch_store_timeout),
            ("membership_retry", self.membership_retry),
        ] {
            if d.is_zero() {
                return invalid(field, "must be greater than zero");
            }
        }
        if self.digest_batch_bytes == 0 || self.digest_batch_bytes > 8 << 20 {
            return invalid("digest_batch_bytes", "must be in 1 ..= 8 MiB");
        }
        if self.max_read_streams == 0 {
            return invalid("max_read_streams", "must be at least 1");
        }
        if self.read_batch_bytes == 0 || self.read_batch_bytes > 8 << 20 {
            return invalid("read_batch_bytes", "must be in 1 ..= 8 MiB");
        }
        Ok(())
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("storage config: {field} {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zeros_do_not() {
        let ok = StorageConfig::new(NodeId(1), "c", "/tmp/x");
        ok.validate().unwrap();
        let bad = StorageConfig {
            max_in_flight_store_bytes: 0,
            ..ok.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "max_in_flight_store_bytes",
                ..
            })
        ));
        let bad = StorageConfig {
            lease_ttl: Duration::ZERO,
            ..ok
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "lease_ttl",
                ..
            })
        ));
    }
}
