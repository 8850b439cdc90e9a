//! The appender: the sans-I/O state machine that writes one granted batch of records (one run
//! of consecutive LSNs of one epoch) to R storage nodes (DESIGN §6 steps 2–6).
//!
//! It is driven by whoever owns the transport: [`Appender::start`] checks the batch and
//! returns the first wave's stores, [`Appender::handle`] takes one [`Event`] with the current
//! time and returns what to do next. It never reads a clock, opens a socket or sleeps.
//!
//! A *wave* is one attempt: a copyset, one STORE per member. The append completes when R
//! members of the *same* wave answered `Stored`. A refusal, an unreachable node or a store
//! timeout abandons the wave and starts the next one on a fresh copyset; members known to
//! hold the payload from an earlier wave get a payload-less AMEND instead of the bytes. The
//! whole append is bounded by the append timeout; what it reports on failure depends on
//! whether any copy may have been stored, which the appender tracks per send.
//!
//! When a wave fails and fewer than R nodes of the node set are left that this append (or
//! the graylist) does not avoid, the next wave waits one store timeout (of the wave that
//! failed) instead of starting at once: the copyset would have to reuse nodes that just
//! refused or could not be reached, and retrying them in a tight loop only adds load. The
//! driver delivers [`Event::Tick`] at [`Appender::wake_at`].
//!
//! A store refused with `Preempted` (the epoch is sealed) ends the append, but not at once:
//! no new wave starts, and the append fails once every STORE still on its way has answered
//! (each is bounded by its store timeout) or the append timeout passed. Its
//! `Preempted { may_be_stored }` is then exact — false when every payload store was refused
//! or certainly not applied — so the caller can retry such an append in a new epoch without
//! risking a duplicate.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::Rng;
use tally_common::limits::FRAME_OVERHEAD_BYTES;
use tally_common::wire::client::Grant;
use tally_common::wire::{StoreBatch, StoreRecord, StoreStatus};
use tally_common::{
    Copyset, Durability, Epoch, Esn, Limits, LogId, Lsn, NodeId, NodeInfo, NodeSet, RecordFlags,
    payload_crc32,
};

use crate::error::{AppendError, IndeterminateCause};
use crate::graylist::{AvoidReason, Graylist};
use crate::placement::{CopysetSelector, DomainScope};

/// Bytes a record adds to a STORE frame besides its payload (LSN, timestamp, checksum,
/// length, padding), rounded up generously so a batch that passes here fits its frame.
pub const RECORD_OVERHEAD_BYTES: usize = 64;

/// Timeouts and placement options of appends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AppendPolicy {
    /// Store timeout of wave 1; doubles every wave.
    pub store_timeout_initial: Duration,
    /// The store timeout never grows past this.
    pub store_timeout_max: Duration,
    /// The whole append, from [`Appender::start`] to its outcome.
    pub append_timeout: Duration,
    /// Spread copies over failure domains at this scope (`None`: nodes only).
    pub domain_scope: Option<DomainScope>,
}

impl Default for AppendPolicy {
    fn default() -> Self {
        AppendPolicy {
            store_timeout_initial: Duration::from_millis(10),
            store_timeout_max: Duration::from_secs(60),
            append_timeout: Duration::from_secs(60),
            domain_scope: None,
        }
    }
}

impl AppendPolicy {
    /// The store timeout of `wave` (1-based): `initial · 2^(wave−1)`, capped at the maximum.
    pub fn store_timeout(&self, wave: u32) -> Duration {
        let factor = 1u32.checked_shl(wave.saturating_sub(1)).unwrap_or(u32::MAX);
        self.store_timeout_initial
            .saturating_mul(factor)
            .min(self.store_timeout_max)
    }
}

/// What happened to one STORE, as the driver reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// `node` answered the STORE of `wave`.
    StoreReply {
        /// The node that answered.
        node: NodeId,
        /// The wave the STORE belonged to.
        wave: u32,
        /// What the node said.
        status: StoreStatus,
    },
    /// The STORE of `wave` to `node` got no answer within its `timeout`. It may still have
    /// been applied.
    StoreTimedOut {
        /// The node that did not answer.
        node: NodeId,
        /// The wave the STORE belonged to.
        wave: u32,
    },
    /// The transport failed to deliver the STORE or its answer; `may_have_been_applied` is
    /// false only when the request certainly never reached the node.
    TransportFailed {
        /// The node the STORE was for.
        node: NodeId,
        /// The wave the STORE belonged to.
        wave: u32,
        /// Whether the node may have applied the STORE anyway.
        may_have_been_applied: bool,
    },
    /// Time passed. The driver delivers this at [`Appender::deadline`] so the append ends
    /// even when no answer ever comes.
    Tick,
}

/// What the driver must do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Send `batch` to `node` with this deadline, then report the answer, the timeout or the
    /// transport failure as an [`Event`] for wave `batch.wave_or_seal`.
    SendStore {
        /// The copyset member to store on.
        node: NodeId,
        /// The records (or payload-less amendments) of this wave.
        batch: StoreBatch,
        /// How long to wait for the answer.
        timeout: Duration,
    },
    /// The records are stored on every member of `copyset` in `wave`: ack the application and
    /// report `ReportStored` to the sequencer. Final.
    Completed {
        /// The batch's LSNs.
        lsns: RangeInclusive<Lsn>,
        /// The nodes that hold every record of the batch.
        copyset: Copyset,
        /// The wave that completed.
        wave: u32,
    },
    /// The append failed. Final.
    Failed(AppendError),
}

/// Checks payloads against the limits. Call it before asking for a grant too: an append that
/// fails after its LSNs were granted leaves them for the sequencer to abandon (DESIGN §5),
/// which costs an epoch.
pub fn check_payloads(payloads: &[Vec<u8>], limits: &Limits) -> Result<(), AppendError> {
    for (index, p) in payloads.iter().enumerate() {
        if p.len() > limits.max_payload_bytes {
            return Err(AppendError::PayloadTooLarge {
                index,
                size: p.len(),
                max: limits.max_payload_bytes,
            });
        }
    }
    if payloads.is_empty() || payloads.len() > limits.max_records_per_batch as usize {
        return Err(AppendError::InvalidBatch {
            reason: format!(
                "{} records, a batch holds 1 to {}",
                payloads.len(),
                limits.max_records_per_batch
            ),
        });
    }
    let bytes: usize = payloads
        .iter()
        .map(|p| p.len() + RECORD_OVERHEAD_BYTES)
        .sum();
    let max = limits.max_frame_bytes.saturating_sub(FRAME_OVERHEAD_BYTES);
    if bytes > max {
        return Err(AppendError::InvalidBatch {
            reason: format!("{bytes} bytes of records do not fit a {max}-byte STORE frame"),
        });
    }
    Ok(())
}

/// Where one copyset member of the current wave stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Member {
    Outstanding,
    Stored,
}

/// Writes one granted batch to R nodes. See the module documentation.
pub struct Appender {
    log: LogId,
    lsns: RangeInclusive<Lsn>,
    replication: usize,
    durability: Durability,
    lng: Esn,
    node_set: NodeSet,
    /// The records with their payloads; AMEND stores send them without.
    records: Vec<StoreRecord>,
    selector: CopysetSelector,
    policy: AppendPolicy,
    deadline: Instant,
    /// The current wave, from 1.
    wave: u32,
    copyset: Copyset,
    /// The current wave's members in copyset order (the order decides "first outstanding").
    members: Vec<(NodeId, Member)>,
    /// Nodes that acknowledged a payload STORE in some wave: they hold a full copy.
    holders: BTreeSet<NodeId>,
    /// Payload STOREs whose fate is unknown: sent, neither acknowledged nor refused.
    in_doubt: BTreeSet<(u32, NodeId)>,
    /// Nodes that failed this append; later waves avoid them even if the graylist does not.
    failed: BTreeSet<NodeId>,
    /// When the next wave starts, while it waits (see the module documentation).
    retry_at: Option<Instant>,
    /// STOREs sent whose answer (reply, timeout or transport failure) has not come yet.
    pending: BTreeSet<(u32, NodeId)>,
    /// A node refused a store with a seal (the seal and the sequencer it named): the append
    /// cannot complete in its epoch. It ends once no STORE is pending (see the module notes).
    preempted: Option<(Epoch, Option<NodeId>)>,
    done: bool,
}

impl Appender {
    /// Checks the batch against the grant and the limits, computes the checksums and starts
    /// wave 1. An error means nothing was sent. `nodes` is the cluster state the copyset
    /// selection takes weights and locations from.
    #[allow(clippy::too_many_arguments)]
    pub fn start<R: Rng + ?Sized>(
        grant: &Grant,
        payloads: Vec<Vec<u8>>,
        nodes: &[NodeInfo],
        policy: AppendPolicy,
        limits: &Limits,
        now: Instant,
        graylist: &Graylist,
        rng: &mut R,
    ) -> Result<(Appender, Vec<Action>), AppendError> {
        check_payloads(&payloads, limits)?;
        if payloads.len() != grant.count as usize {
            return Err(AppendError::InvalidBatch {
                reason: format!(
                    "{} payloads for a grant of {} LSNs",
                    payloads.len(),
                    grant.count
                ),
            });
        }
        let last = check_grant_range(grant)?;
        let selector = CopysetSelector::new(&grant.node_set, nodes, policy.domain_scope);
        let replication = usize::from(grant.replication);
        // Surface placement errors here, while nothing is sent; later waves select from the
        // same nodes with the same R, which cannot fail.
        selector.check(replication)?;
        let records = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| StoreRecord {
                lsn: Lsn(grant.first.0 + i as u64),
                timestamp_ms: grant.timestamp_ms,
                payload_crc32: payload_crc32(&payload),
                payload: payload.into(),
            })
            .collect();
        let mut appender = Appender {
            log: grant.log,
            lsns: grant.first..=last,
            replication,
            durability: grant.durability,
            lng: grant.lng,
            node_set: grant.node_set.clone(),
            records,
            selector,
            policy,
            deadline: now + policy.append_timeout,
            wave: 0,
            copyset: Copyset::default(),
            members: Vec::new(),
            holders: BTreeSet::new(),
            in_doubt: BTreeSet::new(),
            failed: BTreeSet::new(),
            retry_at: None,
            pending: BTreeSet::new(),
            preempted: None,
            done: false,
        };
        let actions = appender.next_wave(now, graylist, rng);
        Ok((appender, actions))
    }

    /// Takes one event at time `now`. Returns nothing once the append has ended.
    pub fn handle<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        event: Event,
        graylist: &mut Graylist,
        rng: &mut R,
    ) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        match &event {
            Event::StoreReply { node, wave, .. }
            | Event::StoreTimedOut { node, wave }
            | Event::TransportFailed { node, wave, .. } => {
                self.pending.remove(&(*wave, *node));
            }
            Event::Tick => {}
        }
        if self.preempted.is_some() {
            return self.settle_preempted(now, event);
        }
        let mut actions = match event {
            Event::StoreReply { node, wave, status } => {
                self.on_reply(now, node, wave, status, graylist, rng)
            }
            Event::StoreTimedOut { node, wave } => self.on_timeout(now, node, wave, graylist, rng),
            Event::TransportFailed {
                node,
                wave,
                may_have_been_applied,
            } => {
                if !may_have_been_applied {
                    self.in_doubt.remove(&(wave, node));
                }
                graylist.add(node, AvoidReason::Unreachable, now);
                self.member_failed(now, node, wave, graylist, rng)
            }
            Event::Tick => match self.retry_at {
                Some(at) if now >= at => {
                    self.retry_at = None;
                    self.start_wave(now, graylist, rng)
                }
                _ => Vec::new(),
            },
        };
        if !self.done && now >= self.deadline {
            actions.push(self.timed_out());
        }
        actions
    }

    fn on_reply<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        node: NodeId,
        wave: u32,
        status: StoreStatus,
        graylist: &mut Graylist,
        rng: &mut R,
    ) -> Vec<Action> {
        if wave == 0 || wave > self.wave {
            tracing::warn!(%node, wave, current = self.wave, "reply for a wave never sent");
            return Vec::new();
        }
        let was_payload_store = self.in_doubt.remove(&(wave, node));
        match status {
            StoreStatus::Stored => {
                if was_payload_store {
                    self.holders.insert(node);
                }
                if wave != self.wave {
                    // A late copy of an abandoned wave: it counts only as a holder for AMENDs.
                    return Vec::new();
                }
                let Some(member) = self.member_mut(node) else {
                    return Vec::new();
                };
                *member = Member::Stored;
                let stored = self
                    .members
                    .iter()
                    .filter(|(_, m)| *m == Member::Stored)
                    .count();
                if stored >= self.replication {
                    self.done = true;
                    return vec![Action::Completed {
                        lsns: self.lsns.clone(),
                        copyset: self.copyset.clone(),
                        wave: self.wave,
                    }];
                }
                Vec::new()
            }
            // A seal is a fact about the epoch, whatever the wave that learned it. The append
            // ends once the stores still on their way have answered, so that its error says
            // exactly whether a copy may exist.
            StoreStatus::Preempted { seal, sequencer } => {
                tracing::info!(log = %self.log, %node, %seal, "append preempted");
                self.preempted = Some((seal, sequencer));
                self.retry_at = None;
                self.settle_preempted(now, Event::Tick)
            }
            // Every node got the same bytes: the client's copy is bad, any retry fails alike.
            StoreStatus::ChecksumMismatch { lsn } => {
                let err = if self.may_have_copies() {
                    AppendError::Indeterminate {
                        cause: IndeterminateCause::ChecksumMismatch { node, lsn },
                    }
                } else {
                    AppendError::ChecksumMismatch { node, lsn }
                };
                vec![self.fail(err)]
            }
            StoreStatus::NoSpace | StoreStatus::Overloaded | StoreStatus::Disabled => {
                let reason = match status {
                    StoreStatus::NoSpace => AvoidReason::NoSpace,
                    StoreStatus::Overloaded => AvoidReason::Overloaded,
                    _ => AvoidReason::Disabled,
                };
                // Recorded even for old waves: the node's state is news for later copysets.
                graylist.add(node, reason, now);
                self.member_failed(now, node, wave, graylist, rng)
            }
        }
    }

    fn on_timeout<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        node: NodeId,
        wave: u32,
        graylist: &mut Graylist,
        rng: &mut R,
    ) -> Vec<Action> {
        if wave != self.wave || self.member(node) != Some(Member::Outstanding) {
            return Vec::new();
        }
        let outstanding: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| *m == Member::Outstanding)
            .map(|(n, _)| *n)
            .collect();
        // Only the first outstanding member, and only if someone answered: when the whole
        // wave is silent the problem is likely ours, and graylisting everyone would steer
        // every later copyset onto ever fewer nodes (a death spiral of retries).
        if outstanding.len() < self.members.len() {
            let slow = outstanding[0];
            graylist.add(slow, AvoidReason::Slow, now);
            self.failed.insert(slow);
        }
        self.next_wave(now, graylist, rng)
    }

    /// `node` refused or could not be reached: route around it, and if it belonged to the
    /// current wave, that wave cannot complete.
    fn member_failed<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        node: NodeId,
        wave: u32,
        graylist: &mut Graylist,
        rng: &mut R,
    ) -> Vec<Action> {
        self.failed.insert(node);
        if wave == self.wave && self.member(node) == Some(Member::Outstanding) {
            self.next_wave(now, graylist, rng)
        } else {
            Vec::new()
        }
    }

    /// Starts the next wave, or schedules it when too few nodes are left to avoid.
    fn next_wave<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        graylist: &Graylist,
        rng: &mut R,
    ) -> Vec<Action> {
        if now >= self.deadline {
            return vec![self.timed_out()];
        }
        if self.retry_at.is_some() {
            return Vec::new();
        }
        if self.wave > 0 {
            let avoid = self.avoid_set(now, graylist);
            let usable = self
                .node_set
                .nodes()
                .iter()
                .filter(|n| !avoid.contains(n))
                .count();
            if usable < self.replication {
                let at = (now + self.policy.store_timeout(self.wave)).min(self.deadline);
                tracing::debug!(
                    log = %self.log,
                    lsn = %self.lsns.start(),
                    wave = self.wave,
                    usable,
                    "too few healthy nodes; next wave waits"
                );
                self.retry_at = Some(at);
                return Vec::new();
            }
        }
        self.start_wave(now, graylist, rng)
    }

    /// Nodes a wave should skip, graded: graylisted nodes (mild: slow or busy for someone),
    /// then nodes that failed this very append (strong). Nodes that already hold the payload
    /// are never mildly avoided: they only need an AMEND and have just shown they store. When
    /// too few healthy nodes remain, the copyset is filled from the mild tier before the strong
    /// one, so a dead node is not retried while merely slow ones are left unused.
    fn avoid_tiers(&self, now: Instant, graylist: &Graylist) -> [BTreeSet<NodeId>; 2] {
        let mut mild = graylist.avoid_set(&self.node_set, now);
        mild.retain(|n| !self.holders.contains(n) && !self.failed.contains(n));
        [mild, self.failed.clone()]
    }

    fn avoid_set(&self, now: Instant, graylist: &Graylist) -> BTreeSet<NodeId> {
        let [mut avoid, failed] = self.avoid_tiers(now, graylist);
        avoid.extend(failed);
        avoid
    }

    fn start_wave<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        graylist: &Graylist,
        rng: &mut R,
    ) -> Vec<Action> {
        if now >= self.deadline {
            return vec![self.timed_out()];
        }
        self.wave += 1;
        let [mild, strong] = self.avoid_tiers(now, graylist);
        self.copyset = self
            .selector
            .select_tiered(self.replication, &[&mild, &strong], rng)
            .expect("same nodes and replication as the selection checked in start");
        let timeout = self
            .policy
            .store_timeout(self.wave)
            .min(self.deadline - now);
        tracing::debug!(
            log = %self.log,
            lsn = %self.lsns.start(),
            wave = self.wave,
            copyset = ?self.copyset,
            "starting append wave"
        );
        self.members = self
            .copyset
            .nodes()
            .iter()
            .map(|&n| (n, Member::Outstanding))
            .collect();
        let mut actions = Vec::with_capacity(self.members.len());
        for &node in self.copyset.nodes() {
            let amend = self.holders.contains(&node);
            if !amend {
                self.in_doubt.insert((self.wave, node));
            }
            self.pending.insert((self.wave, node));
            actions.push(Action::SendStore {
                node,
                batch: self.batch(amend),
                timeout,
            });
        }
        actions
    }

    fn batch(&self, amend: bool) -> StoreBatch {
        let mut flags = match self.durability {
            Durability::Durable => RecordFlags::DURABLE,
            Durability::Fast => RecordFlags::NONE,
        };
        let records = if amend {
            flags = flags | RecordFlags::AMEND;
            self.records
                .iter()
                .map(|r| StoreRecord {
                    lsn: r.lsn,
                    timestamp_ms: r.timestamp_ms,
                    payload_crc32: r.payload_crc32,
                    payload: bytes::Bytes::new(),
                })
                .collect()
        } else {
            self.records.clone()
        };
        StoreBatch {
            log: self.log,
            copyset: self.copyset.clone(),
            wave_or_seal: self.wave,
            flags,
            durability: self.durability,
            lng: self.lng,
            records,
        }
    }

    fn member(&self, node: NodeId) -> Option<Member> {
        self.members
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, m)| *m)
    }

    fn member_mut(&mut self, node: NodeId) -> Option<&mut Member> {
        self.members
            .iter_mut()
            .find(|(n, _)| *n == node)
            .map(|(_, m)| m)
    }

    /// After a seal refused a store: records what `event` says about copies (no new wave
    /// starts), and fails the append with `Preempted` once no STORE is pending or the append
    /// timeout passed. `may_be_stored` is then exact: true only if a node acknowledged a
    /// copy or a payload store's fate stays unknown (it timed out, or its connection failed
    /// after sending), so a caller may retry an append refused by every node it reached.
    fn settle_preempted(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::StoreReply { node, wave, status } => {
                let was_payload_store = self.in_doubt.remove(&(wave, node));
                if status == StoreStatus::Stored && was_payload_store {
                    self.holders.insert(node);
                }
            }
            Event::TransportFailed {
                node,
                wave,
                may_have_been_applied: false,
            } => {
                self.in_doubt.remove(&(wave, node));
            }
            // A timed-out store stays in doubt: it may have been applied.
            Event::TransportFailed { .. } | Event::StoreTimedOut { .. } | Event::Tick => {}
        }
        if !self.pending.is_empty() && now < self.deadline {
            return Vec::new();
        }
        let (seal, sequencer) = self.preempted.expect("called once preempted");
        let err = AppendError::Preempted {
            seal,
            sequencer,
            may_be_stored: self.may_have_copies(),
        };
        vec![self.fail(err)]
    }

    fn timed_out(&mut self) -> Action {
        let err = if self.may_have_copies() {
            AppendError::Indeterminate {
                cause: IndeterminateCause::TimedOut,
            }
        } else {
            AppendError::TimedOut
        };
        self.fail(err)
    }

    fn fail(&mut self, err: AppendError) -> Action {
        self.done = true;
        Action::Failed(err)
    }

    /// Whether some copy may exist: a node acknowledged one, or a payload STORE is unresolved.
    pub fn may_have_copies(&self) -> bool {
        !self.holders.is_empty() || !self.in_doubt.is_empty()
    }

    /// The current wave (1 after start).
    pub fn wave(&self) -> u32 {
        self.wave
    }

    /// The current wave's copyset.
    pub fn copyset(&self) -> &Copyset {
        &self.copyset
    }

    /// When the append times out; deliver [`Event::Tick`] then.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the appender next needs an [`Event::Tick`]: the start of a waiting wave, else
    /// the append timeout.
    pub fn wake_at(&self) -> Instant {
        self.retry_at
            .map_or(self.deadline, |at| at.min(self.deadline))
    }

    /// The LSNs of the granted batch this appender writes.
    pub fn lsns(&self) -> RangeInclusive<Lsn> {
        self.lsns.clone()
    }

    /// Whether the append has reported its outcome.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The payloads of the batch, given back (to append them again in a new grant after a
    /// failure that stored nothing). No copy once the STOREs holding them are gone.
    pub fn into_payloads(self) -> Vec<Vec<u8>> {
        self.records
            .into_iter()
            .map(|r| Vec::from(r.payload))
            .collect()
    }
}

/// Leaves out the payloads, which may be megabytes.
impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("log", &self.log)
            .field("lsns", &self.lsns)
            .field("replication", &self.replication)
            .field("wave", &self.wave)
            .field("members", &self.members)
            .field("holders", &self.holders)
            .field("in_doubt", &self.in_doubt)
            .field("failed", &self.failed)
            .field("retry_at", &self.retry_at)
            .field("pending", &self.pending)
            .field("preempted", &self.preempted)
            .field("deadline", &self.deadline)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The last LSN of the grant, if the grant is a non-empty run within one epoch.
fn check_grant_range(grant: &Grant) -> Result<Lsn, AppendError> {
    let bad = |reason: String| AppendError::InvalidBatch { reason };
    if grant.count == 0 || !grant.first.epoch().is_valid() || grant.first.esn() == Esn::INVALID {
        return Err(bad(format!(
            "grant of {} LSNs from {}",
            grant.count, grant.first
        )));
    }
    let last_esn = grant
        .first
        .esn()
        .0
        .checked_add(grant.count - 1)
        .ok_or_else(|| bad(format!("grant from {} leaves its epoch", grant.first)))?;
    Ok(Lsn::new(grant.first.epoch(), Esn(last_esn)))
}

#[cfg(test)]
mod tests;
