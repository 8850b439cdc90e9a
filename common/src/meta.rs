//! Log and cluster metadata shared by the epoch store, the roles and the wire: log attributes,
//! durability modes, node sets and their history, node membership records (DESIGN §4).
//!
//! These types are persisted (JSON in etcd and in the file store) and shipped (rkyv). Field
//! names are part of the persisted format: add fields with serde defaults, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Esn, Lsn, NodeId};
use crate::record::{Copyset, RecordFlags};

/// How a storage node acknowledges a store (DESIGN §7).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Durability {
    /// Acknowledge after the WAL is fsynced (group commit). The default.
    #[default]
    Durable = 0,
    /// Acknowledge after the write reaches RocksDB, without fsync. Opt-in per log.
    Fast = 1,
}

/// Per-log attributes. Changes take effect from the log's next epoch.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
#[serde(default, deny_unknown_fields)]
pub struct LogAttributes {
    /// Copies of every record (R).
    pub replication: u8,
    /// Storage nodes in the log's node set (0 = every storage node, capped at `Copyset::MAX`).
    pub node_set_size: u8,
    /// Time-based retention in seconds (0 = keep until trimmed explicitly).
    pub backlog_secs: u64,
    pub durability: Durability,
    /// The sequencer's window: LSNs granted but not yet completed (DESIGN §5).
    pub max_in_flight: u32,
}

impl Default for LogAttributes {
    fn default() -> Self {
        LogAttributes {
            replication: 3,
            node_set_size: 0,
            backlog_secs: 0,
            durability: Durability::Durable,
            max_in_flight: 4096,
        }
    }
}

/// Log attributes out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributesError {
    #[error("replication must be between 1 and {max}, got {got}", max = Copyset::MAX)]
    Replication { got: u8 },
    #[error("node_set_size {size} is smaller than replication {replication}")]
    NodeSetBelowReplication { size: u8, replication: u8 },
    #[error("max_in_flight must be between 1 and {max}, got {got}", max = LogAttributes::MAX_IN_FLIGHT)]
    MaxInFlight { got: u32 },
}

impl LogAttributes {
    pub const MAX_IN_FLIGHT: u32 = 1 << 20;

    pub fn validate(&self) -> Result<(), AttributesError> {
        if self.replication == 0 || self.replication as usize > Copyset::MAX {
            return Err(AttributesError::Replication {
                got: self.replication,
            });
        }
        if self.node_set_size != 0 && self.node_set_size < self.replication {
            return Err(AttributesError::NodeSetBelowReplication {
                size: self.node_set_size,
                replication: self.replication,
            });
        }
        if self.max_in_flight == 0 || self.max_in_flight > Self::MAX_IN_FLIGHT {
            return Err(AttributesError::MaxInFlight {
                got: self.max_in_flight,
            });
        }
        Ok(())
    }
}

/// The storage nodes that may hold records of one epoch of a log, sorted, without duplicates.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
#[serde(transparent)]
pub struct NodeSet(pub Vec<NodeId>);

impl NodeSet {
    /// Builds a node set: sorted and deduplicated.
    pub fn new(mut nodes: Vec<NodeId>) -> NodeSet {
        nodes.sort_unstable();
        nodes.dedup();
        NodeSet(nodes)
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.0.binary_search(&node).is_ok()
    }
}

/// One entry of a log's node-set history: from `since` on, records live on `node_set` with
/// `replication` copies.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct NodeSetEntry {
    pub since: Epoch,
    pub node_set: NodeSet,
    pub replication: u8,
}

/// Everything the epoch store keeps about one log, in one key (DESIGN §4).
#[derive(
    Clone,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct LogMetadata {
    /// The epoch the next sequencer will take; the running one is `next_epoch − 1`.
    pub next_epoch: Epoch,
    /// Node-set history, oldest first; `since` strictly increases.
    pub history: Vec<NodeSetEntry>,
    /// Last clean epoch: every epoch up to and including it is recovered.
    pub last_clean_epoch: Epoch,
    /// The tail record (last LSN) of the last clean epoch.
    pub last_clean_tail: Lsn,
    pub attributes: LogAttributes,
    /// What the recoveries of the most recent recovered epochs decided, oldest first, at most
    /// [`LogMetadata::MAX_RECOVERED`]: storage nodes that missed a recovery purge by it
    /// (DESIGN §7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<RecoveredEpoch>,
}

/// What the recovery of one epoch decided, kept in the epoch store with the last clean epoch
/// so that a storage node that missed the recovery can purge the copies it overruled.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct RecoveredEpoch {
    pub epoch: Epoch,
    /// The seal epoch of the recovery that finished: its writes carry it as `wave_or_seal`.
    pub seal: Epoch,
    /// Every ESN up to here was complete before recovery and left alone.
    pub lng: Esn,
    /// The epoch's last LSN after recovery (its bridge), `Lsn::INVALID` if recovery wrote
    /// nothing.
    pub tail: Lsn,
    /// Whether the digest was authoritative, so that recovery plugged holes at the ESNs for
    /// which it saw no copy (otherwise it left them alone).
    pub authoritative: bool,
}

impl RecoveredEpoch {
    /// Whether a copy at `lsn` (of this epoch) with `header`'s write metadata, held by a node
    /// that missed this recovery, is one the recovery overruled and the node must delete.
    /// `local_lng` is the node's own LNG of the epoch: copies at or below either LNG were
    /// complete and are kept. Copies written by this recovery (or a later one) are final.
    pub fn overrules(
        &self,
        lsn: Lsn,
        flags: RecordFlags,
        wave_or_seal: u32,
        local_lng: Esn,
    ) -> bool {
        if lsn.epoch() != self.epoch || lsn.esn() <= self.lng.max(local_lng) {
            return false;
        }
        if flags.contains(RecordFlags::WRITTEN_BY_RECOVERY) && Epoch(wave_or_seal) >= self.seal {
            return false;
        }
        if self.tail == Lsn::INVALID || self.tail.epoch() != self.epoch {
            // Recovery decided nothing about this epoch's ESNs: keep what is there.
            return false;
        }
        // At or past the bridge nothing but recovery's own writes belongs; before it, an
        // authoritative recovery plugged a hole wherever it saw no copy.
        lsn.esn() >= self.tail.esn() || self.authoritative
    }
}

impl LogMetadata {
    /// How many recovered epochs [`LogMetadata::recovered`] remembers.
    pub const MAX_RECOVERED: usize = 256;

    /// What the recovery of `epoch` decided, if it is still remembered.
    pub fn recovered_epoch(&self, epoch: Epoch) -> Option<&RecoveredEpoch> {
        self.recovered
            .binary_search_by_key(&epoch, |r| r.epoch)
            .ok()
            .map(|i| &self.recovered[i])
    }

    /// The node-set entry in force for `epoch`, if the history reaches back that far.
    pub fn node_set_for(&self, epoch: Epoch) -> Option<&NodeSetEntry> {
        self.history.iter().rev().find(|e| e.since <= epoch)
    }

    /// The epoch the running sequencer holds (`next_epoch − 1`), `INVALID` if never activated.
    pub fn current_epoch(&self) -> Epoch {
        self.next_epoch.prev()
    }
}

/// Roles a node runs.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Roles {
    pub sequencer: bool,
    pub storage: bool,
}

/// A storage node's state (DESIGN §7): only `ReadWrite` nodes take new copies; `DataLoss`
/// nodes are not authoritative (their "no record" proves nothing).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum StorageState {
    #[default]
    Provisioning = 0,
    ReadWrite = 1,
    ReadOnly = 2,
    DataLoss = 3,
    Disabled = 4,
    Gone = 5,
}

/// A node's membership record, kept under a lease in the epoch store.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct NodeInfo {
    pub id: NodeId,
    /// `host:port` of the node's QUIC endpoint.
    pub address: String,
    pub roles: Roles,
    /// Failure domain path, e.g. `region.dc.rack` (empty: none).
    pub location: String,
    /// Relative weight for placement (sequencers and node sets); 0 = take no new work.
    pub weight: u32,
    pub state: StorageState,
    /// Which run of the node's process registered this record: a random number drawn once
    /// per process start ([`NodeInfo::new_incarnation`]; 0 in records written before it
    /// existed). A client that found one incarnation silent knows a new one is a restarted
    /// process, not the one it gave up on (the client's `suspects`).
    #[serde(default)]
    pub incarnation: u64,
}

impl NodeInfo {
    /// A fresh incarnation for a process that is about to register (never 0).
    pub fn new_incarnation() -> u64 {
        rand::random::<u64>().max(1)
    }
}

/// Which data directory a storage node id belongs to: a random number drawn when the directory
/// is created (kept in its `IDENTITY` file) and bound to the node id in the epoch store on the
/// node's first start. A node that comes back on another directory (wiped, replaced, mixed up)
/// finds a different number bound to its id: its "I have no record" answers prove nothing, and
/// it registers as [`StorageState::DataLoss`] (DESIGN §7). Written as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct DataDirId(pub u64);

impl DataDirId {
    /// A fresh id for a directory being created (never 0).
    pub fn random() -> DataDirId {
        DataDirId(rand::random::<u64>().max(1))
    }
}

impl std::fmt::Display for DataDirId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl From<DataDirId> for String {
    fn from(id: DataDirId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for DataDirId {
    type Error = String;

    fn try_from(s: String) -> Result<DataDirId, String> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("data directory id {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(&s, 16)
            .map(DataDirId)
            .map_err(|e| format!("data directory id {s:?}: {e}"))
    }
}

/// What the epoch store had on record for a node id's data directory when the node bound its
/// directory at start-up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DataDirBinding {
    /// Nothing was on record: the directory is now the id's.
    New,
    /// The directory is the one on record.
    Same,
    /// The id belongs to another directory (`bound`): this one does not hold the id's data.
    Other { bound: DataDirId },
}

/// Extra attributes keyed by name, for forward-compatible additions without a format change.
pub type Extra = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_validate() {
        LogAttributes::default().validate().unwrap();
        let a = LogAttributes {
            replication: 0,
            ..LogAttributes::default()
        };
        assert_eq!(a.validate(), Err(AttributesError::Replication { got: 0 }));
        let a = LogAttributes {
            node_set_size: 2,
            ..LogAttributes::default()
        };
        assert!(matches!(
            a.validate(),
            Err(AttributesError::NodeSetBelowReplication { .. })
        ));
    }

    #[test]
    fn node_set_history_lookup() {
        let entry = |since, nodes: &[u32]| NodeSetEntry {
            since: Epoch(since),
            node_set: NodeSet::new(nodes.iter().copied().map(NodeId).collect()),
            replication: 2,
        };
        let meta = LogMetadata {
            next_epoch: Epoch(9),
            history: vec![entry(1, &[1, 2, 3]), entry(5, &[3, 2, 4])],
            last_clean_epoch: Epoch(7),
            last_clean_tail: Lsn::INVALID,
            recovered: Vec::new(),
            attributes: LogAttributes::default(),
        };
        assert_eq!(meta.current_epoch(), Epoch(8));
        assert!(meta.node_set_for(Epoch(0)).is_none());
        assert_eq!(meta.node_set_for(Epoch(4)).unwrap().since, Epoch(1));
        assert_eq!(
            meta.node_set_for(Epoch(8)).unwrap().node_set.nodes(),
            &[NodeId(2), NodeId(3), NodeId(4)]
        );
    }

    #[test]
    fn what_a_recovery_overrules() {
        let e = |esn: u32| Lsn::new(Epoch(4), Esn(esn));
        let decided = RecoveredEpoch {
            epoch: Epoch(4),
            seal: Epoch(6),
            lng: Esn(10),
            tail: e(20),
            authoritative: true,
        };
        let plain = RecordFlags::DURABLE;
        let rec = RecordFlags::WRITTEN_BY_RECOVERY;
        // At or below either LNG: complete before recovery, kept.
        assert!(!decided.overrules(e(10), plain, 1, Esn(0)));
        assert!(!decided.overrules(e(12), plain, 1, Esn(12)));
        // Past the LNG, not written by this recovery: overruled (authoritative).
        assert!(decided.overrules(e(11), plain, 1, Esn(0)));
        // Written by this recovery (or a later one): final; by an older one: overruled.
        assert!(!decided.overrules(e(11), rec, 6, Esn(0)));
        assert!(!decided.overrules(e(20), rec | RecordFlags::BRIDGE, 7, Esn(0)));
        assert!(decided.overrules(e(11), rec, 5, Esn(0)));
        // At and past the bridge: overruled, authoritative or not.
        let partial = RecoveredEpoch {
            authoritative: false,
            ..decided
        };
        assert!(!partial.overrules(e(11), plain, 1, Esn(0)));
        assert!(partial.overrules(e(20), plain, 1, Esn(0)));
        assert!(partial.overrules(e(25), plain, 1, Esn(0)));
        // Another epoch, or a recovery that recorded no tail: nothing to say.
        assert!(!decided.overrules(Lsn::new(Epoch(5), Esn(30)), plain, 1, Esn(0)));
        let empty = RecoveredEpoch {
            tail: Lsn::INVALID,
            ..decided
        };
        assert!(!empty.overrules(e(25), plain, 1, Esn(0)));
    }

    #[test]
    fn data_dir_ids_are_16_hex_digits() {
        let id = DataDirId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"00abcdef01234567\"");
        assert_eq!(serde_json::from_str::<DataDirId>(&json).unwrap(), id);
        for bad in [
            "\"abc\"",
            "\"00abcdef0123456g\"",
            "\"+0abcdef01234567\"",
            "12",
        ] {
            assert!(serde_json::from_str::<DataDirId>(bad).is_err(), "{bad}");
        }
        assert_ne!(DataDirId::random().0, 0);
    }
}
