//! [`NodeConfig`]: the configuration of one `tally server` node, read from a TOML file
//! (unknown keys refused), then overridden by `TALLY_*` environment variables, then by
//! command-line flags ([`Overrides`]), then checked by [`NodeConfig::validate`], whose
//! messages name the bad field. The node-wide defaults live in [`NodeConfig::default`]; the
//! roles' knobs are optional here and default to the roles' own configs
//! ([`StorageConfig::new`], [`SequencerConfig::new`]), so every default has one home.
//! See `ops/examples/tally.toml` for every key.
//!
//! Durations are written `100ms`, `5s`, `10m`, `12h`, `7d` ([`parse_duration`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tally_common::NodeId;
use tally_common::meta::Roles;
use tally_common::transport::TransportConfig;
use tally_sequencer::runtime::SequencerConfig;
use tally_storage_node::server::StorageConfig;

use crate::node::{AdminListen, NodeSpec};

/// Parses `250ms`, `5s`, `10m`, `12h`, `7d` or a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// The shortest exact form of `d` in the units [`parse_duration`] reads.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A role a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Sequencer,
    Storage,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.trim() {
            "sequencer" => Ok(Role::Sequencer),
            "storage" => Ok(Role::Storage),
            other => Err(format!(
                "unknown role {other:?} (roles are sequencer and storage)"
            )),
        }
    }
}

/// Where the epoch store is: etcd (production) or a directory (single-node only: its
/// membership lives in the one process).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochStoreSection {
    /// etcd endpoints, `http://host:2379`.
    pub etcd: Vec<String>,
    /// A file epoch store directory (instead of etcd).
    pub file: Option<PathBuf>,
    /// Deadline of one epoch-store call.
    #[serde(deserialize_with = "de_duration")]
    pub call_timeout: Option<Duration>,
}

/// The storage role's knobs; unset ones take [`StorageConfig::new`]'s defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    #[serde(deserialize_with = "de_duration")]
    pub lease_ttl: Option<Duration>,
    pub min_free_disk_bytes: Option<u64>,
    pub max_in_flight_stores: Option<u32>,
    pub max_in_flight_store_bytes: Option<u32>,
    pub block_cache_bytes: Option<usize>,
    pub total_memtable_bytes: Option<usize>,
    /// Negative control of the chaos harness: accept stores from sealed epochs. Never in
    /// production.
    pub unsafe_ignore_seals: Option<bool>,
    /// Negative control of the chaos harness: acknowledge durable stores without syncing (the
    /// WAL stays in process memory). Never in production.
    pub unsafe_skip_fsync: Option<bool>,
}

/// The sequencer role's knobs; unset ones take [`SequencerConfig::new`]'s defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequencerSection {
    #[serde(deserialize_with = "de_duration")]
    pub append_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub abandon_grace: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub activation_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub tick_interval: Option<Duration>,
    pub max_logs: Option<usize>,
}

/// One node's configuration (the TOML file's shape).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Cluster name: etcd keys live under `/tally/<cluster>/`; checked against data dirs.
    pub cluster: String,
    /// This node's id, stable across restarts (1 or more).
    pub node_id: u32,
    /// UDP address of the node's QUIC endpoint (both protocols).
    pub listen: String,
    /// Address registered in membership for others to reach this node (required when
    /// `listen` is a wildcard address); default: the bound address.
    pub advertise: Option<String>,
    /// TCP address of the admin HTTP port (`/metrics`, `/health`, `/ready`, the status
    /// page): `ip:port`, `auto` (the listen IP and the listen port + 1000) or `disabled`.
    pub admin_listen: String,
    /// LogsDB directory (storage role).
    pub data_dir: Option<PathBuf>,
    pub roles: Vec<Role>,
    /// Directory with `ca.pem`, `node.pem` and `node.key`.
    pub certs_dir: PathBuf,
    /// Failure domain, e.g. `region.dc.rack`.
    pub location: String,
    /// Placement weight (0: take no new work).
    pub weight: u32,
    pub epoch_store: EpochStoreSection,
    pub storage: StorageSection,
    pub sequencer: SequencerSection,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cluster: "tally".to_owned(),
            node_id: 0,
            listen: "127.0.0.1:4500".to_owned(),
            advertise: None,
            admin_listen: ADMIN_AUTO.to_owned(),
            data_dir: None,
            roles: vec![Role::Sequencer, Role::Storage],
            certs_dir: PathBuf::from("certs"),
            location: String::new(),
            weight: 1,
            epoch_store: EpochStoreSection::default(),
            storage: StorageSection::default(),
            sequencer: SequencerSection::default(),
        }
    }
}

/// `admin_listen` value: the listen IP, the listen port + [`ADMIN_PORT_OFFSET`].
pub const ADMIN_AUTO: &str = "auto";
/// `admin_listen` value: no admin port.
pub const ADMIN_DISABLED: &str = "disabled";
/// How far above the QUIC port the admin port is by default.
pub const ADMIN_PORT_OFFSET: u16 = 1000;

/// The admin port `admin_listen` names for a node listening on `listen`: `Ok(None)` when
/// disabled; an error message when it is neither `auto`, `disabled` nor `ip:port`. `auto` is
/// best effort (listen port + 1000, or an ephemeral port when that is taken or above 65535);
/// an explicit address must be bound as given.
pub fn admin_addr(admin_listen: &str, listen: SocketAddr) -> Result<Option<AdminListen>, String> {
    match admin_listen.trim() {
        ADMIN_DISABLED => Ok(None),
        ADMIN_AUTO => {
            let port = match listen.port() {
                0 => 0,
                p => p.checked_add(ADMIN_PORT_OFFSET).unwrap_or(0),
            };
            Ok(Some(AdminListen {
                addr: SocketAddr::new(listen.ip(), port),
                fallback: true,
            }))
        }
        other => other
            .parse()
            .map(|addr| {
                Some(AdminListen {
                    addr,
                    fallback: false,
                })
            })
            .map_err(|_| {
                format!(
                    "{other:?} is not an ip:port address, \"{ADMIN_AUTO}\" or \"{ADMIN_DISABLED}\""
                )
            }),
    }
}

/// A configuration value that is missing or out of range; `field` is the TOML key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Values that replace the file's: from `TALLY_*` variables, then from flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub cluster: Option<String>,
    pub node_id: Option<u32>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub roles: Option<Vec<Role>>,
    pub etcd: Option<Vec<String>>,
    pub epoch_store_dir: Option<PathBuf>,
    pub certs_dir: Option<PathBuf>,
    pub location: Option<String>,
    pub weight: Option<u32>,
}

/// Splits a comma-separated list, dropping empty items.
pub fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses a comma-separated role list.
pub fn parse_roles(s: &str) -> Result<Vec<Role>, String> {
    list(s).iter().map(|r| r.parse()).collect()
}

impl Overrides {
    /// Reads the `TALLY_*` variables through `get` (the process environment in `main`, a
    /// map in tests). Empty values count as unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Overrides, ConfigError> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let num = |name: &str| -> Result<Option<u32>, ConfigError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| invalid(name, format!("{v:?} is not a whole number")))
                })
                .transpose()
        };
        Ok(Overrides {
            cluster: var("TALLY_CLUSTER"),
            node_id: num("TALLY_NODE_ID")?,
            listen: var("TALLY_LISTEN"),
            advertise: var("TALLY_ADVERTISE"),
            admin_listen: var("TALLY_ADMIN_LISTEN"),
            data_dir: var("TALLY_DATA_DIR").map(PathBuf::from),
            roles: var("TALLY_ROLES")
                .map(|v| parse_roles(&v).map_err(|e| invalid("TALLY_ROLES", e)))
                .transpose()?,
            etcd: var("TALLY_ETCD").map(|v| list(&v)),
            epoch_store_dir: var("TALLY_EPOCH_STORE_DIR").map(PathBuf::from),
            certs_dir: var("TALLY_CERTS_DIR").map(PathBuf::from),
            location: var("TALLY_LOCATION"),
            weight: num("TALLY_WEIGHT")?,
        })
    }
}

impl NodeConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| invalid("(file)", e.to_string()))
    }

    /// The file (or the defaults), then `env`, then `flags`, validated.
    pub fn load(
        file: Option<&Path>,
        env: &Overrides,
        flags: &Overrides,
    ) -> Result<NodeConfig, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("--config", format!("{}: {e}", path.display())))?;
                NodeConfig::from_toml(&text).map_err(|e| ConfigError {
                    field: e.field,
                    reason: format!("{}: {}", path.display(), e.reason),
                })?
            }
            None => NodeConfig::default(),
        };
        config.apply(env);
        config.apply(flags);
        config.validate()?;
        Ok(config)
    }

    /// Replaces the values `o` sets.
    pub fn apply(&mut self, o: &Overrides) {
        let o = o.clone();
        if let Some(v) = o.cluster {
            self.cluster = v;
        }
        if let Some(v) = o.node_id {
            self.node_id = v;
        }
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = o.advertise {
            self.advertise = Some(v);
        }
        if let Some(v) = o.admin_listen {
            self.admin_listen = v;
        }
        if let Some(v) = o.data_dir {
            self.data_dir = Some(v);
        }
        if let Some(v) = o.roles {
            self.roles = v;
        }
        // The two epoch stores exclude each other: naming one replaces the other.
        if let Some(v) = o.etcd {
            self.epoch_store.etcd = v;
            self.epoch_store.file = None;
        }
        if let Some(v) = o.epoch_store_dir {
            self.epoch_store.file = Some(v);
            self.epoch_store.etcd.clear();
        }
        if let Some(v) = o.certs_dir {
            self.certs_dir = v;
        }
        if let Some(v) = o.location {
            self.location = v;
        }
        if let Some(v) = o.weight {
            self.weight = v;
        }
    }

    pub fn roles(&self) -> Roles {
        Roles {
            sequencer: self.roles.contains(&Role::Sequencer),
            storage: self.roles.contains(&Role::Storage),
        }
    }

    /// Checks every value; the error names the TOML key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.cluster.is_empty() || !self.cluster.chars().all(name_ok) {
            return Err(invalid(
                "cluster",
                format!(
                    "{:?} must be non-empty and use only [A-Za-z0-9._-]",
                    self.cluster
                ),
            ));
        }
        if self.node_id == 0 {
            return Err(invalid(
                "node_id",
                "must be set to a node id of 1 or more (TALLY_NODE_ID, --node-id)",
            ));
        }
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an ip:port address", self.listen),
            )
        })?;
        if listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(invalid(
                "advertise",
                format!(
                    "listen {} is a wildcard address: set the address other nodes and clients \
                     reach this node at",
                    self.listen
                ),
            ));
        }
        let admin =
            admin_addr(&self.admin_listen, listen).map_err(|e| invalid("admin_listen", e))?;
        if admin.is_some_and(|a| a.addr == listen && listen.port() != 0) {
            return Err(invalid(
                "admin_listen",
                format!("{} is the listen address; pick another port", self.listen),
            ));
        }
        if let Some(a) = &self.advertise
            && a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(invalid("advertise", format!("{a:?} is not host:port")));
        }
        if self.roles.is_empty() {
            return Err(invalid("roles", "must name sequencer and/or storage"));
        }
        if self.roles().storage && self.data_dir.is_none() {
            return Err(invalid(
                "data_dir",
                "the storage role needs a data directory (TALLY_DATA_DIR, --data-dir)",
            ));
        }
        let es = &self.epoch_store;
        match (es.etcd.is_empty(), &es.file) {
            (true, None) => {
                return Err(invalid(
                    "epoch_store",
                    "set epoch_store.etcd (endpoints) or epoch_store.file (a directory)",
                ));
            }
            (false, Some(_)) => {
                return Err(invalid(
                    "epoch_store",
                    "set only one of epoch_store.etcd and epoch_store.file",
                ));
            }
            _ => {}
        }
        for e in &es.etcd {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "epoch_store.etcd",
                    format!("{e:?} must start with http:// or https://"),
                ));
            }
            if e.starts_with("https://") {
                return Err(invalid(
                    "epoch_store.etcd",
                    format!("{e:?}: TLS to etcd is not configurable from tally server yet"),
                ));
            }
        }
        if es.call_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "epoch_store.call_timeout",
                "must be greater than zero",
            ));
        }
        if self.storage.block_cache_bytes == Some(0) {
            return Err(invalid("storage.block_cache_bytes", "must be at least 1"));
        }
        if self.storage.total_memtable_bytes == Some(0) {
            return Err(invalid(
                "storage.total_memtable_bytes",
                "must be at least 1",
            ));
        }
        let spec = self.spec_unchecked();
        if self.roles().storage {
            spec.storage.validate().map_err(|e| match e {
                tally_storage_node::server::ConfigError::Invalid { field, reason } => {
                    invalid(&format!("storage.{field}"), reason)
                }
            })?;
        }
        if self.roles().sequencer {
            spec.sequencer.validate().map_err(|e| match e {
                tally_sequencer::runtime::ConfigError::Invalid { field, reason } => {
                    invalid(&format!("sequencer.{field}"), reason)
                }
            })?;
        }
        Ok(())
    }

    /// What [`crate::node::start`] runs (call [`NodeConfig::validate`] first).
    pub fn spec(&self) -> Result<NodeSpec, ConfigError> {
        self.validate()?;
        Ok(self.spec_unchecked())
    }

    fn spec_unchecked(&self) -> NodeSpec {
        let id = NodeId(self.node_id);
        let data_dir = self.data_dir.clone().unwrap_or_default();
        let mut storage = StorageConfig::new(id, self.cluster.clone(), data_dir);
        storage.location = self.location.clone();
        storage.weight = self.weight;
        let s = &self.storage;
        if let Some(v) = s.lease_ttl {
            storage.lease_ttl = v;
        }
        if let Some(v) = s.min_free_disk_bytes {
            storage.min_free_disk_bytes = v;
        }
        if let Some(v) = s.max_in_flight_stores {
            storage.max_in_flight_stores = v;
        }
        if let Some(v) = s.max_in_flight_store_bytes {
            storage.max_in_flight_store_bytes = v;
        }
        if let Some(v) = s.block_cache_bytes {
            storage.logsdb.block_cache_bytes = v;
        }
        if let Some(v) = s.total_memtable_bytes {
            storage.logsdb.total_memtable_bytes = v;
        }
        if let Some(v) = s.unsafe_ignore_seals {
            storage.logsdb.unsafe_controls.ignore_seals = v;
        }
        if let Some(v) = s.unsafe_skip_fsync {
            storage.logsdb.unsafe_controls.skip_fsync = v;
        }
        if let Some(v) = self.epoch_store.call_timeout {
            storage.epoch_store_timeout = v;
        }
        let mut sequencer = SequencerConfig::new(id);
        let q = &self.sequencer;
        if let Some(v) = q.append_timeout {
            sequencer.timing.append_timeout = v;
        }
        if let Some(v) = q.abandon_grace {
            sequencer.timing.abandon_grace = v;
        }
        if let Some(v) = q.activation_timeout {
            sequencer.activation_timeout = v;
        }
        if let Some(v) = q.tick_interval {
            sequencer.tick_interval = v;
        }
        if let Some(v) = q.max_logs {
            sequencer.max_logs = v;
        }
        NodeSpec {
            id,
            roles: self.roles(),
            listen: self
                .listen
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
            advertise: self.advertise.clone(),
            admin: self
                .listen
                .parse()
                .ok()
                .and_then(|listen| admin_addr(&self.admin_listen, listen).ok().flatten()),
            certs_dir: self.certs_dir.clone(),
            transport: TransportConfig::default(),
            lease_ttl: storage.lease_ttl,
            storage,
            sequencer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const EXAMPLE: &str = include_str!("../examples/tally.toml");

    fn env(pairs: &[(&str, &str)]) -> Overrides {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Overrides::from_env(|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let c = NodeConfig::from_toml(EXAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(
            c.roles(),
            Roles {
                sequencer: true,
                storage: true
            }
        );
        assert_eq!(c.epoch_store.etcd, vec!["http://127.0.0.1:2379".to_owned()]);
        let spec = c.spec().unwrap();
        assert_eq!(spec.storage.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            spec.sequencer.timing.append_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn env_overrides_the_file_and_flags_override_env() {
        let mut c = NodeConfig::from_toml(EXAMPLE).unwrap();
        c.apply(&env(&[
            ("TALLY_NODE_ID", "7"),
            ("TALLY_LISTEN", "127.0.0.1:5000"),
            ("TALLY_ROLES", "storage"),
        ]));
        c.apply(&Overrides {
            listen: Some("127.0.0.1:6000".into()),
            ..Overrides::default()
        });
        c.validate().unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listen, "127.0.0.1:6000");
        assert_eq!(
            c.roles(),
            Roles {
                sequencer: false,
                storage: true
            }
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |c: &NodeConfig| c.validate().unwrap_err().field;
        let good = NodeConfig::from_toml(EXAMPLE).unwrap();
        let mut c = good.clone();
        c.node_id = 0;
        assert_eq!(field(&c), "node_id");
        let mut c = good.clone();
        c.listen = "nowhere".into();
        assert_eq!(field(&c), "listen");
        let mut c = good.clone();
        c.admin_listen = "somewhere".into();
        assert_eq!(field(&c), "admin_listen");
        let mut c = good.clone();
        c.epoch_store.file = Some("/tmp/x".into());
        assert_eq!(field(&c), "epoch_store");
        let mut c = good.clone();
        c.storage.lease_ttl = Some(Duration::ZERO);
        assert_eq!(field(&c), "storage.lease_ttl");
        let mut c = good.clone();
        c.sequencer.tick_interval = Some(Duration::ZERO);
        assert_eq!(field(&c), "sequencer.tick_interval");
        let mut c = good;
        c.data_dir = None;
        assert_eq!(field(&c), "data_dir");
        let e = NodeConfig::from_toml("node_id = 1\nbogus = 2\n").unwrap_err();
        assert!(e.reason.contains("bogus"), "{e}");
        let e = NodeConfig::from_toml("[storage]\nlease_ttl = \"5 parsecs\"\n").unwrap_err();
        assert!(e.reason.contains("lease_ttl"), "{e}");
        let bad_env = Overrides::from_env(|k| (k == "TALLY_NODE_ID").then(|| "x".to_owned()));
        assert_eq!(bad_env.unwrap_err().field, "TALLY_NODE_ID");
    }

    #[test]
    fn admin_addresses() {
        let listen: SocketAddr = "127.0.0.1:4500".parse().unwrap();
        let auto = |addr: &str| {
            Ok(Some(AdminListen {
                addr: addr.parse().unwrap(),
                fallback: true,
            }))
        };
        assert_eq!(admin_addr("auto", listen), auto("127.0.0.1:5500"));
        assert_eq!(admin_addr("disabled", listen), Ok(None));
        assert_eq!(
            admin_addr("10.0.0.1:9000", listen),
            Ok(Some(AdminListen {
                addr: "10.0.0.1:9000".parse().unwrap(),
                fallback: false
            }))
        );
        assert_eq!(
            admin_addr("auto", "127.0.0.1:0".parse().unwrap()),
            auto("127.0.0.1:0")
        );
        assert_eq!(
            admin_addr("auto", "127.0.0.1:65000".parse().unwrap()),
            auto("127.0.0.1:0")
        );
        assert!(admin_addr("nine", listen).is_err());
        let mut c = NodeConfig::from_toml(EXAMPLE).unwrap();
        c.apply(&env(&[("TALLY_ADMIN_LISTEN", "disabled")]));
        assert_eq!(c.spec().unwrap().admin, None);
        c.admin_listen = c.listen.clone();
        assert_eq!(c.validate().unwrap_err().field, "admin_listen");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
