//! A simulated storage node (see the module documentation of `sim` for what it models): the
//! STORE / SEAL / CLEAN / RELEASE / digest rules of DESIGN §7 over an in-memory copy map, with
//! a write-ahead log whose unsynced tail a crash may lose.

use std::collections::BTreeMap;

use rand::Rng;
use tally_common::wire::{ReadFilter, ReadRecord, StoreBatch, StoreStatus};
use tally_common::{
    Durability, Epoch, Esn, LogId, Lsn, NodeId, Precedence, RecordFlags, RecordHeader,
    RecoveredEpoch, verify_payload,
};
use tally_storage_node::logsdb::{LogMeta, preemption};

use super::net::{Actor, Msg, NodeReply};
use super::world::World;

/// One stored copy after the precedence merge.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    pub(crate) header: RecordHeader,
    pub(crate) payload: Vec<u8>,
    /// Precedence of the full write that supplied the payload; `None`: only AMENDs arrived.
    payload_precedence: Option<Precedence>,
}

impl Copy {
    pub(crate) fn as_read_record(&self) -> ReadRecord {
        ReadRecord {
            header: self.header.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// What a node holds of the one log.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeData {
    pub(crate) meta: LogMeta,
    pub(crate) copies: BTreeMap<Lsn, Copy>,
    /// Every epoch below this is settled here (cleaned, or purged after a missed recovery).
    purged_below: Epoch,
}

/// One write-ahead-log entry. Stores are already checked against the seals.
#[derive(Debug, Clone)]
enum Op {
    Store(Vec<(RecordHeader, Vec<u8>)>),
    Seal(Epoch),
    Release(Lsn),
    Clean(Epoch),
    /// Settles every epoch below `below` (see [`purge`]), given what the epoch store says the
    /// recoveries decided.
    Purge {
        below: Epoch,
        recovered: Vec<RecoveredEpoch>,
    },
}

/// An answer waiting for the next sync.
#[derive(Debug)]
enum Waiting {
    Stored { to: Actor, rpc: u64 },
    Sealed { to: Actor, rpc: u64, seal: Epoch },
    Cleaned { to: Actor, rpc: u64 },
}

#[derive(Debug)]
pub(crate) struct StorageNode {
    pub(crate) id: NodeId,
    pub(crate) up: bool,
    /// Bumped by every crash, so syncs scheduled before it are ignored.
    pub(crate) incarnation: u64,
    pub(crate) live: NodeData,
    durable: NodeData,
    unsynced: Vec<Op>,
    waiting: Vec<Waiting>,
    sync_scheduled: bool,
    /// This run acknowledged `fast` writes.
    fast_used: bool,
    /// Restarted after an unclean shutdown with `fast` writes acknowledged: not authoritative.
    pub(crate) data_loss: bool,
    disable_sealing: bool,
    purge_missed_recoveries: bool,
}

/// Merges one write into the copy at its LSN (DESIGN §7; LogsDB's `merge`): metadata from the
/// highest-precedence write of any kind, payload from the highest-precedence full write; equal
/// precedence: the later write wins.
fn merge(existing: Option<Copy>, header: RecordHeader, payload: Vec<u8>) -> Copy {
    let incoming_precedence = header.precedence();
    let is_full = !header.flags.contains(RecordFlags::AMEND);
    let Some(old) = existing else {
        let mut header = header;
        if !is_full {
            header.flags = header.flags.union(RecordFlags::AMEND);
        }
        return Copy {
            header,
            payload,
            payload_precedence: is_full.then_some(incoming_precedence),
        };
    };
    let meta_from_incoming = incoming_precedence.replaces(old.header.precedence());
    let payload_from_incoming = is_full
        && old
            .payload_precedence
            .is_none_or(|p| incoming_precedence.replaces(p));
    let mut out = if payload_from_incoming {
        Copy {
            header: header.clone(),
            payload,
            payload_precedence: Some(incoming_precedence),
        }
    } else {
        old.clone()
    };
    let meta = if meta_from_incoming {
        &header
    } else {
        &old.header
    };
    out.header.lng = meta.lng;
    out.header.wave_or_seal = meta.wave_or_seal;
    out.header.copyset = meta.copyset.clone();
    let mut flags = meta.flags.without(RecordFlags::AMEND);
    if out.payload_precedence.is_none() {
        flags = flags.union(RecordFlags::AMEND);
    }
    out.header.flags = flags;
    out
}

fn apply(data: &mut NodeData, op: &Op) {
    match op {
        Op::Store(records) => {
            for (header, payload) in records {
                let lsn = header.lsn;
                let meta = &mut data.meta;
                if !header.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY)
                    && lsn.epoch().prev() > meta.soft_seal
                {
                    meta.soft_seal = lsn.epoch().prev();
                }
                if lsn <= meta.trim_point {
                    continue;
                }
                let lng = meta.epoch_lng.entry(lsn.epoch()).or_default();
                *lng = (*lng).max(header.lng);
                let existing = data.copies.remove(&lsn);
                let merged = merge(existing, header.clone(), payload.clone());
                data.copies.insert(lsn, merged);
            }
        }
        Op::Seal(e) => data.meta.seal = data.meta.seal.max(*e),
        Op::Release(l) => data.meta.last_released = data.meta.last_released.max(*l),
        Op::Clean(e) => {
            data.meta.last_clean_epoch = data.meta.last_clean_epoch.max(*e);
        }
        Op::Purge { below, recovered } => {
            purge(data, *below, recovered);
        }
    }
}

/// DESIGN §7 purging, as `storage-node/src/server/purge.rs` does it: a release by the
/// sequencer of epoch `below` proves every older epoch recovered. The seal rises to
/// `below − 1` (those epochs are closed: a late store of a zombie sequencer's grant must not
/// land here after the purge), then every copy of those epochs that the recovery recorded in
/// the epoch store overruled (`RecoveredEpoch::overrules`, given this node's own LNG of the
/// epoch) is dropped, whether or not this node took part in that recovery. An epoch whose
/// recovery is not recorded keeps everything. Returns how many copies were dropped.
fn purge(data: &mut NodeData, below: Epoch, recovered: &[RecoveredEpoch]) -> usize {
    if below <= data.purged_below {
        return 0;
    }
    data.meta.seal = data.meta.seal.max(below.prev());
    let from = Lsn::epoch_start(data.purged_below).max(data.meta.last_released.next());
    let to = Lsn::epoch_start(below).max(from);
    let doomed: Vec<Lsn> = data
        .copies
        .range(from..to)
        .filter(|(lsn, c)| {
            let epoch = lsn.epoch();
            let Some(r) = recovered.iter().find(|r| r.epoch == epoch) else {
                return false;
            };
            let local_lng = data.meta.epoch_lng.get(&epoch).copied().unwrap_or_default();
            r.overrules(**lsn, c.header.flags, c.header.wave_or_seal, local_lng)
        })
        .map(|(lsn, _)| *lsn)
        .collect();
    for lsn in &doomed {
        data.copies.remove(lsn);
    }
    data.purged_below = below;
    doomed.len()
}

/// The node that ships `header`'s copy under single-copy delivery: the first member of its
/// copyset, rotated by a hash of the LSN and the reader's seed, that the reader does not
/// consider down.
pub(crate) fn single_copy_shipper(header: &RecordHeader, filter: &ReadFilter) -> Option<NodeId> {
    let nodes = header.copyset.nodes();
    if nodes.is_empty() {
        return None;
    }
    let mix = (filter.shuffle_seed ^ header.lsn.0)
        .wrapping_mul(0x2545_F491_4F6C_DD1D)
        .rotate_left(29);
    let start = (mix % nodes.len() as u64) as usize;
    (0..nodes.len())
        .map(|i| nodes[(start + i) % nodes.len()])
        .find(|n| !filter.known_down.contains(n))
}

impl StorageNode {
    pub(crate) fn new(
        id: NodeId,
        disable_sealing: bool,
        purge_missed_recoveries: bool,
    ) -> StorageNode {
        StorageNode {
            id,
            up: true,
            incarnation: 0,
            live: NodeData::default(),
            durable: NodeData::default(),
            unsynced: Vec::new(),
            waiting: Vec::new(),
            sync_scheduled: false,
            fast_used: false,
            data_loss: false,
            disable_sealing,
            purge_missed_recoveries,
        }
    }

    /// Loses power: keeps the synced state plus a random prefix of the unsynced log.
    /// Returns how many unsynced operations were lost.
    pub(crate) fn crash(&mut self, w: &mut World) -> usize {
        let keep = w.rng.random_range(0..=self.unsynced.len());
        let lost = self.unsynced.len() - keep;
        for op in self.unsynced.drain(..keep) {
            apply(&mut self.durable, &op);
        }
        self.unsynced.clear();
        self.live = self.durable.clone();
        self.waiting.clear();
        self.sync_scheduled = false;
        self.up = false;
        self.incarnation += 1;
        if self.fast_used {
            self.data_loss = true;
        }
        self.fast_used = false;
        lost
    }

    pub(crate) fn restart(&mut self) {
        self.up = true;
    }

    fn log(&mut self, op: Op) {
        apply(&mut self.live, &op);
        self.unsynced.push(op);
    }

    fn schedule_sync(&mut self, w: &mut World) {
        if !self.sync_scheduled {
            self.sync_scheduled = true;
            let delay = w.rng.random_range(200..2_000);
            w.schedule_sync(self.id, self.incarnation, delay);
        }
    }

    /// Group commit: everything logged so far is durable; answer who waited for it.
    pub(crate) fn sync(&mut self, w: &mut World, incarnation: u64) {
        if incarnation != self.incarnation || !self.up {
            return;
        }
        self.sync_scheduled = false;
        for op in self.unsynced.drain(..) {
            apply(&mut self.durable, &op);
        }
        for waiting in std::mem::take(&mut self.waiting) {
            let (to, rpc, reply) = match waiting {
                Waiting::Stored { to, rpc } => (to, rpc, NodeReply::Stored(StoreStatus::Stored)),
                Waiting::Sealed { to, rpc, seal } => {
                    let (lng, tail) = self.tail_up_to(seal);
                    let seal = seal.max(self.live.meta.seal);
                    let data_loss = self.data_loss;
                    (
                        to,
                        rpc,
                        NodeReply::Sealed {
                            seal,
                            lng,
                            tail,
                            data_loss,
                        },
                    )
                }
                Waiting::Cleaned { to, rpc } => (to, rpc, NodeReply::Cleaned),
            };
            w.send(
                Actor::Storage(self.id),
                to,
                Msg::NodeReply {
                    rpc,
                    node: self.id,
                    reply,
                },
            );
        }
    }

    /// The highest LSN held in epochs ≤ `seal`, and the LNG of that LSN's epoch.
    fn tail_up_to(&self, seal: Epoch) -> (Esn, Lsn) {
        let limit = Lsn::epoch_end(seal);
        let tail = self
            .live
            .copies
            .range(..=limit)
            .next_back()
            .map_or(Lsn::INVALID, |(l, _)| *l);
        if tail == Lsn::INVALID {
            return (Esn::INVALID, tail);
        }
        let lng = self
            .live
            .meta
            .epoch_lng
            .get(&tail.epoch())
            .copied()
            .unwrap_or(Esn::INVALID);
        (lng, tail)
    }

    pub(crate) fn handle(&mut self, w: &mut World, from: Actor, msg: Msg) {
        let node = self.id;
        let me = Actor::Storage(node);
        let reply = |w: &mut World, rpc: u64, reply: NodeReply| {
            w.send(me, from, Msg::NodeReply { rpc, node, reply });
        };
        match msg {
            Msg::Store { rpc, batch } => {
                if let Some(status) = self.store(w, from, rpc, batch) {
                    reply(w, rpc, NodeReply::Stored(status));
                }
            }
            Msg::Seal { rpc, seal } => {
                if seal < self.live.meta.seal {
                    let seal = self.live.meta.seal;
                    reply(w, rpc, NodeReply::Preempted { seal });
                    return;
                }
                self.log(Op::Seal(seal));
                self.waiting.push(Waiting::Sealed {
                    to: from,
                    rpc,
                    seal,
                });
                self.schedule_sync(w);
            }
            Msg::StartDigest { rpc, epoch, after } => {
                let records = match after.next() {
                    Some(first) => self
                        .live
                        .copies
                        .range(Lsn::new(epoch, first)..=Lsn::epoch_end(epoch))
                        .map(|(_, c)| c.as_read_record())
                        .collect(),
                    None => Vec::new(),
                };
                reply(w, rpc, NodeReply::Digest(records));
            }
            Msg::Clean { rpc, epoch, seal } => {
                let mine = self.live.meta.seal;
                if mine > seal {
                    reply(w, rpc, NodeReply::Preempted { seal: mine });
                    return;
                }
                self.log(Op::Clean(epoch));
                self.waiting.push(Waiting::Cleaned { to: from, rpc });
                self.schedule_sync(w);
            }
            Msg::Release {
                lsn,
                sequencer_epoch,
            } => {
                // A release by the sequencer of epoch E proves every epoch below E recovered.
                if self.purge_missed_recoveries && sequencer_epoch > self.live.purged_below {
                    // The real node reads the log's record from the epoch store here, and
                    // holds the release back when an epoch it holds copies of is not clean.
                    let meta = &w.es.meta;
                    let unrecovered = self
                        .live
                        .copies
                        .range({
                            let from = Lsn::epoch_start(self.live.purged_below)
                                .max(self.live.meta.last_released.next());
                            from..Lsn::epoch_start(sequencer_epoch).max(from)
                        })
                        .any(|(lsn, _)| {
                            let local_lng = self.live.meta.epoch_lng.get(&lsn.epoch());
                            lsn.epoch() > meta.last_clean_epoch && Some(&lsn.esn()) > local_lng
                        });
                    if unrecovered {
                        w.stat("releases held back: an older epoch not clean yet");
                        let lce = w.es.meta.last_clean_epoch;
                        w.trace(|| {
                            format!(
                                "n{} holds back a release by epoch {sequencer_epoch}: clean only up to {lce}",
                                node.0
                            )
                        });
                        return;
                    }
                    let recovered = meta.recovered.clone();
                    let mut preview = self.live.clone();
                    let dropped = purge(&mut preview, sequencer_epoch, &recovered);
                    for _ in 0..dropped {
                        w.stat("copies purged after a missed recovery");
                    }
                    w.trace(|| {
                        format!(
                            "n{} purges below {sequencer_epoch} ({dropped} copies)",
                            node.0
                        )
                    });
                    self.log(Op::Purge {
                        below: sequencer_epoch,
                        recovered,
                    });
                }
                if lsn > self.live.meta.last_released {
                    self.log(Op::Release(lsn));
                }
            }
            other => panic!("storage node {} got {other:?}", self.id),
        }
    }

    /// One STORE batch; `Some` is an immediate answer, `None` waits for the sync.
    fn store(
        &mut self,
        w: &mut World,
        from: Actor,
        rpc: u64,
        batch: StoreBatch,
    ) -> Option<StoreStatus> {
        if !batch.copyset.contains(self.id) {
            panic!("store to {} with copyset {:?}", self.id, batch.copyset);
        }
        let recovery = batch.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY);
        if !recovery && w.plan.overload > 0.0 && w.rng.random_bool(w.plan.overload) {
            return Some(StoreStatus::Overloaded);
        }
        let amend = batch.flags.contains(RecordFlags::AMEND);
        let mut records = Vec::with_capacity(batch.records.len());
        for r in batch.records {
            if !amend && verify_payload(r.payload_crc32, &r.payload).is_err() {
                return Some(StoreStatus::ChecksumMismatch { lsn: r.lsn });
            }
            let header = RecordHeader {
                log: batch.log,
                lsn: r.lsn,
                timestamp_ms: r.timestamp_ms,
                lng: batch.lng,
                wave_or_seal: batch.wave_or_seal,
                flags: batch.flags,
                copyset: batch.copyset.clone(),
                payload_crc32: r.payload_crc32,
            };
            records.push((header, Vec::from(r.payload)));
        }
        if !self.disable_sealing {
            for (header, _) in &records {
                if let Some(seal) = preemption(&self.live.meta, header) {
                    w.stat(if recovery {
                        "recovery stores refused by a seal"
                    } else {
                        "stores refused by a seal"
                    });
                    return Some(StoreStatus::Preempted {
                        seal,
                        sequencer: None,
                    });
                }
            }
        }
        w.trace(|| {
            format!(
                "n{} applies {:?} {}..{} w/s {} from {from:?}",
                self.id.0,
                batch.flags,
                records.first().map_or(Lsn::INVALID, |r| r.0.lsn),
                records.last().map_or(Lsn::INVALID, |r| r.0.lsn),
                batch.wave_or_seal
            )
        });
        if recovery {
            w.stat("recovery stores applied");
        } else if records
            .iter()
            .any(|(h, _)| h.lsn.epoch() <= self.live.meta.seal)
        {
            w.stat("stores applied below the seal (disabled sealing)");
        }
        self.log(Op::Store(records));
        match batch.durability {
            Durability::Durable => {
                self.waiting.push(Waiting::Stored { to: from, rpc });
                self.schedule_sync(w);
                None
            }
            Durability::Fast => {
                self.fast_used = true;
                Some(StoreStatus::Stored)
            }
        }
    }

    /// What a read stream at `from` ships next: copies in `from ..= window_until` (at most
    /// `max`) that are at or below this node's release point and the read's `until`. Returns
    /// the records and the LSN up to which everything is now passed (`None`: nothing new).
    /// The window bounds records, not proofs: with nothing to ship, the node proves absence up
    /// to just before its next copy (or its release point), however far that is.
    pub(crate) fn read_chunk(
        &self,
        log: LogId,
        from: Lsn,
        window_until: Lsn,
        until: Lsn,
        filter: &ReadFilter,
        max: usize,
    ) -> (Vec<ReadRecord>, Option<Lsn>) {
        let released = until.min(self.live.meta.last_released);
        let limit = window_until.min(released);
        if from > limit {
            return (Vec::new(), None);
        }
        let mut out = Vec::new();
        for (lsn, copy) in self.live.copies.range(from..=limit) {
            if out.len() >= max {
                return (out, Some(lsn.prev()));
            }
            if copy.header.log != log {
                continue;
            }
            if filter.single_copy && single_copy_shipper(&copy.header, filter) != Some(self.id) {
                continue;
            }
            out.push(copy.as_read_record());
        }
        if out.is_empty() {
            let next_copy = self.live.copies.range(from..).next().map(|(l, _)| *l);
            let proved = next_copy.map_or(released, |l| l.prev().min(released));
            return (out, Some(proved.max(limit)));
        }
        (out, Some(limit))
    }
}
