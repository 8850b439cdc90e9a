//! Requests to one node, batched across logs while the node is busy: STOREs to a storage
//! node ([`Stores`]), grant requests ([`Sequences`]) and completion reports ([`Reports`]) to
//! a sequencer.
//!
//! Coalescing (`append.rs`) batches the appends of *one* log. With many logs each holding a
//! few appends in flight, it finds little to batch, and every batch pays its own STORE to
//! each of its R storage nodes (a QUIC stream, a frame, a server task, a LogsDB request) and
//! its own report. So the client keeps at most [`Kind::SLOTS`] requests of a kind in flight
//! per node; one that finds them all busy waits, and when a request ends everything waiting
//! for that node goes out together as one `StoreMany` / `SequenceMany` / `ReportStoredMany`
//! (bounded in items,
//! in records by one full batch and in bytes by one frame). There is no timer: a
//! request to a node with a free slot goes at once, alone, so an idle or lightly loaded
//! client is not slowed down; batching grows with the load, like group commit.
//!
//! A node that refuses a combined request whole (a version before it: it cannot decode it, so
//! nothing was applied) gets this kind's items one by one, in the form every version serves
//! ([`Kind::alone`]), for [`UNBATCHED_FOR`], without waiting for slots; the items of the
//! refused request are sent again that way at once.
//!
//! Each item keeps its own answer (the node answers every item of a combined request as if
//! it came alone) and its own deadline: an item whose caller gave up is dropped before it is
//! sent, and a caller stops waiting at its deadline.
//!
//! Only for requests of about one cost each: one that could wait long would hold its slot
//! and make the others wait behind it. So the grant requests batched here are
//! `SequenceMany` asks, which the sequencer answers at once from the epochs it runs: a log
//! that needs an activation (an epoch-store round trip, seconds on a loaded store) is answered
//! `NotActive` and asked for alone, outside these slots (`sequence.rs`). (Batching plain
//! `Sequence`s, which activate, made asks for running logs queue behind activations until
//! their request timeout, and the client took a slow-but-live owner's logs over:
//! `ownership::a_slow_owner_is_not_taken_over_and_fresh_logs_activate_once`.) STOREs to one
//! node all cost about one write on the same disk.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_common::limits::{FRAME_OVERHEAD_BYTES, Limits};
use tally_common::transport::{ClientProtocol, Connector, TransportError};
use tally_common::wire::client::{
    ClientRequest, ClientResponse, MAX_REPORTS, MAX_SEQUENCE_ASKS, MAX_STORE_BATCHES,
    SequenceAnswer, SequenceAsk, StoreAnswer, StoredReport,
};
use tally_common::wire::{ErrorCode, StoreBatch};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::appender::RECORD_OVERHEAD_BYTES;

/// A kind of request that can be combined.
pub(crate) trait Kind: Send + Sync + 'static {
    type Item: Send + std::fmt::Debug + 'static;
    /// Requests one client keeps in flight per node before items wait to go out together.
    const SLOTS: usize;
    /// Most items in one combined request.
    const MAX_ITEMS: usize;
    /// The request of one item alone.
    fn single(item: Self::Item) -> ClientRequest;
    /// The request of several.
    fn many(items: Vec<Self::Item>) -> ClientRequest;
    /// The answer to `many` of `n` items as the `n` answers each item alone would have had,
    /// in order; `Err` with the answer itself when it is not one (an error for the request).
    /// (The answer to `single` goes through it too where `single` is itself combined.)
    fn split(answer: ClientResponse, n: usize) -> Result<Vec<ClientResponse>, ClientResponse>;
    /// Records and bytes the item adds to a combined request.
    fn size(item: &Self::Item) -> (usize, usize);
    /// Whether `single` is itself a combined request (of one item), which a version before
    /// combined requests refuses like any other.
    const SINGLE_IS_COMBINED: bool = false;
    /// The request of one item in the form every version serves.
    fn alone(item: Self::Item) -> ClientRequest {
        Self::single(item)
    }
    /// The items of a request made by `single` or `many`, back (to send them again alone).
    fn items(req: ClientRequest) -> Vec<Self::Item>;
}

/// STORE batches to a storage node. A few in flight, so a node's writer threads and group
/// commit stay busy; more only makes the requests smaller.
#[derive(Debug)]
pub(crate) struct Stores;

impl Kind for Stores {
    type Item = StoreBatch;
    const SLOTS: usize = 4;
    const MAX_ITEMS: usize = MAX_STORE_BATCHES;
    fn single(item: StoreBatch) -> ClientRequest {
        ClientRequest::Store(item)
    }
    fn many(items: Vec<StoreBatch>) -> ClientRequest {
        ClientRequest::StoreMany(items)
    }
    fn split(answer: ClientResponse, n: usize) -> Result<Vec<ClientResponse>, ClientResponse> {
        match answer {
            ClientResponse::StoreResults(answers) if answers.len() == n => Ok(answers
                .into_iter()
                .map(|a| match a {
                    StoreAnswer::Status(s) => ClientResponse::StoreResult(s),
                    StoreAnswer::Error(e) => ClientResponse::Error(e),
                })
                .collect()),
            other => Err(other),
        }
    }
    fn size(item: &StoreBatch) -> (usize, usize) {
        let n = item.records.len();
        (n, item.payload_bytes() + (n + 1) * RECORD_OVERHEAD_BYTES)
    }
    fn items(req: ClientRequest) -> Vec<StoreBatch> {
        match req {
            ClientRequest::Store(batch) => vec![batch],
            ClientRequest::StoreMany(batches) => batches,
            _ => Vec::new(),
        }
    }
}

/// Completion reports (`ReportStored`) to a sequencer, sent in the background after an
/// append returned. Two in flight: a report advances the sequencer's release point, so it
/// should not wait long, but most of them can share a request under load.
#[derive(Debug)]
pub(crate) struct Reports;

impl Kind for Reports {
    type Item = StoredReport;
    const SLOTS: usize = 2;
    const MAX_ITEMS: usize = MAX_REPORTS;
    fn single(r: StoredReport) -> ClientRequest {
        ClientRequest::ReportStored {
            log: r.log,
            first: r.first,
            count: r.count,
            copyset: r.copyset,
            wave: r.wave,
        }
    }
    fn many(items: Vec<StoredReport>) -> ClientRequest {
        ClientRequest::ReportStoredMany(items)
    }
    fn split(answer: ClientResponse, n: usize) -> Result<Vec<ClientResponse>, ClientResponse> {
        match answer {
            // One `Ack` for all: reports are advisory.
            ClientResponse::Ack => Ok(vec![ClientResponse::Ack; n]),
            other => Err(other),
        }
    }
    fn size(_: &StoredReport) -> (usize, usize) {
        (0, 64)
    }
    fn items(req: ClientRequest) -> Vec<StoredReport> {
        match req {
            ClientRequest::ReportStored {
                log,
                first,
                count,
                copyset,
                wave,
            } => vec![StoredReport {
                log,
                first,
                count,
                copyset,
                wave,
            }],
            ClientRequest::ReportStoredMany(reports) => reports,
            _ => Vec::new(),
        }
    }
}

/// Grant requests to a sequencer (`SequenceMany`, one ask alone included, so every ask sent
/// through here is answered without an activation). Each item's answer is what a `Sequence`
/// would have had, but `NotActive`, which stays a one-ask `Sequenced` answer. Two in flight:
/// an append waits for its grant, and the sequencer answers these at once.
#[derive(Debug)]
pub(crate) struct Sequences;

impl Kind for Sequences {
    type Item = SequenceAsk;
    const SLOTS: usize = 2;
    const MAX_ITEMS: usize = MAX_SEQUENCE_ASKS;
    fn single(ask: SequenceAsk) -> ClientRequest {
        ClientRequest::SequenceMany(vec![ask])
    }
    fn many(items: Vec<SequenceAsk>) -> ClientRequest {
        ClientRequest::SequenceMany(items)
    }
    fn split(answer: ClientResponse, n: usize) -> Result<Vec<ClientResponse>, ClientResponse> {
        match answer {
            ClientResponse::Sequenced(answers) if answers.len() == n => Ok(answers
                .into_iter()
                .map(|a| match a {
                    SequenceAnswer::NotActive => ClientResponse::Sequenced(vec![a]),
                    a => a.into(),
                })
                .collect()),
            other => Err(other),
        }
    }
    fn size(_: &SequenceAsk) -> (usize, usize) {
        (0, 32)
    }
    const SINGLE_IS_COMBINED: bool = true;
    /// A plain `Sequence`, answered like one (it may activate the log).
    fn alone(ask: SequenceAsk) -> ClientRequest {
        ClientRequest::Sequence {
            log: ask.log,
            count: ask.count,
            no_redirect: false,
        }
    }
    fn items(req: ClientRequest) -> Vec<SequenceAsk> {
        match req {
            ClientRequest::SequenceMany(asks) => asks,
            _ => Vec::new(),
        }
    }
}

/// How long a node that refused a combined request gets its items one by one before a
/// combined request is tried again (it may have been upgraded meanwhile).
const UNBATCHED_FOR: Duration = Duration::from_secs(60);

/// What one item's caller gets: the node's answer as if the item had gone alone.
type Reply = Result<ClientResponse, TransportError>;

#[derive(Debug)]
struct Waiting<T> {
    item: T,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// One node's requests in flight and the items waiting for a slot.
#[derive(Debug)]
struct NodeQueue<T> {
    in_flight: usize,
    waiting: VecDeque<Waiting<T>>,
    /// The node refused a combined request: until then, items go alone (see the module
    /// documentation).
    unbatched_until: Option<Instant>,
}

impl<T> Default for NodeQueue<T> {
    fn default() -> Self {
        NodeQueue {
            in_flight: 0,
            waiting: VecDeque::new(),
            unbatched_until: None,
        }
    }
}

impl<T> NodeQueue<T> {
    fn unbatched(&mut self, now: Instant) -> bool {
        match self.unbatched_until {
            Some(until) if until > now => true,
            Some(_) => {
                self.unbatched_until = None;
                false
            }
            None => false,
        }
    }
}

/// Where an item goes from `Mux::send`.
enum Turn<T> {
    /// A slot is ours: send it now.
    Slot(T),
    /// The node takes no combined requests: send it alone, without a slot.
    Alone(T),
    /// Wait for its answer.
    Wait(oneshot::Receiver<Reply>),
}

/// Whether `answer` refuses the request whole: a `BadRequest` for the request, not per item
/// (what a version that cannot decode the request answers; nothing of it was applied).
fn refused(answer: &Reply) -> bool {
    matches!(answer,
        Ok(ClientResponse::Error(e)) | Err(TransportError::Remote(e))
            if e.code == ErrorCode::BadRequest)
}

/// The requests of kind `K` of one client, per node. See the module documentation.
#[derive(Debug)]
pub(crate) struct Mux<K: Kind> {
    connector: Arc<Connector<ClientProtocol>>,
    tracker: TaskTracker,
    /// Calls fail with `PeerSilent` when the node acknowledges nothing for this long
    /// (`Connector::call_watched`).
    silence: Option<Duration>,
    nodes: Mutex<HashMap<SocketAddr, NodeQueue<K::Item>>>,
    _kind: PhantomData<K>,
}

/// Frees a slot of `addr` when dropped (the call ended, or its caller gave up), handing it to
/// the items waiting, if any.
struct Slot<'a, K: Kind> {
    mux: &'a Arc<Mux<K>>,
    addr: SocketAddr,
}

impl<K: Kind> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        self.mux.release(self.addr);
    }
}

impl<K: Kind> Mux<K> {
    pub(crate) fn new(connector: Arc<Connector<ClientProtocol>>, tracker: TaskTracker) -> Self {
        Self::watched(connector, tracker, None)
    }

    /// A mux whose calls fail with `PeerSilent` after `silence` without an acknowledgement.
    pub(crate) fn watched(
        connector: Arc<Connector<ClientProtocol>>,
        tracker: TaskTracker,
        silence: Option<Duration>,
    ) -> Self {
        Mux {
            connector,
            tracker,
            silence,
            nodes: Mutex::new(HashMap::new()),
            _kind: PhantomData,
        }
    }

    /// Items waiting for a free slot, over every node (diagnostics and tests).
    pub(crate) fn waiting(&self) -> usize {
        self.nodes().values().map(|q| q.waiting.len()).sum()
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, NodeQueue<K::Item>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `item` to the node at `addr` within `timeout`: alone if the node has a free
    /// slot, else with the other items waiting for it. The answer is what the request of
    /// `item` alone would have been answered.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        item: K::Item,
        timeout: Duration,
    ) -> Reply {
        let now = Instant::now();
        let deadline = now + timeout;
        let turn = {
            let mut nodes = self.nodes();
            let queue = nodes.entry(addr).or_default();
            if queue.unbatched(now) {
                Turn::Alone(item)
            } else if queue.in_flight < K::SLOTS {
                queue.in_flight += 1;
                Turn::Slot(item)
            } else {
                let (reply, rx) = oneshot::channel();
                queue.waiting.push_back(Waiting {
                    item,
                    deadline,
                    reply,
                });
                Turn::Wait(rx)
            }
        };
        match turn {
            Turn::Slot(item) => {
                let _slot = Slot { mux: self, addr };
                self.send_one(addr, item, timeout).await
            }
            Turn::Alone(item) => self.call(addr, &K::alone(item), timeout).await,
            Turn::Wait(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(reply)) => reply,
                // Dropped unsent at its deadline (or the runtime is going away).
                Ok(Err(_)) | Err(_) => Err(TransportError::Timeout(timeout)),
            },
        }
    }

    /// Sends `item` alone on a slot already held.
    async fn send_one(&self, addr: SocketAddr, item: K::Item, timeout: Duration) -> Reply {
        let req = K::single(item);
        let answer = self.call(addr, &req, timeout).await;
        if K::SINGLE_IS_COMBINED {
            if refused(&answer) {
                let mut answers = self.resend_alone(addr, req, timeout).await;
                return answers.pop().unwrap_or(answer);
            }
            if let Ok(combined) = answer {
                // `split` answers `Ok` with exactly one answer for one item.
                let mut one = K::split(combined, 1).unwrap_or_else(|other| vec![other]);
                return Ok(one.swap_remove(0));
            }
        }
        if let Err(e) = &answer {
            self.fail_waiting(addr, e);
        }
        answer
    }

    /// The node refused `req`, a combined request, whole: its items go alone from now on
    /// (for [`UNBATCHED_FOR`]), these ones at once. Their answers, in order.
    async fn resend_alone(
        &self,
        addr: SocketAddr,
        req: ClientRequest,
        timeout: Duration,
    ) -> Vec<Reply> {
        tracing::info!(%addr, "node refused a combined request; sending its items singly");
        if let Some(queue) = self.nodes().get_mut(&addr) {
            queue.unbatched_until = Some(Instant::now() + UNBATCHED_FOR);
        }
        let requests: Vec<ClientRequest> = K::items(req).into_iter().map(K::alone).collect();
        let sends = requests.iter().map(|req| self.call(addr, req, timeout));
        futures_util::future::join_all(sends).await
    }

    async fn call(&self, addr: SocketAddr, req: &ClientRequest, timeout: Duration) -> Reply {
        match self.silence {
            Some(silence) => {
                self.connector
                    .call_watched(addr, req, timeout, silence)
                    .await
            }
            None => self.connector.call(addr, req, timeout).await,
        }
    }

    /// The node at `addr` is unreachable or silent (`e`): the items waiting for it fail the
    /// same way now instead of each waiting for its own turn to find out (the appender moves
    /// them to other nodes after one failed request, not one per queued request).
    fn fail_waiting(&self, addr: SocketAddr, e: &TransportError) {
        if !matches!(
            e,
            TransportError::Connect { .. } | TransportError::PeerSilent(_)
        ) {
            return;
        }
        let waiting = match self.nodes().get_mut(&addr) {
            Some(queue) => std::mem::take(&mut queue.waiting),
            None => return,
        };
        for w in waiting {
            let _ = w.reply.send(Err(same_error(e)));
        }
    }

    /// A request to `addr` ended: hand its slot to the items waiting (sent together, by a
    /// task), or free it.
    fn release(self: &Arc<Self>, addr: SocketAddr) {
        let group = {
            let mut nodes = self.nodes();
            let Some(queue) = nodes.get_mut(&addr) else {
                return;
            };
            let group = take_group::<K>(&mut queue.waiting, self.connector.limits());
            if group.is_empty() {
                queue.in_flight = queue.in_flight.saturating_sub(1);
                if queue.in_flight == 0
                    && queue.waiting.is_empty()
                    && !queue.unbatched(Instant::now())
                {
                    nodes.remove(&addr);
                }
                return;
            }
            group
        };
        let mux = self.clone();
        self.tracker.spawn(async move {
            let _slot = Slot { mux: &mux, addr };
            mux.send_group(addr, group).await;
        });
    }

    /// Sends `group` as one request and hands each item its answer.
    async fn send_group(&self, addr: SocketAddr, group: Vec<Waiting<K::Item>>) {
        let now = Instant::now();
        let until = group.iter().map(|w| w.deadline).max().unwrap_or(now);
        let timeout = until
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        let (items, replies): (Vec<K::Item>, Vec<oneshot::Sender<Reply>>) =
            group.into_iter().map(|w| (w.item, w.reply)).unzip();
        if items.len() == 1 {
            if let (Some(item), Some(reply)) =
                (items.into_iter().next(), replies.into_iter().next())
            {
                let _ = reply.send(self.send_one(addr, item, timeout).await);
            }
            return;
        }
        let sent = items.len();
        let req = K::many(items);
        let answer = self.call(addr, &req, timeout).await;
        if refused(&answer) {
            let answers = self.resend_alone(addr, req, timeout).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            return;
        }
        match answer {
            Ok(answer) => match K::split(answer, sent) {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(other) => {
                    if !matches!(other, ClientResponse::Error(_)) {
                        tracing::warn!(%addr, answer = ?other, sent, "unexpected answer to a combined request");
                    }
                    for reply in replies {
                        let _ = reply.send(Ok(other.clone()));
                    }
                }
            },
            Err(e) => {
                self.fail_waiting(addr, &e);
                for reply in replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

/// The items to send together from the front of `waiting`: skipping those whose caller gave
/// up, at most `K::MAX_ITEMS`, the records of one full batch and one frame (the first item
/// always: it was valid alone).
fn take_group<K: Kind>(
    waiting: &mut VecDeque<Waiting<K::Item>>,
    limits: &Limits,
) -> Vec<Waiting<K::Item>> {
    let max_records = limits.max_records_per_batch as usize;
    let max_bytes = limits.max_frame_bytes.saturating_sub(FRAME_OVERHEAD_BYTES);
    let (mut records, mut bytes) = (0usize, 0usize);
    let mut group = Vec::new();
    let now = Instant::now();
    while let Some(next) = waiting.front() {
        if next.reply.is_closed() || next.deadline <= now {
            waiting.pop_front();
            continue;
        }
        let (n, b) = K::size(&next.item);
        if !group.is_empty()
            && (group.len() == K::MAX_ITEMS || records + n > max_records || bytes + b > max_bytes)
        {
            break;
        }
        records += n;
        bytes += b;
        group.extend(waiting.pop_front());
    }
    group
}

/// An equivalent of `e` for another item of the same request: the same kind where the
/// caller tells kinds apart (timeouts, silence, connecting, remote errors), else a lost
/// connection, which is at least as cautious ("may have been applied").
fn same_error(e: &TransportError) -> TransportError {
    match e {
        TransportError::Connect { addr, detail } => TransportError::Connect {
            addr: *addr,
            detail: detail.clone(),
        },
        TransportError::Timeout(d) => TransportError::Timeout(*d),
        TransportError::PeerSilent(d) => TransportError::PeerSilent(*d),
        TransportError::Remote(r) => TransportError::Remote(r.clone()),
        TransportError::NoAnswer => TransportError::NoAnswer,
        TransportError::Shutdown => TransportError::Shutdown,
        other => TransportError::ConnectionLost(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::limits::Limits;
    use tally_common::wire::RemoteError;
    use tally_common::wire::StoreRecord;
    use tally_common::{Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags};

    fn batch(log: u64, records: u32, payload: usize) -> StoreBatch {
        StoreBatch {
            log: LogId(log),
            copyset: Copyset::new(vec![NodeId(1)]).expect("copyset"),
            wave_or_seal: 1,
            flags: RecordFlags::NONE,
            durability: Durability::Durable,
            lng: Esn(0),
            records: (1..=records)
                .map(|i| StoreRecord {
                    lsn: Lsn::new(Epoch(1), Esn(i)),
                    timestamp_ms: 0,
                    payload_crc32: 0,
                    payload: vec![0; payload].into(),
                })
                .collect(),
        }
    }

    fn waiting(b: StoreBatch) -> (Waiting<StoreBatch>, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let w = Waiting {
            item: b,
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        };
        (w, rx)
    }

    #[tokio::test]
    async fn a_group_is_bounded_by_records_and_bytes_and_skips_abandoned_batches() {
        let limits = Limits {
            max_records_per_batch: 10,
            // Room for 100 KiB of batches besides the frame's own overhead.
            max_frame_bytes: FRAME_OVERHEAD_BYTES + 100 * 1024,
            ..Limits::default()
        };
        let mut queue = VecDeque::new();
        let mut keep = Vec::new();
        // An abandoned batch (its caller dropped the receiver) is skipped.
        let (w, rx) = waiting(batch(1, 4, 10));
        drop(rx);
        queue.push_back(w);
        for log in 2..=5 {
            let (w, rx) = waiting(batch(log, 4, 10));
            queue.push_back(w);
            keep.push(rx);
        }
        // 4 + 4 records fit in 10, a third batch does not.
        let group = take_group::<Stores>(&mut queue, &limits);
        let logs: Vec<u64> = group.iter().map(|w| w.item.log.0).collect();
        assert_eq!(logs, [2, 3]);
        assert_eq!(queue.len(), 2);
        // Bytes: two batches of 60 KiB do not fit in one frame's room; each goes alone.
        let mut queue = VecDeque::new();
        let (w, _a) = waiting(batch(7, 1, 60 * 1024));
        queue.push_back(w);
        let (w, _b) = waiting(batch(8, 1, 60 * 1024));
        queue.push_back(w);
        assert_eq!(take_group::<Stores>(&mut queue, &limits).len(), 1);
        assert_eq!(take_group::<Stores>(&mut queue, &limits).len(), 1);
        assert!(take_group::<Stores>(&mut queue, &limits).is_empty());
    }

    /// What a refused request is sent again as: its own items, in order.
    #[test]
    fn the_items_of_a_request_come_back_as_sent() {
        fn round_trip<K: Kind>(items: Vec<K::Item>)
        where
            K::Item: Clone + PartialEq,
        {
            assert!(K::items(K::many(items.clone())) == items);
            for item in items {
                assert!(K::items(K::single(item.clone())) == vec![item]);
            }
        }
        round_trip::<Stores>(vec![batch(1, 2, 10), batch(2, 1, 5)]);
        let report = |log| StoredReport {
            log: LogId(log),
            first: Lsn::new(Epoch(1), Esn(1)),
            count: 2,
            copyset: Copyset::new(vec![NodeId(1)]).expect("copyset"),
            wave: 1,
        };
        round_trip::<Reports>(vec![report(1), report(2)]);
        let ask = |log| SequenceAsk {
            log: LogId(log),
            count: 3,
        };
        round_trip::<Sequences>(vec![ask(1), ask(2)]);
        // A grant asked alone is a plain `Sequence`, which every version serves.
        assert!(matches!(
            Sequences::alone(ask(4)),
            ClientRequest::Sequence {
                log: LogId(4),
                count: 3,
                no_redirect: false
            }
        ));
    }

    #[test]
    fn only_a_bad_request_for_the_whole_request_is_a_refusal() {
        let bad = RemoteError::new(ErrorCode::BadRequest, "unknown variant");
        assert!(refused(&Ok(ClientResponse::Error(bad.clone()))));
        assert!(refused(&Err(TransportError::Remote(bad))));
        let busy = RemoteError::new(ErrorCode::Unavailable, "later");
        assert!(!refused(&Ok(ClientResponse::Error(busy))));
        assert!(!refused(&Ok(ClientResponse::Ack)));
        assert!(!refused(&Err(TransportError::NoAnswer)));
    }

    #[test]
    fn a_shared_error_keeps_what_the_caller_decides_on() {
        let cases = [
            TransportError::Timeout(Duration::from_secs(1)),
            TransportError::PeerSilent(Duration::from_secs(1)),
            TransportError::NoAnswer,
            TransportError::ConnectionLost("x".into()),
            TransportError::FrameTooLarge { len: 1, max: 0 },
        ];
        for e in cases {
            let copy = same_error(&e);
            assert!(
                !e.may_have_been_applied() || copy.may_have_been_applied(),
                "{e}"
            );
            assert_eq!(
                std::mem::discriminant(&copy) == std::mem::discriminant(&e),
                !matches!(e, TransportError::FrameTooLarge { .. }),
                "{e}"
            );
        }
    }
}
