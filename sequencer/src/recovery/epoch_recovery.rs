//! Recovery of one epoch (DESIGN §9): seal its node set, digest what the sealed nodes hold past
//! the LNG, write the [`RecoveryPlan`] (re-replicated records, hole plugs, the bridge) with
//! recovery's precedence, `Clean` the nodes, write the last clean epoch, and report the tail.
//!
//! Phases: `Sealing` until the sealed nodes are an f-majority (the rest of any copyset would be
//! fewer than R nodes, so no append of the epoch can still be acknowledged); `Digesting` until
//! the quorum checker, with nodes' authoritative statuses, says the digest is complete, or is an
//! f-majority (or non-authoritative) and the grace period passed; `Mutating` until every write
//! is stored on its whole copyset; `Cleaning` until an f-majority, or every node whose digest
//! the plan used, acknowledged `Clean` (an older recovery of the same epoch then cannot finish:
//! its `Clean` meets our seal on one of them and is refused). Only digested nodes are cleaned:
//! a node sealed but digested too late may hold copies the plan overruled, and must purge them
//! (DESIGN §7) rather than be told the epoch is clean. Then `WritingLce`. Any `Preempted`
//! aborts; an attempt that does not reach `WritingLce` within the timeout restarts from the
//! seal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tally_common::quorum::AuthStatus;
use tally_common::wire::{ReadRecord, StoreStatus};
use tally_common::{Epoch, Esn, LogId, Lsn, NodeId, NodeSet, RecoveredEpoch};

use super::copyset::choose_copyset;
use super::digest::{Authority, Decision, RecoveryPlan};
use super::round::{Mutation, Outbox, Round, WriteKind, store_batch};
use super::{AbortReason, Action, Attempt, Event, RecoveryError, RecoveryTiming};

/// What recovery of one epoch needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecoveryConfig {
    pub log: LogId,
    /// The epoch to recover.
    pub epoch: Epoch,
    /// The recovery's seal: the recovering sequencer's epoch − 1. Recovery writes carry it as
    /// their `wave_or_seal`, so they beat every normal write and every older recovery.
    pub seal: Epoch,
    pub node_set: NodeSet,
    pub replication: u8,
    /// Authoritative status of nodes (absent: fully authoritative). `Unavailable` nodes never
    /// count towards the digest's f-majority and never receive recovery writes.
    pub statuses: BTreeMap<NodeId, AuthStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sealing,
    Digesting,
    Mutating,
    Cleaning,
    WritingLce,
    Recovered,
    Aborted,
}

/// Recovery of one epoch.
#[derive(Debug)]
pub struct EpochRecovery {
    config: EpochRecoveryConfig,
    timing: RecoveryTiming,
    attempt: Attempt,
    phase: Phase,
    round: Round,
    /// Store sequence numbers, unique for the life of this recovery (restarts included).
    next_seq: u64,
    actions: Vec<Action>,
}

impl EpochRecovery {
    /// Starts recovery; the first seals are in [`EpochRecovery::drain_actions`].
    pub fn new(
        config: EpochRecoveryConfig,
        timing: RecoveryTiming,
        now: Instant,
    ) -> Result<EpochRecovery, RecoveryError> {
        if config.seal < config.epoch {
            return Err(RecoveryError::SealBelowEpoch {
                epoch: config.epoch,
                seal: config.seal,
            });
        }
        let attempt = Attempt {
            epoch: config.epoch,
            number: 0,
        };
        let round = Round::new(&config, now)?;
        let mut r = EpochRecovery {
            config,
            timing,
            attempt,
            phase: Phase::Sealing,
            round,
            next_seq: 0,
            actions: Vec::new(),
        };
        r.send_seals();
        Ok(r)
    }

    pub fn epoch(&self) -> Epoch {
        self.config.epoch
    }

    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The plan of the current attempt, once the digest is decided.
    pub fn plan(&self) -> Option<&RecoveryPlan> {
        self.round.plan.as_ref()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Recovered | Phase::Aborted)
    }

    /// Takes the actions produced since the last call.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.is_finished() {
            return;
        }
        match event {
            Event::Preempted { seal, .. } => self.on_preempted(seal),
            Event::Sealed {
                node,
                attempt,
                seal,
                lng,
                tail,
                data_loss,
            } if attempt == self.attempt => {
                if data_loss {
                    // Membership may not say so yet: from now on (this attempt and the next
                    // ones) the node's "no record" proves nothing.
                    self.config.statuses.insert(node, AuthStatus::Unavailable);
                    self.round
                        .digested
                        .set_status(node, AuthStatus::Unavailable);
                }
                self.on_sealed(node, seal, lng, tail)
            }
            Event::DigestRecords {
                node,
                attempt,
                records,
            } if attempt == self.attempt && self.phase == Phase::Digesting => {
                self.on_digest_records(node, records)
            }
            Event::DigestDone { node, attempt }
                if attempt == self.attempt && self.phase == Phase::Digesting =>
            {
                self.on_digest_done(node, now)
            }
            Event::StoreReply {
                node,
                attempt,
                seq,
                status,
            } if attempt == self.attempt && self.phase == Phase::Mutating => {
                self.on_store_reply(node, seq, status)
            }
            Event::Cleaned { node, attempt }
                if attempt == self.attempt && self.phase == Phase::Cleaning =>
            {
                self.round.clean_out.remove(&node);
                self.round.cleaned.set_tag(node, true);
                // Every digested node, or an f-majority of them when the digest was one.
                if self.round.cleaned.f_majority().is_authoritative()
                    || self.round.clean_out.is_empty()
                {
                    self.write_lce();
                }
            }
            Event::LceWritten { epoch }
                if epoch == self.config.epoch && self.phase == Phase::WritingLce =>
            {
                self.recovered()
            }
            Event::LceWriteFailed { epoch, current }
                if epoch == self.config.epoch && self.phase == Phase::WritingLce =>
            {
                if current >= self.config.epoch {
                    // Another recovery of this epoch committed first. Our seal made its
                    // `Clean` fail unless it cleaned before we sealed, and then its copies
                    // were on full copysets our digest saw: same content either way.
                    self.recovered();
                } else {
                    self.round.lce_retry_at = Some(now + self.timing.retry_interval);
                }
            }
            Event::NodeUnreachable { node } => self.on_unreachable(node, now),
            Event::Tick => self.on_tick(now),
            _ => {} // an answer to an older attempt, or out of phase
        }
    }

    fn on_preempted(&mut self, seal: Epoch) {
        if seal > self.config.seal {
            self.phase = Phase::Aborted;
            // Requests produced but not yet taken by the runtime are never sent: after a
            // preemption nothing more may reach the nodes, however the runtime batches.
            self.actions.clear();
            self.actions
                .push(Action::Aborted(AbortReason::Preempted { seal }));
        }
    }

    fn on_sealed(&mut self, node: NodeId, seal: Epoch, lng: Esn, tail: Lsn) {
        if seal > self.config.seal {
            return self.on_preempted(seal);
        }
        if seal < self.config.seal || !self.config.node_set.contains(node) {
            return; // not an answer to our seal
        }
        self.round.seal_out.remove(&node);
        // The reply describes the node's tail; its LNG and tail speak for this epoch only when
        // the tail is in it (a tail in a later epoch says nothing about this one's LNG).
        let info = if tail.epoch() == self.config.epoch {
            (lng, tail.esn())
        } else {
            (Esn::INVALID, Esn::INVALID)
        };
        self.round.seal_info.insert(node, info);
        self.round.sealed.set_tag(node, true);
        match self.phase {
            Phase::Sealing if self.round.sealed.f_majority().is_authoritative() => {
                self.round.digest_after = self
                    .round
                    .seal_info
                    .values()
                    .map(|(l, _)| *l)
                    .max()
                    .unwrap_or(Esn::INVALID);
                self.phase = Phase::Digesting;
                let sealed: Vec<NodeId> = self.round.seal_info.keys().copied().collect();
                for n in sealed {
                    self.send_digest(n);
                }
            }
            Phase::Digesting => self.send_digest(node),
            _ => {}
        }
    }

    fn on_digest_records(&mut self, node: NodeId, records: Vec<ReadRecord>) {
        // Only from a stream we opened (a sealed node) and that has not finished.
        if self.round.digest_out.contains_key(&node) {
            for r in records {
                self.round.digest.add(node, r);
            }
        }
    }

    fn on_digest_done(&mut self, node: NodeId, now: Instant) {
        if self.round.digest_out.remove(&node).is_some() {
            self.round.digested.set_tag(node, true);
            self.check_digest(now);
        }
    }

    fn on_store_reply(&mut self, node: NodeId, seq: u64, status: StoreStatus) {
        let Some(esn) = self.round.store_esn.remove(&seq) else {
            return;
        };
        let Some(m) = self.round.mutations.get_mut(&esn) else {
            return;
        };
        if m.outstanding.get(&node) != Some(&seq) {
            return; // superseded by a store with a newer copyset
        }
        m.outstanding.remove(&node);
        match status {
            StoreStatus::Stored => {
                m.acked.insert(node);
                if m.is_done() {
                    self.mutation_done();
                }
            }
            StoreStatus::Preempted { seal, .. } if seal > self.config.seal => {
                self.on_preempted(seal)
            }
            // NoSpace, Overloaded, Disabled, ChecksumMismatch, a stray lower seal: this node
            // cannot take recovery writes in this attempt; move the ESN to another copyset.
            _ => self.store_failed(node, esn),
        }
    }

    fn on_unreachable(&mut self, node: NodeId, now: Instant) {
        let retry = Outbox::RetryAt(now + self.timing.retry_interval);
        let round = &mut self.round;
        for out in [
            &mut round.seal_out,
            &mut round.digest_out,
            &mut round.clean_out,
        ] {
            if let Some(o) = out.get_mut(&node) {
                *o = retry;
            }
        }
        if self.phase == Phase::Mutating {
            let affected: Vec<Esn> = self
                .round
                .mutations
                .iter()
                .filter(|(_, m)| m.outstanding.contains_key(&node))
                .map(|(esn, _)| *esn)
                .collect();
            for esn in affected {
                self.store_failed(node, esn);
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if self.phase == Phase::WritingLce {
            if self.round.lce_retry_at.is_some_and(|at| now >= at) {
                self.write_lce();
            }
            return;
        }
        if now.saturating_duration_since(self.round.started) >= self.timing.attempt_timeout {
            return self.restart(now);
        }
        for node in Self::due(&mut self.round.seal_out, now) {
            self.push_seal(node);
        }
        for node in Self::due(&mut self.round.digest_out, now) {
            self.push_digest(node);
        }
        for node in Self::due(&mut self.round.clean_out, now) {
            self.push_clean(node);
        }
        if self.phase == Phase::Digesting {
            self.check_digest(now);
        }
    }

    /// Nodes whose retry time came, marked in flight again.
    fn due(out: &mut BTreeMap<NodeId, Outbox>, now: Instant) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        for (n, o) in out.iter_mut() {
            if matches!(o, Outbox::RetryAt(at) if now >= *at) {
                *o = Outbox::InFlight;
                nodes.push(*n);
            }
        }
        nodes
    }

    fn restart(&mut self, now: Instant) {
        self.attempt.number += 1;
        self.round = Round::new(&self.config, now).expect("checked when recovery was created");
        self.phase = Phase::Sealing;
        self.actions.push(Action::Restart {
            attempt: self.attempt,
        });
        self.send_seals();
    }

    fn send_seals(&mut self) {
        let nodes: Vec<NodeId> = self.config.node_set.nodes().to_vec();
        for node in nodes {
            self.round.seal_out.insert(node, Outbox::InFlight);
            self.push_seal(node);
        }
    }

    fn push_seal(&mut self, node: NodeId) {
        self.actions.push(Action::SendSeal {
            node,
            log: self.config.log,
            seal: self.config.seal,
            attempt: self.attempt,
        });
    }

    fn send_digest(&mut self, node: NodeId) {
        if self.round.digested.is_tagged(node) || self.round.digest_out.contains_key(&node) {
            return;
        }
        self.round.digest_out.insert(node, Outbox::InFlight);
        self.push_digest(node);
    }

    fn push_digest(&mut self, node: NodeId) {
        self.actions.push(Action::StartDigest {
            node,
            log: self.config.log,
            epoch: self.config.epoch,
            after: self.round.digest_after,
            attempt: self.attempt,
        });
    }

    fn push_clean(&mut self, node: NodeId) {
        let tail = self.round.plan.as_ref().map_or(Lsn::INVALID, |p| p.tail);
        self.actions.push(Action::SendClean {
            node,
            log: self.config.log,
            epoch: self.config.epoch,
            seal: self.config.seal,
            tail,
            attempt: self.attempt,
        });
    }

    /// Ends the digest when it is complete, or an f-majority (or every node that can answer)
    /// answered and the grace period for the others passed.
    fn check_digest(&mut self, now: Instant) {
        use tally_common::quorum::FMajority;
        let state = self.round.digested.f_majority();
        let finish = match state {
            FMajority::Complete => true,
            FMajority::Incomplete | FMajority::NonAuthoritative => {
                let deadline = *self
                    .round
                    .grace_deadline
                    .get_or_insert(now + self.timing.digest_grace);
                now >= deadline
            }
            FMajority::None => false,
        };
        if finish {
            let authority = if state.is_authoritative() {
                Authority::Authoritative
            } else {
                let known_tail = self.round.seal_info.values().map(|(_, t)| *t).max();
                Authority::NonAuthoritative {
                    known_tail: known_tail.unwrap_or(Esn::INVALID),
                }
            };
            self.start_mutations(authority);
        }
    }

    fn start_mutations(&mut self, authority: Authority) {
        let lng = self
            .round
            .seal_info
            .values()
            .map(|(l, _)| *l)
            .max()
            .unwrap_or(Esn::INVALID);
        let plan = self.round.digest.plan(lng, authority);
        let mut mutations = BTreeMap::new();
        for entry in &plan.entries {
            let kind = match &entry.decision {
                Decision::Rereplicate(r) => WriteKind::Record(r.clone()),
                Decision::Plug { .. } => WriteKind::Plug {
                    timestamp_ms: entry.timestamp_ms,
                },
                Decision::Leave => continue,
            };
            mutations.insert(entry.esn, Mutation::new(kind, entry.holders.clone()));
        }
        if let Some(b) = plan.bridge {
            let kind = WriteKind::Bridge {
                timestamp_ms: plan.bridge_timestamp_ms,
            };
            mutations.insert(b, Mutation::new(kind, plan.bridge_holders.clone()));
        }
        self.round.pending = mutations.keys().copied().collect();
        self.round.mutations = mutations;
        self.round.plan = Some(plan);
        self.round.digest_out.clear(); // late digests are no longer wanted
        self.phase = Phase::Mutating;
        self.pump();
        if self.round.mutations.is_empty() {
            self.start_cleaning();
        }
    }

    /// Starts pending ESNs while fewer than the limit are being written.
    fn pump(&mut self) {
        let limit = self.timing.max_mutations_in_flight.max(1);
        while self.round.active < limit {
            let Some(esn) = self.round.pending.pop_front() else {
                break;
            };
            self.round.active += 1;
            self.send_mutation(esn);
        }
    }

    /// The nodes preferred as extra copies: digested, then sealed, then the rest.
    fn tiers(&self) -> Vec<Vec<NodeId>> {
        let all = self.config.node_set.nodes();
        let digested: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|n| self.round.digested.is_tagged(*n))
            .collect();
        let sealed: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|n| self.round.sealed.is_tagged(*n) && !digested.contains(n))
            .collect();
        let rest: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|n| !self.round.sealed.is_tagged(*n))
            .collect();
        vec![digested, sealed, rest]
    }

    /// Excluded from writes: failed in this attempt, or not available for writes.
    fn excluded(&self) -> BTreeSet<NodeId> {
        let mut ex = self.round.excluded.clone();
        ex.extend(
            self.config
                .statuses
                .iter()
                .filter(|(_, s)| **s == AuthStatus::Unavailable)
                .map(|(n, _)| *n),
        );
        ex
    }

    /// (Re)sends the write of `esn` to a freshly chosen copyset. Every member gets it again
    /// so every copy names the same, exact copyset.
    fn send_mutation(&mut self, esn: Esn) {
        let tiers = self.tiers();
        let excluded = self.excluded();
        let replication = self.config.replication as usize;
        let Some(m) = self.round.mutations.get(&esn) else {
            return;
        };
        let chosen = choose_copyset(esn, replication, &m.holders, &tiers, &excluded);
        let Some(mut nodes) = chosen else {
            // Not enough writable nodes: this ESN waits for the attempt's timeout (a restart
            // forgets exclusions).
            let m = self.round.mutations.get_mut(&esn).expect("present");
            m.copyset.clear();
            m.outstanding.clear();
            m.acked.clear();
            return;
        };
        // A holder not available for writes (it lost data) still reported a copy here, which
        // may conflict with the decision: it is written too, so readers cannot find two
        // contents at this LSN, but it does not count towards R.
        for h in &m.holders {
            if !nodes.contains(h) && !self.round.excluded.contains(h) {
                nodes.push(*h);
            }
        }
        let lng = self.round.plan.as_ref().map_or(Esn::INVALID, |p| p.lng);
        let batch = store_batch(&self.config, lng, esn, &m.kind, &nodes);
        let mut sends = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.round.store_esn.insert(seq, esn);
            sends.push((*node, seq));
        }
        let m = self.round.mutations.get_mut(&esn).expect("present");
        m.copyset = nodes;
        m.acked.clear();
        m.outstanding = sends.iter().copied().collect();
        for (node, seq) in sends {
            self.actions.push(Action::SendStore {
                node,
                attempt: self.attempt,
                seq,
                batch: batch.clone(),
            });
        }
    }

    fn store_failed(&mut self, node: NodeId, esn: Esn) {
        self.round.excluded.insert(node);
        self.send_mutation(esn);
    }

    fn mutation_done(&mut self) {
        self.round.active -= 1;
        self.pump();
        if self.round.pending.is_empty() && self.round.active == 0 {
            self.start_cleaning();
        }
    }

    fn start_cleaning(&mut self) {
        self.phase = Phase::Cleaning;
        // Only the nodes whose digest the plan was made from. A sealed node whose digest came
        // too late may hold copies the plan overruled (past the bridge, or where it plugged);
        // told the epoch is clean it would keep serving them, so it must purge instead.
        let digested: Vec<NodeId> = self.round.digested_nodes();
        for node in digested {
            self.round.clean_out.insert(node, Outbox::InFlight);
            self.push_clean(node);
        }
        if self.round.clean_out.is_empty() {
            self.write_lce();
        }
    }

    fn write_lce(&mut self) {
        self.phase = Phase::WritingLce;
        self.round.lce_retry_at = None; // set again only if this write fails
        let tail = self.round.plan.as_ref().map_or(Lsn::INVALID, |p| p.tail);
        let outcome = self.round.plan.as_ref().map(|p| RecoveredEpoch {
            epoch: self.config.epoch,
            seal: self.config.seal,
            lng: p.lng,
            tail: p.tail,
            authoritative: p.authoritative,
        });
        self.actions.push(Action::WriteLastCleanEpoch {
            log: self.config.log,
            epoch: self.config.epoch,
            tail,
            outcome,
        });
    }

    fn recovered(&mut self) {
        self.phase = Phase::Recovered;
        let tail = self.round.plan.as_ref().map_or(Lsn::INVALID, |p| p.tail);
        self.actions.push(Action::EpochRecovered {
            epoch: self.config.epoch,
            tail,
        });
    }
}
