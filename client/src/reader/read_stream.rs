//! [`ReadStream`]: the client read stream of one log as a pure state machine (DESIGN §8).
//!
//! The runtime opens one server-push stream per node of the node set of the epoch being read
//! and feeds what they send into the machine (`on_records`, `on_gap`, `on_stream_done`), along
//! with what it learns about nodes (`on_node_down`, `on_node_up`, `on_node_status`), log
//! metadata (`on_epoch_metadata`) and time (`on_tick`). The machine answers with
//! [`Delivery`]s for the application — records and typed gaps that together cover every LSN
//! from `from` on, in increasing order, each LSN exactly once — and [`Action`]s for the
//! runtime (open, slide, close streams; rewinds; metadata fetches; stall reports). Nothing in
//! here touches a socket or a clock.
//!
//! Rules: a record at the next LSN is delivered as soon as any node ships a copy whose
//! checksum verifies (a bad copy counts as that node not having it); hole plugs become `Hole`
//! gaps and bridge records `Bridge` gaps to the end of their epoch; a node's `Trim` gap
//! becomes a `Trim` gap. When the next LSN is missing the machine waits until the nodes of the
//! epoch's node set that have moved past it form an f-majority (the one [`QuorumChecker`]),
//! then — unless every node did — for a grace period, and types the gap with [`super::gap`].
//! With single-copy delivery on, such an inferred gap is never believed at once. If some live
//! nodes had not moved past it, they are the likely shippers of what is missing (dead without
//! the runtime knowing yet, or slow): the stream first rewinds, still single copy, with them
//! in the filter's known-down list, so the other copy holders ship their records (their
//! streams stay open and count for proofs). A gap that survives that rewinds in all-send-all
//! mode, and only a gap that survives that is delivered; the stream also fails over to
//! all-send-all when every live node moved past a missing LSN, proof or not.
//! When live nodes cannot form an authoritative f-majority, the machine reports
//! [`Action::Stalled`] and waits. Moving into an epoch with another node set closes and opens
//! streams; an epoch the metadata does not cover yet asks for [`Action::FetchMetadata`].
//!
//! Runtime contract: every event about a stream names the [`StreamId`] of the `OpenStream`
//! that created it; events of closed streams are ignored, which is what makes rewinds safe
//! against messages still in flight. Grace periods start at the first `on_tick` after the
//! f-majority was reached, so they are never shorter than configured; tick at least every
//! few tens of milliseconds.
//!
//! Filtered reads ([`ReadStreamConfig::record_filter`], `tally grep`): nodes skip records
//! outside the time range or whose payload does not match, and their progress covers what
//! they skipped, so an f-majority proof over a range now says "no record here *passes the
//! filter*" — a matching record has a copy on some node of every f-majority, and that node
//! ships it. Two rules change: such a range inside an epoch is a `Filtered` gap, never
//! `DataLoss` (a skipped record and a lost one look the same to the reader: loss is for an
//! unfiltered read to report), and the read runs all-send-all throughout, because in
//! single-copy mode a shipper's silence about a record cannot tell "did not match" from
//! "has no good copy", and every non-matching record would cost a rewind. Hole plugs and
//! bridges are not filtered, so `Hole` and `Bridge` gaps are typed as usual. And since gaps
//! are everywhere in a filtered read, it does not wait out the grace period for nodes known
//! down once every other node has answered (an authoritative f-majority is still required).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use tally_common::meta::{LogMetadata, NodeSetEntry};
use tally_common::quorum::{AuthStatus, QuorumChecker};
use tally_common::wire::client::ClientResponse;
use tally_common::wire::{GapKind, ReadFilter, ReadRecord};
use tally_common::{Epoch, Esn, Lsn, NodeId, RecordFlags, verify_payload};

use super::gap::{self, Proof, RangeEnd};
use super::types::{
    Action, Delivery, ReadStats, ReadStreamConfig, ReadStreamError, RewindReason, StreamId,
};

/// How soon a metadata fetch that did not give the wanted epoch is repeated: soon at first
/// (a log activated just after the reader started), doubling up to [`METADATA_RETRY_MAX`].
const METADATA_RETRY_MIN: Duration = Duration::from_millis(100);
const METADATA_RETRY_MAX: Duration = Duration::from_secs(1);

/// What a record is assumed to weigh for the window's byte bound before the first one
/// arrives: the default payload limit, so a log of large records cannot overrun
/// `window_bytes` on the first window. The first record replaces the guess.
const INITIAL_RECORD_BYTES: u64 = tally_common::limits::DEFAULT_MAX_PAYLOAD_BYTES as u64;

/// Bytes a shipped record weighs besides its payload (header, framing), for the estimate.
const RECORD_OVERHEAD_BYTES: u64 = 64;

/// A wanted epoch's metadata: when it was last asked for, and the wait before asking again.
#[derive(Clone, Copy, Debug)]
struct MetadataWait {
    epoch: Epoch,
    asked: Option<Instant>,
    retry: Duration,
}

#[derive(Clone, Debug)]
struct NodeState {
    /// The open stream, `None` while the node is down.
    stream: Option<StreamId>,
    /// Everything at or below this was shipped or proved absent by the current stream.
    passed: Lsn,
}

#[derive(Clone, Debug)]
struct EpochView {
    epoch: Epoch,
    checker: QuorumChecker,
    /// Whether the epoch is known to hold something from where the reader entered it: the
    /// reader entered it at its start (so its bridge, at least, is ahead), or delivered a
    /// record, hole or loss of it (see [`gap::gap_kind`]).
    known_nonempty: bool,
}

#[derive(Clone, Copy, Debug)]
struct Grace {
    at: Lsn,
    deadline: Option<Instant>,
    expired: bool,
}

/// The read stream of one log (see the module documentation).
#[derive(Debug)]
pub struct ReadStream {
    config: ReadStreamConfig,
    history: Vec<NodeSetEntry>,
    /// The newest epoch whose node set `history` is known to give.
    known_through: Epoch,
    /// Last LSN covered by a delivery (`from − 1` at first).
    delivered_through: Lsn,
    /// Last LSN covered by a delivery the application took.
    consumed_through: Lsn,
    /// Largest LSN up to which absence was proved (for sliding windows over long gaps).
    proved_through: Lsn,
    window_until: Lsn,
    /// Estimated bytes per shipped record (payload and overhead): [`INITIAL_RECORD_BYTES`]
    /// until the first record, then a moving average (each record moves it by 1/8).
    record_bytes: Option<u64>,
    done: bool,
    view: Option<EpochView>,
    /// Nodes of the current epoch's node set.
    nodes: BTreeMap<NodeId, NodeState>,
    down: BTreeSet<NodeId>,
    /// Nodes left out of single-copy shipping (in the filter's known-down list) because they
    /// held up a single-copy read; unlike `down`, their streams stay open and count.
    slow: BTreeSet<NodeId>,
    statuses: BTreeMap<NodeId, AuthStatus>,
    buffer: BTreeMap<Lsn, ReadRecord>,
    trim_point: Lsn,
    single_copy_now: bool,
    /// In all-send-all after a suspected gap: go back to single copy once past this.
    back_to_single_copy_after: Option<Lsn>,
    next_incarnation: u64,
    grace: Option<Grace>,
    stalled: Option<(Lsn, Vec<NodeId>)>,
    metadata_wanted: Option<MetadataWait>,
    deliveries: VecDeque<Delivery>,
    actions: VecDeque<Action>,
    stats: ReadStats,
}

impl ReadStream {
    /// A read stream over `config.from ..= config.until`, with the log's metadata as known now.
    /// The first actions (opening streams) are ready at once.
    pub fn new(
        config: ReadStreamConfig,
        metadata: &LogMetadata,
    ) -> Result<ReadStream, ReadStreamError> {
        let from = config.from.max(Lsn::OLDEST);
        if from > config.until {
            return Err(ReadStreamError::EmptyRange {
                from,
                until: config.until,
            });
        }
        if config.window == 0 {
            return Err(ReadStreamError::ZeroWindow);
        }
        if config.window_bytes == 0 {
            return Err(ReadStreamError::ZeroWindowBytes);
        }
        let start = from.prev();
        let window_until =
            Lsn(start.0.saturating_add(window_lsns(&config, None))).min(config.until);
        let mut config = config;
        if !config.record_filter.is_everything() {
            config.single_copy = false;
        }
        let mut stream = ReadStream {
            single_copy_now: config.single_copy,
            history: metadata.history.clone(),
            known_through: metadata.current_epoch(),
            delivered_through: start,
            consumed_through: start,
            proved_through: start,
            window_until,
            record_bytes: None,
            done: false,
            view: None,
            nodes: BTreeMap::new(),
            down: BTreeSet::new(),
            slow: BTreeSet::new(),
            statuses: BTreeMap::new(),
            buffer: BTreeMap::new(),
            trim_point: Lsn::INVALID,
            back_to_single_copy_after: None,
            next_incarnation: 1,
            grace: None,
            stalled: None,
            metadata_wanted: None,
            deliveries: VecDeque::new(),
            actions: VecDeque::new(),
            stats: ReadStats::default(),
            config,
        };
        stream.advance();
        Ok(stream)
    }

    /// The next LSN to deliver.
    pub fn next_lsn(&self) -> Lsn {
        self.delivered_through.next()
    }

    /// Whether every LSN up to `until` was delivered.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether single-copy delivery is in force right now.
    pub fn single_copy_now(&self) -> bool {
        self.single_copy_now
    }

    /// Where the reader is stalled and for whom, if it is.
    pub fn stalled(&self) -> Option<(Lsn, &[NodeId])> {
        self.stalled.as_ref().map(|(at, w)| (*at, w.as_slice()))
    }

    /// The stream's counters so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// The current window's last LSN (what every open stream was told).
    pub fn window_until(&self) -> Lsn {
        self.window_until
    }

    /// Records buffered beyond the delivery point.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether [`ReadStream::poll_delivery`] has something (so a runtime can wait for room
    /// downstream before taking it, which is what keeps a slow consumer's memory bounded).
    pub fn has_delivery(&self) -> bool {
        !self.deliveries.is_empty()
    }

    /// The next item for the application; taking it may slide the windows.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        let d = self.deliveries.pop_front()?;
        self.consumed_through = d.to();
        self.maybe_slide_window();
        Some(d)
    }

    /// The next action for the runtime.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Records pushed on `stream`, in increasing LSN order.
    pub fn on_records(&mut self, stream: StreamId, records: Vec<ReadRecord>) {
        let Some(node) = self.current(stream) else {
            return;
        };
        let mut passed = self.nodes[&node].passed;
        for rec in records {
            let lsn = rec.header.lsn;
            if lsn <= passed {
                self.stats.duplicates += 1;
                continue;
            }
            if lsn > self.config.until || lsn > self.window_until {
                self.stats.out_of_window += 1;
                break;
            }
            passed = lsn;
            let weight = rec.payload.len() as u64 + RECORD_OVERHEAD_BYTES;
            self.record_bytes = Some(match self.record_bytes {
                None => weight,
                Some(avg) => avg - avg / 8 + weight / 8,
            });
            if lsn <= self.delivered_through {
                self.stats.duplicates += 1;
                continue;
            }
            if !self.copy_is_good(&rec) {
                // Counts as missing from this node: its stream still moved past the LSN.
                self.stats.bad_copies += 1;
                tracing::debug!(%node, %lsn, "dropping a bad copy");
                continue;
            }
            match self.buffer.get_mut(&lsn) {
                None => {
                    self.buffer.insert(lsn, rec);
                }
                Some(held) => {
                    self.stats.duplicates += 1;
                    if rec.header.precedence() > held.header.precedence() {
                        *held = rec;
                    }
                }
            }
        }
        if let Some(state) = self.nodes.get_mut(&node) {
            state.passed = passed;
        }
        self.advance();
    }

    /// A gap pushed on `stream`: `NoRecords` (the node holds nothing in `from ..= to`) or
    /// `Trim` (everything up to `to` is trimmed). Other kinds are treated as `NoRecords`.
    pub fn on_gap(&mut self, stream: StreamId, kind: GapKind, from: Lsn, to: Lsn) {
        let Some(node) = self.current(stream) else {
            return;
        };
        if from > to {
            return;
        }
        match kind {
            GapKind::NoRecords => {}
            GapKind::Trim => self.trim_point = self.trim_point.max(to),
            other => tracing::debug!(%node, ?other, "unexpected gap kind from a node"),
        }
        if let Some(state) = self.nodes.get_mut(&node) {
            state.passed = state.passed.max(to);
        }
        self.advance();
    }

    /// The node reached `until`: it has nothing more.
    pub fn on_stream_done(&mut self, stream: StreamId) {
        let Some(node) = self.current(stream) else {
            return;
        };
        let until = self.config.until;
        if let Some(state) = self.nodes.get_mut(&node) {
            state.passed = state.passed.max(until);
        }
        self.advance();
    }

    /// Dispatches a pushed read-stream message. Returns false for anything else (errors are
    /// the runtime's to handle, typically with [`ReadStream::on_node_down`]).
    pub fn on_response(&mut self, stream: StreamId, response: ClientResponse) -> bool {
        match response {
            ClientResponse::Records(records) => self.on_records(stream, records),
            ClientResponse::Gap { kind, from, to } => self.on_gap(stream, kind, from, to),
            ClientResponse::ReadDone => self.on_stream_done(stream),
            _ => return false,
        }
        true
    }

    /// The node is unreachable (its stream failed, or the cluster says so).
    pub fn on_node_down(&mut self, node: NodeId) {
        if !self.down.insert(node) {
            return;
        }
        if self.nodes.contains_key(&node) && !self.done {
            if self.single_copy_now {
                // Other nodes must now ship the records this one was first for.
                self.rewind(true, RewindReason::DownNodesChanged);
            } else {
                let start = self.delivered_through;
                if let Some(state) = self.nodes.get_mut(&node) {
                    state.passed = start;
                    if let Some(stream) = state.stream.take() {
                        self.actions.push_back(Action::CloseStream { stream });
                    }
                }
            }
        }
        self.advance();
    }

    /// The node is reachable again.
    pub fn on_node_up(&mut self, node: NodeId) {
        if !self.down.remove(&node) {
            return;
        }
        // Back with a fresh stream: worth shipping for again.
        self.slow.remove(&node);
        if self.nodes.contains_key(&node) && !self.done {
            if self.single_copy_now {
                self.rewind(true, RewindReason::DownNodesChanged);
            } else {
                self.open_stream(node);
            }
        }
        self.advance();
    }

    /// The node's authoritative status changed (rebuilding, data loss, rebuilt empty).
    pub fn on_node_status(&mut self, node: NodeId, status: AuthStatus) {
        self.statuses.insert(node, status);
        if let Some(view) = self.view.as_mut() {
            view.checker.set_status(node, status);
        }
        self.advance();
    }

    /// Newer log metadata (answer to [`Action::FetchMetadata`]). Older metadata is ignored.
    pub fn on_epoch_metadata(&mut self, metadata: &LogMetadata) {
        let current = metadata.current_epoch();
        if current >= self.known_through {
            self.history = metadata.history.clone();
            self.known_through = current;
        }
        self.advance();
    }

    /// Time passes: starts and expires grace periods, repeats metadata fetches, and re-checks
    /// every wait.
    pub fn on_tick(&mut self, now: Instant) {
        if let Some(g) = self.grace.as_mut() {
            let deadline = *g.deadline.get_or_insert(now + self.config.grace);
            if now >= deadline {
                g.expired = true;
            }
        }
        if let Some(wait) = self.metadata_wanted.as_mut() {
            let asked = wait.asked.get_or_insert(now);
            if now.duration_since(*asked) >= wait.retry {
                *asked = now;
                wait.retry = (wait.retry * 2).min(METADATA_RETRY_MAX);
                self.actions
                    .push_back(Action::FetchMetadata { epoch: wait.epoch });
            }
        }
        self.advance();
    }

    /// The node of `stream` if it is a current stream; counts stale ones.
    fn current(&mut self, stream: StreamId) -> Option<NodeId> {
        let live = self
            .nodes
            .get(&stream.node)
            .is_some_and(|s| s.stream == Some(stream));
        if live && !self.done {
            Some(stream.node)
        } else {
            self.stats.stale_messages += 1;
            None
        }
    }

    fn copy_is_good(&self, rec: &ReadRecord) -> bool {
        rec.header.log == self.config.log
            && !rec.header.flags.contains(RecordFlags::AMEND)
            && verify_payload(rec.header.payload_crc32, &rec.payload).is_ok()
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter {
            single_copy: self.single_copy_now,
            shuffle_seed: self.config.shuffle_seed,
            known_down: self.down.union(&self.slow).copied().collect(),
            min_timestamp_ms: self.config.record_filter.min_timestamp_ms,
            max_timestamp_ms: self.config.record_filter.max_timestamp_ms,
            payload_regex: self.config.record_filter.payload_regex.clone(),
        }
    }

    fn open_stream(&mut self, node: NodeId) {
        self.ensure_window_covers(self.delivered_through.next());
        let stream = StreamId {
            node,
            incarnation: self.next_incarnation,
        };
        self.next_incarnation += 1;
        let start = self.delivered_through;
        if let Some(state) = self.nodes.get_mut(&node) {
            state.stream = Some(stream);
            state.passed = start;
        }
        self.actions.push_back(Action::OpenStream {
            stream,
            from: start.next(),
            until: self.config.until,
            window_until: self.window_until,
            filter: self.filter(),
        });
    }

    /// Widens the window to reach `from` if it does not (a stream opened past its window
    /// would be refused): after a gap the application has not taken yet, such as the bridge
    /// into a new epoch. The window is anchored where [`ReadStream::maybe_slide_window`]
    /// anchors it (what the application took, or a proved gap), so buffering stays bounded;
    /// the open streams are told.
    fn ensure_window_covers(&mut self, from: Lsn) {
        if self.window_until >= from {
            return;
        }
        let base = self.consumed_through.max(self.proved_through);
        let target = Lsn(base.0.saturating_add(self.window_lsns()))
            .max(from)
            .min(self.config.until);
        self.window_until = target;
        let streams: Vec<StreamId> = self.nodes.values().filter_map(|s| s.stream).collect();
        for stream in streams {
            self.actions.push_back(Action::SendWindow {
                stream,
                until: target,
            });
        }
    }

    /// Reopens every stream from the delivery point, in single-copy mode or not. Buffered
    /// copies are kept (they are verified); what nodes proved is forgotten.
    fn rewind(&mut self, single_copy: bool, reason: RewindReason) {
        self.single_copy_now = single_copy;
        self.stats.rewinds += 1;
        self.grace = None;
        self.actions.push_back(Action::Rewind {
            from: self.delivered_through.next(),
            single_copy,
            known_down: self.filter().known_down,
            reason,
        });
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        for node in nodes {
            let start = self.delivered_through;
            if let Some(state) = self.nodes.get_mut(&node) {
                state.passed = start;
                if let Some(stream) = state.stream.take() {
                    self.actions.push_back(Action::CloseStream { stream });
                }
            }
            if !self.down.contains(&node) {
                self.open_stream(node);
            }
        }
    }

    /// Makes `epoch`'s node set the current one, opening and closing streams. False while
    /// its metadata is unknown (a fetch is requested).
    fn enter_epoch(&mut self, epoch: Epoch) -> bool {
        if self.view.as_ref().is_some_and(|v| v.epoch == epoch) {
            return true;
        }
        let entry = if epoch <= self.known_through {
            self.history
                .iter()
                .rev()
                .find(|e| e.since <= epoch)
                .cloned()
        } else {
            None
        };
        let checker = entry.as_ref().and_then(|e| {
            QuorumChecker::new(e.node_set.nodes(), e.replication as usize)
                .inspect_err(|err| tracing::error!(%epoch, %err, "unusable node set"))
                .ok()
        });
        let (Some(entry), Some(mut checker)) = (entry, checker) else {
            if self.metadata_wanted.map(|w| w.epoch) != Some(epoch) {
                self.metadata_wanted = Some(MetadataWait {
                    epoch,
                    asked: None,
                    retry: METADATA_RETRY_MIN,
                });
                self.actions.push_back(Action::FetchMetadata { epoch });
            }
            return false;
        };
        self.metadata_wanted = None;
        for (node, status) in &self.statuses {
            checker.set_status(*node, *status);
        }
        let leaving: Vec<NodeId> = self
            .nodes
            .keys()
            .filter(|n| !entry.node_set.contains(**n))
            .copied()
            .collect();
        for node in leaving {
            if let Some(stream) = self.nodes.remove(&node).and_then(|s| s.stream) {
                self.actions.push_back(Action::CloseStream { stream });
            }
        }
        for node in entry.node_set.nodes() {
            if self.nodes.contains_key(node) {
                continue;
            }
            self.nodes.insert(
                *node,
                NodeState {
                    stream: None,
                    passed: self.delivered_through,
                },
            );
            if !self.down.contains(node) {
                self.open_stream(*node);
            }
        }
        self.view = Some(EpochView {
            epoch,
            checker,
            known_nonempty: self.delivered_through.next().esn() <= Esn::MIN,
        });
        self.grace = None;
        true
    }

    /// Delivers everything that can be delivered, then re-evaluates stalls and windows.
    fn advance(&mut self) {
        while !self.done {
            if self.delivered_through >= self.config.until {
                self.finish();
                break;
            }
            let next = self.delivered_through.next();
            let epoch = next.epoch();
            let has_record = self.buffer.contains_key(&next);
            // Before the log's first epoch there is nothing to read.
            if let Some(first) = self.history.first()
                && epoch < first.since
            {
                let to = Lsn::new(first.since, Esn(0)).min(self.config.until);
                self.deliver_gap(GapKind::Bridge, next, to);
                continue;
            }
            if next <= self.trim_point && !has_record {
                let to = self
                    .trim_point
                    .min(self.config.until)
                    .min(self.gap_bound(next));
                self.deliver_gap(GapKind::Trim, next, to);
                continue;
            }
            if !self.enter_epoch(epoch) {
                break;
            }
            if next.esn() == Esn(0) {
                // The slot before an epoch's first ESN never holds a record.
                self.deliver_gap(GapKind::Bridge, next, next);
                continue;
            }
            if let Some(rec) = self.buffer.remove(&next) {
                self.deliver_record(rec);
                continue;
            }
            match self.decide_gap(next) {
                // The gap was decided without some live nodes, after the grace period: they
                // are the likely shippers of what is missing. Ship around them first; a gap
                // that survives that still goes through all-send-all below.
                Some(_) if self.single_copy_now && self.mark_laggards_slow(next) => {
                    self.rewind(true, RewindReason::SlowShippers);
                    break;
                }
                Some((kind, to)) if self.single_copy_now => {
                    tracing::debug!(%next, %to, ?kind, "suspected gap in single-copy mode");
                    self.back_to_single_copy_after = Some(to);
                    self.rewind(false, RewindReason::SuspectedGap);
                    break;
                }
                Some((GapKind::DataLoss, to)) if !self.config.record_filter.is_everything() => {
                    self.deliver_gap(GapKind::Filtered, next, to)
                }
                Some((kind, to)) => self.deliver_gap(kind, next, to),
                None => {
                    if self.single_copy_now && self.every_live_node_passed(next) {
                        // Nobody will ship `next` (its shipper may hold a bad copy, or be down
                        // without the reader knowing), and proofs may be out of reach: only
                        // all-send-all can tell.
                        self.back_to_single_copy_after = Some(next);
                        self.rewind(false, RewindReason::SuspectedGap);
                    }
                    break;
                }
            }
        }
        self.update_stall();
        self.maybe_slide_window();
    }

    /// Marks the live nodes of the set that have not moved past `next` (and are not slow
    /// yet) as slow shippers; false if there is none.
    fn mark_laggards_slow(&mut self, next: Lsn) -> bool {
        let laggards: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(n, s)| s.passed < next && !self.down.contains(n) && !self.slow.contains(n))
            .map(|(n, _)| *n)
            .collect();
        if laggards.is_empty() {
            return false;
        }
        tracing::debug!(%next, ?laggards, "single-copy shippers held up the read");
        self.slow.extend(laggards);
        true
    }

    /// Whether every node of the set that is not down moved past `next` (and there is one).
    fn every_live_node_passed(&self, next: Lsn) -> bool {
        let mut live = self
            .nodes
            .iter()
            .filter(|(n, _)| !self.down.contains(n))
            .peekable();
        live.peek().is_some() && live.all(|(_, s)| s.passed >= next)
    }

    /// One below the first buffered record after `next` (or `Lsn::MAX`).
    fn gap_bound(&self, next: Lsn) -> Lsn {
        self.buffer
            .range(next..)
            .next()
            .map_or(Lsn::MAX, |(lsn, _)| lsn.prev())
    }

    /// The gap to deliver at `next` (which has no record), if it is decided.
    fn decide_gap(&mut self, next: Lsn) -> Option<(GapKind, Lsn)> {
        let passed: BTreeMap<NodeId, Lsn> =
            self.nodes.iter().map(|(n, s)| (*n, s.passed)).collect();
        let view = self.view.as_mut()?;
        let cap = gap::epoch_cap(view.epoch);
        let limit = cap.min(self.config.until);
        let first_buffered = self.buffer.range(next..).next().map(|(lsn, _)| *lsn);
        let bound = first_buffered.map_or(limit, |b| b.prev().min(limit));
        let Some(authoritative) =
            gap::proved_through(&mut view.checker, &passed, next, Proof::Authoritative)
        else {
            self.grace = None;
            return None;
        };
        self.proved_through = self.proved_through.max(authoritative.min(bound));
        if self.grace.is_none_or(|g| g.at != next) {
            self.grace = Some(Grace {
                at: next,
                deadline: None,
                expired: false,
            });
        }
        let expired = self.grace.is_some_and(|g| g.expired);
        let filtered = !self.config.record_filter.is_everything();
        let proved = if expired {
            authoritative
        } else if filtered && !self.down.is_empty() {
            // A filtered read proves a gap at every run of non-matching records: waiting out
            // the grace period for nodes known down (which cannot ship anything) at each one
            // would cost it per run. Every node that is up has answered is enough, on top of
            // the authoritative f-majority already required.
            let live: BTreeMap<NodeId, Lsn> = passed
                .iter()
                .map(|(n, p)| (*n, if self.down.contains(n) { Lsn::MAX } else { *p }))
                .collect();
            gap::proved_through(&mut view.checker, &live, next, Proof::Complete)?.min(authoritative)
        } else {
            gap::proved_through(&mut view.checker, &passed, next, Proof::Complete)?
        };
        let to = proved.min(bound);
        if first_buffered.is_some_and(|b| b < cap) {
            Some((
                gap::gap_kind(RangeEnd::BeforeRecord, view.known_nonempty),
                to,
            ))
        } else if to == limit {
            Some((gap::gap_kind(RangeEnd::EpochEnd, view.known_nonempty), to))
        } else {
            None
        }
    }

    fn deliver_record(&mut self, rec: ReadRecord) {
        let lsn = rec.header.lsn;
        let flags = rec.header.flags;
        if flags.contains(RecordFlags::BRIDGE) {
            let to = gap::epoch_cap(lsn.epoch()).min(self.config.until);
            self.deliver_gap(GapKind::Bridge, lsn, to);
        } else if flags.contains(RecordFlags::HOLE) {
            self.deliver_gap(GapKind::Hole, lsn, lsn);
        } else {
            self.mark_epoch_used(lsn);
            self.deliveries.push_back(Delivery::Record(rec));
            self.covered(lsn);
        }
    }

    fn deliver_gap(&mut self, kind: GapKind, from: Lsn, to: Lsn) {
        if matches!(kind, GapKind::Hole | GapKind::DataLoss | GapKind::Filtered) {
            self.mark_epoch_used(from);
        }
        self.deliveries.push_back(Delivery::Gap { kind, from, to });
        self.covered(to);
    }

    fn mark_epoch_used(&mut self, lsn: Lsn) {
        if let Some(view) = self.view.as_mut()
            && view.epoch == lsn.epoch()
        {
            view.known_nonempty = true;
        }
    }

    /// Everything up to `to` is delivered: drop what is buffered below it.
    fn covered(&mut self, to: Lsn) {
        self.delivered_through = to;
        self.proved_through = self.proved_through.max(to);
        self.buffer = match to.0.checked_add(1) {
            Some(above) => self.buffer.split_off(&Lsn(above)),
            None => BTreeMap::new(),
        };
        self.grace = None;
    }

    fn finish(&mut self) {
        self.done = true;
        self.stalled = None;
        self.grace = None;
        self.buffer.clear();
        let streams: Vec<StreamId> = self
            .nodes
            .values_mut()
            .filter_map(|s| s.stream.take())
            .collect();
        for stream in streams {
            self.actions.push_back(Action::CloseStream { stream });
        }
        self.actions.push_back(Action::Done);
    }

    fn update_stall(&mut self) {
        let now_stalled = match self.view.as_mut() {
            Some(view) if !self.done && view.epoch == self.delivered_through.next().epoch() => {
                let next = self.delivered_through.next();
                let passed: BTreeMap<NodeId, Lsn> =
                    self.nodes.iter().map(|(n, s)| (*n, s.passed)).collect();
                let down = &self.down;
                let statuses = &self.statuses;
                gap::stalled_on(
                    &mut view.checker,
                    &passed,
                    &|n| down.contains(&n),
                    &|n| statuses.get(&n) == Some(&AuthStatus::Unavailable),
                    next,
                )
                .map(|waiting| (next, waiting))
            }
            _ => None,
        };
        if now_stalled != self.stalled {
            if let Some((at, waiting_for)) = &now_stalled {
                tracing::info!(%at, ?waiting_for, "read stream stalled");
                self.actions.push_back(Action::Stalled {
                    at: *at,
                    waiting_for: waiting_for.clone(),
                });
            }
            self.stalled = now_stalled;
        }
    }

    /// The window in LSNs now: `config.window`, or fewer when records are large enough that
    /// `config.window_bytes` binds first.
    fn window_lsns(&self) -> u64 {
        window_lsns(&self.config, self.record_bytes)
    }

    /// Slides every stream's window once the application (or a proved gap) has moved half a
    /// window; returns to single-copy delivery at a slide once a suspected gap is behind.
    fn maybe_slide_window(&mut self) {
        if self.done {
            return;
        }
        let base = self.consumed_through.max(self.proved_through);
        let window = self.window_lsns();
        let target = Lsn(base.0.saturating_add(window)).min(self.config.until);
        let step = (window / 2).max(1);
        if target <= self.window_until
            || (target.0 - self.window_until.0 < step && target != self.config.until)
        {
            return;
        }
        self.window_until = target;
        let back = self.config.single_copy
            && !self.single_copy_now
            && self
                .back_to_single_copy_after
                .is_some_and(|x| self.delivered_through >= x);
        if back {
            self.back_to_single_copy_after = None;
            self.rewind(true, RewindReason::BackToSingleCopy);
            return;
        }
        let streams: Vec<StreamId> = self.nodes.values().filter_map(|s| s.stream).collect();
        for stream in streams {
            self.actions.push_back(Action::SendWindow {
                stream,
                until: target,
            });
        }
    }
}

/// The window in LSNs for records estimated at `record_bytes` each (see
/// [`INITIAL_RECORD_BYTES`] before the first): at least one LSN, at most `config.window`.
fn window_lsns(config: &ReadStreamConfig, record_bytes: Option<u64>) -> u64 {
    let per_record = record_bytes.unwrap_or(INITIAL_RECORD_BYTES).max(1);
    (config.window_bytes / per_record).clamp(1, config.window.max(1))
}
