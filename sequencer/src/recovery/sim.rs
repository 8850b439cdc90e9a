//! A tiny simulated cluster for recovery tests (`Cluster`): nodes answer seals, digests,
//! stores and cleans from what they hold, every store is recorded for the checks, and time
//! only moves when nothing is in flight. Shared by the unit and property tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_common::quorum::AuthStatus;
use tally_common::wire::{ReadRecord, StoreBatch, StoreStatus};
use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, NodeSet, RecordFlags, RecordHeader,
    payload_crc32,
};

use super::{Action, EpochRecovery, EpochRecoveryConfig, Event};

pub(super) const LOG: LogId = LogId(1);
pub(super) const EPOCH: Epoch = Epoch(3);
pub(super) const SEAL: Epoch = Epoch(4);

pub(super) fn ids(n: u32) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

pub(super) fn config(n: u32, r: u8, statuses: &[(u32, AuthStatus)]) -> EpochRecoveryConfig {
    EpochRecoveryConfig {
        log: LOG,
        epoch: EPOCH,
        seal: SEAL,
        node_set: NodeSet::new(ids(n)),
        replication: r,
        statuses: statuses.iter().map(|(n, s)| (NodeId(*n), *s)).collect(),
    }
}

pub(super) fn copy(esn: u32, flags: RecordFlags, wave: u32, payload: &[u8]) -> ReadRecord {
    ReadRecord {
        header: RecordHeader {
            log: LOG,
            lsn: Lsn::new(EPOCH, Esn(esn)),
            timestamp_ms: 1000 + esn as u64,
            lng: Esn(0),
            wave_or_seal: wave,
            flags,
            copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
            payload_crc32: payload_crc32(payload),
        },
        payload: payload.to_vec(),
    }
}

/// How a simulated node behaves.
#[derive(Debug, Clone, Default)]
pub(super) struct SimNode {
    pub answers_seal: bool,
    pub answers_digest: bool,
    pub copies: Vec<ReadRecord>,
    pub store_status: Option<StoreStatus>,
    /// Says in its `Sealed` answer that it may have lost acknowledged writes.
    pub data_loss: bool,
}

/// A store recovery sent, as the checks see it.
#[derive(Debug, Clone)]
pub(super) struct SentStore {
    pub node: NodeId,
    pub batch: StoreBatch,
}

/// A tiny cluster answering recovery's requests. Time only moves when nothing is in flight.
#[derive(Debug)]
pub(super) struct Cluster {
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub now: Instant,
    pub stores: Vec<SentStore>,
    pub all_actions: Vec<Action>,
    /// Deliver `Preempted` instead of the answer number `n` (counting answers from 0).
    pub preempt_at: Option<usize>,
    pub answers: usize,
    /// Stores sent after `Preempted` was delivered.
    pub stores_after_preemption: usize,
    pub preempted: bool,
}

impl Cluster {
    pub fn new(nodes: BTreeMap<NodeId, SimNode>) -> Cluster {
        Cluster {
            nodes,
            now: Instant::now(),
            stores: Vec::new(),
            all_actions: Vec::new(),
            preempt_at: None,
            answers: 0,
            stores_after_preemption: 0,
            preempted: false,
        }
    }

    /// The highest LSN of the recovered epoch a node holds, as its `Sealed` tail.
    pub fn tail_of(node: &SimNode) -> Lsn {
        node.copies
            .iter()
            .map(|c| c.header.lsn)
            .max()
            .unwrap_or(Lsn::new(Epoch(2), Esn(9)))
    }

    /// The answers to one action, as events.
    pub fn answer(&mut self, action: &Action) -> Vec<Event> {
        match action {
            Action::SendSeal {
                node,
                seal,
                attempt,
                ..
            } => {
                let n = &self.nodes[node];
                if !n.answers_seal {
                    return vec![Event::NodeUnreachable { node: *node }];
                }
                vec![Event::Sealed {
                    node: *node,
                    attempt: *attempt,
                    seal: *seal,
                    lng: Esn(0),
                    tail: Self::tail_of(n),
                    data_loss: n.data_loss,
                }]
            }
            Action::StartDigest {
                node,
                after,
                attempt,
                ..
            } => {
                let n = &self.nodes[node];
                if !n.answers_digest {
                    return Vec::new(); // a stream that never finishes
                }
                let records: Vec<ReadRecord> = n
                    .copies
                    .iter()
                    .filter(|c| c.header.lsn.esn() > *after)
                    .cloned()
                    .collect();
                vec![
                    Event::DigestRecords {
                        node: *node,
                        attempt: *attempt,
                        records,
                    },
                    Event::DigestDone {
                        node: *node,
                        attempt: *attempt,
                    },
                ]
            }
            Action::SendStore {
                node,
                attempt,
                seq,
                batch,
            } => {
                if self.preempted {
                    self.stores_after_preemption += 1;
                }
                self.stores.push(SentStore {
                    node: *node,
                    batch: batch.clone(),
                });
                if !self.nodes[node].answers_seal {
                    return vec![Event::NodeUnreachable { node: *node }];
                }
                let status = self.nodes[node]
                    .store_status
                    .clone()
                    .unwrap_or(StoreStatus::Stored);
                vec![Event::StoreReply {
                    node: *node,
                    attempt: *attempt,
                    seq: *seq,
                    status,
                }]
            }
            Action::SendClean { node, attempt, .. } => {
                if !self.nodes[node].answers_seal {
                    return vec![Event::NodeUnreachable { node: *node }];
                }
                vec![Event::Cleaned {
                    node: *node,
                    attempt: *attempt,
                }]
            }
            Action::WriteLastCleanEpoch { epoch, .. } => vec![Event::LceWritten { epoch: *epoch }],
            _ => Vec::new(),
        }
    }

    /// Runs `r` until it finishes or `max_steps` clock advances pass.
    pub fn run(&mut self, r: &mut EpochRecovery, max_steps: usize) {
        let mut queue: Vec<Event> = Vec::new();
        for _ in 0..max_steps {
            loop {
                let actions = r.drain_actions();
                for a in &actions {
                    queue.extend(self.answer(a));
                }
                self.all_actions.extend(actions);
                if queue.is_empty() || r.is_finished() {
                    break;
                }
                for mut ev in std::mem::take(&mut queue) {
                    if self.preempt_at == Some(self.answers) {
                        self.preempted = true;
                        ev = Event::Preempted {
                            node: NodeId(1),
                            seal: Epoch(SEAL.0 + 1),
                        };
                    }
                    self.answers += 1;
                    r.handle(ev, self.now);
                }
            }
            if r.is_finished() {
                return;
            }
            self.now += Duration::from_millis(100);
            r.handle(Event::Tick, self.now);
        }
    }

    /// Stores sent for `esn`, grouped by flags kind.
    pub fn stores_at(&self, esn: u32) -> Vec<&SentStore> {
        self.stores
            .iter()
            .filter(|s| s.batch.records[0].lsn == Lsn::new(EPOCH, Esn(esn)))
            .collect()
    }
}

pub(super) fn sim(answers: bool, copies: Vec<ReadRecord>) -> SimNode {
    SimNode {
        answers_seal: answers,
        answers_digest: answers,
        copies,
        store_status: None,
        data_loss: false,
    }
}

/// Checks every store carries recovery's flags and seal, one record, and a copyset of at least
/// R distinct nodes of the node set that names the node it is sent to.
pub(super) fn check_store_shape(stores: &[SentStore], node_set: &[NodeId], r: usize) {
    for s in stores {
        let b = &s.batch;
        assert!(b.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY), "{b:?}");
        assert_eq!(b.wave_or_seal, SEAL.0);
        assert_eq!(b.durability, Durability::Durable);
        assert_eq!(b.records.len(), 1);
        assert!(b.copyset.len() >= r);
        assert!(b.copyset.contains(s.node));
        assert!(b.copyset.nodes().iter().all(|n| node_set.contains(n)));
        let rec = &b.records[0];
        assert_eq!(rec.payload_crc32, payload_crc32(&rec.payload));
        if b.flags.contains(RecordFlags::HOLE) {
            assert!(rec.payload.is_empty());
        }
    }
}
