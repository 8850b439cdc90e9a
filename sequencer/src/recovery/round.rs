//! The state of one attempt at recovering an epoch ([`Round`]; a restart replaces it whole),
//! the write of one ESN to its copyset ([`Mutation`]), and the recovery store it sends.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use tally_common::quorum::QuorumChecker;
use tally_common::wire::{ReadRecord, StoreBatch, StoreRecord};
use tally_common::{Copyset, Durability, Esn, Lsn, NodeId, RecordFlags, payload_crc32};

use super::RecoveryError;
use super::digest::{Digest, RecoveryPlan};
use super::epoch_recovery::EpochRecoveryConfig;

/// A request to one node: waiting for its answer, or to be re-sent at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbox {
    InFlight,
    RetryAt(Instant),
}

/// What is written at one ESN.
#[derive(Debug, Clone)]
pub(super) enum WriteKind {
    Record(ReadRecord),
    Plug { timestamp_ms: u64 },
    Bridge { timestamp_ms: u64 },
}

/// The write of one ESN to its copyset.
#[derive(Debug, Clone)]
pub(super) struct Mutation {
    pub(super) kind: WriteKind,
    pub(super) holders: Vec<NodeId>,
    /// Empty until started, or while no copyset can be found.
    pub(super) copyset: Vec<NodeId>,
    /// Store sequence number in flight per node, for the current copyset.
    pub(super) outstanding: BTreeMap<NodeId, u64>,
    pub(super) acked: BTreeSet<NodeId>,
}

impl Mutation {
    pub(super) fn is_done(&self) -> bool {
        !self.copyset.is_empty() && self.acked.len() == self.copyset.len()
    }
}

/// The state of one attempt; a restart replaces it whole.
#[derive(Debug)]
pub(super) struct Round {
    pub(super) started: Instant,
    /// Plain counting (statuses ignored): sealing must stop appends on *any* node.
    pub(super) sealed: QuorumChecker,
    /// Per sealed node: (LNG it reported for this epoch, highest ESN of this epoch it holds).
    pub(super) seal_info: BTreeMap<NodeId, (Esn, Esn)>,
    pub(super) seal_out: BTreeMap<NodeId, Outbox>,
    pub(super) digest_after: Esn,
    pub(super) digest_out: BTreeMap<NodeId, Outbox>,
    pub(super) digest: Digest,
    /// With statuses: decides whether absence is proven.
    pub(super) digested: QuorumChecker,
    pub(super) grace_deadline: Option<Instant>,
    pub(super) plan: Option<RecoveryPlan>,
    pub(super) mutations: BTreeMap<Esn, Mutation>,
    pub(super) pending: VecDeque<Esn>,
    /// ESNs started and not yet done.
    pub(super) active: usize,
    pub(super) store_esn: BTreeMap<u64, Esn>,
    pub(super) excluded: BTreeSet<NodeId>,
    pub(super) cleaned: QuorumChecker,
    pub(super) clean_out: BTreeMap<NodeId, Outbox>,
    pub(super) lce_retry_at: Option<Instant>,
}

/// The recovery store of `esn` for `nodes`: recovery's flags and seal, so it beats every
/// normal write and every older recovery on the nodes, however late those arrive.
pub(super) fn store_batch(
    config: &EpochRecoveryConfig,
    lng: Esn,
    esn: Esn,
    kind: &WriteKind,
    nodes: &[NodeId],
) -> StoreBatch {
    let lsn = Lsn::new(config.epoch, esn);
    let base = RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::DURABLE;
    let (flags, record) = match kind {
        WriteKind::Record(r) => (
            base,
            StoreRecord {
                lsn,
                timestamp_ms: r.header.timestamp_ms,
                payload_crc32: r.header.payload_crc32,
                payload: r.payload.clone().into(),
            },
        ),
        WriteKind::Plug { timestamp_ms } => (base | RecordFlags::HOLE, empty(lsn, *timestamp_ms)),
        WriteKind::Bridge { timestamp_ms } => (
            base | RecordFlags::HOLE | RecordFlags::BRIDGE,
            empty(lsn, *timestamp_ms),
        ),
    };
    StoreBatch {
        log: config.log,
        copyset: Copyset::new(nodes.to_vec()).expect("node sets are bounded and distinct"),
        wave_or_seal: config.seal.0,
        flags,
        durability: Durability::Durable,
        lng,
        records: vec![record],
    }
}

fn empty(lsn: Lsn, timestamp_ms: u64) -> StoreRecord {
    StoreRecord {
        lsn,
        timestamp_ms,
        payload_crc32: payload_crc32(&[]),
        payload: bytes::Bytes::new(),
    }
}

impl Mutation {
    pub(super) fn new(kind: WriteKind, holders: Vec<NodeId>) -> Mutation {
        Mutation {
            kind,
            holders,
            copyset: Vec::new(),
            outstanding: BTreeMap::new(),
            acked: BTreeSet::new(),
        }
    }
}

impl Round {
    /// The nodes whose digest stream finished in this attempt.
    pub(super) fn digested_nodes(&self) -> Vec<NodeId> {
        self.seal_info
            .keys()
            .copied()
            .filter(|n| self.digested.is_tagged(*n))
            .collect()
    }

    pub(super) fn new(config: &EpochRecoveryConfig, now: Instant) -> Result<Round, RecoveryError> {
        let nodes = config.node_set.nodes();
        let checker = || {
            QuorumChecker::new(nodes, config.replication as usize).map_err(|source| {
                RecoveryError::Quorum {
                    epoch: config.epoch,
                    source,
                }
            })
        };
        let sealed = checker()?;
        let mut digested = checker()?;
        for (n, s) in &config.statuses {
            digested.set_status(*n, *s);
        }
        Ok(Round {
            started: now,
            sealed,
            seal_info: BTreeMap::new(),
            seal_out: BTreeMap::new(),
            digest_after: Esn::INVALID,
            digest_out: BTreeMap::new(),
            digest: Digest::new(config.epoch),
            digested,
            grace_deadline: None,
            plan: None,
            mutations: BTreeMap::new(),
            pending: VecDeque::new(),
            active: 0,
            store_esn: BTreeMap::new(),
            excluded: BTreeSet::new(),
            cleaned: checker()?,
            clean_out: BTreeMap::new(),
            lce_retry_at: None,
        })
    }
}
