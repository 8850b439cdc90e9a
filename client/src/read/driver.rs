//! The task behind a [`Reader`](super::Reader): it owns the pure [`ReadStream`] and is the
//! only one to touch it. Every step is the same: execute the stream's actions (open a node
//! stream, slide a window, close, fetch metadata), hand deliveries to the application while
//! the channel has room, publish the stall state, then wait for the next thing to happen — a
//! pushed message, a failed stream, room in the channel, a tick, a probe or metadata answer,
//! a new cluster state, the application going away or the client shutting down.
//!
//! Node health: a stream that fails marks its node down in the stream (which then decides
//! without it, rewinding if single-copy delivery relied on it) and schedules a probe after an
//! exponential backoff; a probe the node answers brings it back up (`on_node_up`, which reopens
//! its stream). The backoff resets once a stream of the node delivers something. A node the
//! cluster state no longer lists is marked down at once (its stream closed, probed like the
//! others); nodes it marks `data-loss` are not authoritative for the stream. The cluster
//! state is refreshed when a reader starts, so a reader does not begin with a stale one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tally_common::meta::{LogMetadata, StorageState};
use tally_common::quorum::AuthStatus;
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::{LogId, NodeId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument as _;

use super::node_stream::{self, StreamEvent, StreamHandle};
use super::{Counters, Item, ReadError, Stall};
use crate::admin::{self, AdminError};
use crate::client::Shared;
use crate::cluster::ClusterState;
use crate::reader::{Action, Delivery, ReadStream, StreamId};

/// First wait before probing a node whose stream failed; doubles up to [`PROBE_BACKOFF_MAX`]
/// (short: a probe of a dead node costs one connection attempt, and a node that is back
/// should serve again soon).
const PROBE_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pushed messages in flight from the node streams to the driver.
const EVENTS_CAPACITY: usize = 64;

/// How often the stream is ticked: half the grace period (so a grace period lasts at most one
/// and a half of its length), within bounds that keep an idle reader cheap and a short grace
/// precise.
pub(super) fn tick_period(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_millis(5), Duration::from_millis(250))
}

/// The wait before the next probe of a node, given the previous one.
pub(super) fn next_backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => PROBE_BACKOFF_INITIAL,
        Some(d) => (d * 2).min(PROBE_BACKOFF_MAX),
    }
}

/// What the driver's own helper tasks report.
#[derive(Debug)]
enum Internal {
    Probed {
        node: NodeId,
        result: Result<(), String>,
    },
    Metadata(Result<LogMetadata, AdminError>),
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    in_flight: bool,
}

#[derive(Debug)]
struct Driver {
    shared: Arc<Shared>,
    log: LogId,
    machine: ReadStream,
    out: mpsc::Sender<Item>,
    stall: watch::Sender<Option<Stall>>,
    events_tx: mpsc::Sender<StreamEvent>,
    events_rx: mpsc::Receiver<StreamEvent>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    streams: HashMap<StreamId, StreamHandle>,
    /// Nodes marked down in the stream, with their next probe.
    probes: BTreeMap<NodeId, Probe>,
    /// Current backoff per node; reset when the node's stream delivers.
    backoff: BTreeMap<NodeId, Duration>,
    /// Last error per node, for stall reports.
    errors: BTreeMap<NodeId, String>,
    statuses: BTreeMap<NodeId, AuthStatus>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    metadata_in_flight: bool,
    fatal: Option<ReadError>,
    counters: Arc<Counters>,
}

/// Starts the reader's task on the client's task tracker.
pub(super) fn spawn(
    shared: Arc<Shared>,
    log: LogId,
    machine: ReadStream,
    grace: Duration,
    out: mpsc::Sender<Item>,
    stall: watch::Sender<Option<Stall>>,
    counters: Arc<Counters>,
) {
    let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let (internal_tx, internal_rx) = mpsc::channel(EVENTS_CAPACITY);
    let cluster = shared.cluster.subscribe();
    let driver = Driver {
        shared: shared.clone(),
        log,
        machine,
        out,
        stall,
        events_tx,
        events_rx,
        internal_tx,
        internal_rx,
        streams: HashMap::new(),
        probes: BTreeMap::new(),
        backoff: BTreeMap::new(),
        errors: BTreeMap::new(),
        statuses: BTreeMap::new(),
        cluster,
        metadata_in_flight: false,
        fatal: None,
        counters,
    };
    let span = tracing::debug_span!("reader", %log);
    shared
        .tracker
        .spawn(driver.run(tick_period(grace)).instrument(span));
}

impl Driver {
    async fn run(mut self, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.apply_cluster_state();
        loop {
            if !self.step() {
                return;
            }
            if let Some(e) = self.fatal.take() {
                tracing::warn!(error = %e, "read ended");
                let _ = self.out.send(Err(e)).await;
                return;
            }
            if self.machine.is_done() && !self.machine.has_delivery() {
                tracing::debug!("read done");
                return;
            }
            let next_probe = self
                .probes
                .values()
                .filter(|p| !p.in_flight)
                .map(|p| p.at)
                .min();
            let has_delivery = self.machine.has_delivery();
            tokio::select! {
                () = self.shared.shutdown.cancelled() => {
                    let _ = self.out.try_send(Err(ReadError::Shutdown));
                    return;
                }
                () = self.out.closed() => return,
                // Owned: a permit borrowing `out` would outlive the other branches' borrows.
                permit = self.out.clone().reserve_owned(), if has_delivery => {
                    let Ok(permit) = permit else { return };
                    if let Some(d) = self.machine.poll_delivery() {
                        self.count_delivery(&d);
                        permit.send(Ok(d));
                    }
                }
                Some(event) = self.events_rx.recv() => self.on_stream_event(event),
                Some(event) = self.internal_rx.recv() => self.on_internal(event),
                _ = tick.tick() => self.machine.on_tick(std::time::Instant::now()),
                () = sleep_until(next_probe), if next_probe.is_some() => self.start_probes(),
                Ok(()) = self.cluster.changed() => self.apply_cluster_state(),
            }
        }
    }

    /// Executes actions and forwards deliveries while the channel has room; false when the
    /// application is gone.
    fn step(&mut self) -> bool {
        loop {
            self.execute_actions();
            if !self.machine.has_delivery() {
                break;
            }
            match self.out.try_reserve() {
                Ok(permit) => {
                    if let Some(d) = self.machine.poll_delivery() {
                        self.count_delivery(&d);
                        permit.send(Ok(d));
                    }
                }
                Err(TrySendError::Full(())) => break,
                Err(TrySendError::Closed(())) => return false,
            }
        }
        self.publish_stall();
        true
    }

    fn execute_actions(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            let request = action.request(self.log);
            match action {
                Action::OpenStream {
                    stream,
                    window_until,
                    ..
                } => {
                    let Some(request) = request else { continue };
                    let handle = node_stream::start(
                        &self.shared,
                        self.log,
                        stream,
                        request,
                        window_until,
                        self.events_tx.clone(),
                    );
                    self.streams.insert(stream, handle);
                }
                Action::SendWindow { stream, until } => {
                    if let Some(handle) = self.streams.get(&stream) {
                        handle.window.send_replace(until);
                    }
                }
                Action::CloseStream { stream } => {
                    // Dropping the handle makes the stream send `StopRead` and end.
                    self.streams.remove(&stream);
                }
                Action::Rewind {
                    from,
                    single_copy,
                    known_down,
                    reason,
                } => {
                    tracing::debug!(%from, single_copy, ?known_down, ?reason, "rewind");
                }
                Action::FetchMetadata { epoch } => self.fetch_metadata(epoch),
                // Published from `ReadStream::stalled` after every step.
                Action::Stalled { .. } => {}
                Action::Done => {}
            }
        }
    }

    fn count_delivery(&self, d: &Delivery) {
        if let Delivery::Record(r) = d {
            let c = &self.counters;
            c.records_delivered.fetch_add(1, Ordering::Relaxed);
            c.payload_bytes_delivered
                .fetch_add(r.payload.len() as u64, Ordering::Relaxed);
        }
        self.counters
            .rewinds
            .store(self.machine.stats().rewinds, Ordering::Relaxed);
    }

    fn on_stream_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Pushed { stream, message } => {
                if self.streams.contains_key(&stream) {
                    self.backoff.remove(&stream.node);
                    self.errors.remove(&stream.node);
                }
                if let ClientResponse::Records(records) = &message {
                    let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
                    let c = &self.counters;
                    c.records_received
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    c.payload_bytes_received
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                }
                if !self.machine.on_response(stream, message) {
                    tracing::debug!(node = %stream.node, "unexpected message on a read stream");
                }
            }
            StreamEvent::Failed { stream, error } => {
                if self.streams.remove(&stream).is_none() {
                    return; // closed meanwhile: nothing to decide
                }
                let node = stream.node;
                tracing::debug!(%node, %error, "node down for this reader");
                self.errors.insert(node, error);
                self.machine.on_node_down(node);
                self.schedule_probe(node);
            }
        }
    }

    fn on_internal(&mut self, event: Internal) {
        match event {
            Internal::Probed { node, result } => match result {
                Ok(()) => {
                    self.probes.remove(&node);
                    self.machine.on_node_up(node);
                }
                Err(error) => {
                    self.errors.insert(node, error);
                    self.schedule_probe(node);
                }
            },
            Internal::Metadata(result) => {
                self.metadata_in_flight = false;
                match result {
                    Ok(meta) => self.machine.on_epoch_metadata(&meta),
                    Err(AdminError::LogNotFound { log }) => {
                        self.fatal = Some(ReadError::LogNotFound { log });
                    }
                    // The stream asks again on a later tick.
                    Err(e) => tracing::debug!(error = %e, "metadata fetch failed"),
                }
            }
        }
    }

    fn schedule_probe(&mut self, node: NodeId) {
        let wait = next_backoff(self.backoff.get(&node).copied());
        self.backoff.insert(node, wait);
        self.probes.insert(
            node,
            Probe {
                at: Instant::now() + wait,
                in_flight: false,
            },
        );
    }

    /// Probes every node whose backoff ran out: any answer means it is reachable again.
    fn start_probes(&mut self) {
        let now = Instant::now();
        for (node, probe) in self.probes.iter_mut() {
            if probe.in_flight || probe.at > now {
                continue;
            }
            probe.in_flight = true;
            let node = *node;
            let shared = self.shared.clone();
            let tx = self.internal_tx.clone();
            self.shared.tracker.spawn(async move {
                let timeout = shared.config.request_timeout;
                let probe = admin::call(&shared, node, &ClientRequest::GetClusterState, timeout);
                let result = tokio::select! {
                    result = probe => result.map(|_| ()).map_err(|e| e.to_string()),
                    () = helper_cancelled(&shared, &tx) => return,
                };
                let _ = tx.send(Internal::Probed { node, result }).await;
            });
        }
    }

    fn fetch_metadata(&mut self, epoch: tally_common::Epoch) {
        if self.metadata_in_flight {
            return;
        }
        self.metadata_in_flight = true;
        tracing::debug!(%epoch, "fetching log metadata");
        let shared = self.shared.clone();
        let tx = self.internal_tx.clone();
        let log = self.log;
        self.shared.tracker.spawn(async move {
            let result = tokio::select! {
                result = admin::fetch_metadata(&shared, log) => result,
                () = helper_cancelled(&shared, &tx) => return,
            };
            let _ = tx.send(Internal::Metadata(result)).await;
        });
    }

    /// Applies a new cluster state: nodes it says lost their data are not authoritative, and
    /// nodes it no longer lists (their membership lease ended) are down — without waiting for
    /// their streams to time out.
    fn apply_cluster_state(&mut self) {
        let state = self.cluster.borrow_and_update().clone();
        if !state.is_empty() {
            let gone: BTreeSet<NodeId> = self
                .streams
                .keys()
                .map(|s| s.node)
                .filter(|n| state.node(*n).is_none())
                .collect();
            for node in gone {
                self.streams.retain(|s, _| s.node != node);
                tracing::debug!(%node, "node left the cluster membership");
                self.errors
                    .insert(node, "not in the cluster membership".to_owned());
                self.machine.on_node_down(node);
                self.schedule_probe(node);
            }
        }
        for info in state.nodes() {
            let status = match info.state {
                StorageState::DataLoss => AuthStatus::Unavailable,
                _ => AuthStatus::FullyAuthoritative,
            };
            let known = self.statuses.get(&info.id).copied().unwrap_or_default();
            if known != status {
                self.statuses.insert(info.id, status);
                self.machine.on_node_status(info.id, status);
            }
        }
    }

    fn publish_stall(&mut self) {
        let now = self.machine.stalled().map(|(at, waiting)| Stall {
            at,
            waiting_for: waiting.to_vec(),
            errors: waiting
                .iter()
                .filter_map(|n| self.errors.get(n).map(|e| (*n, e.clone())))
                .collect(),
        });
        self.stall.send_if_modified(|current| {
            if *current == now {
                false
            } else {
                *current = now;
                true
            }
        });
    }
}

/// Resolves when a helper task's answer is no longer wanted: the reader's task ended, or
/// the client is shutting down (whose `close` waits for every task).
async fn helper_cancelled(shared: &Shared, tx: &mpsc::Sender<Internal>) {
    tokio::select! {
        () = tx.closed() => {}
        () = shared.shutdown.cancelled() => {}
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_at_half_the_grace_period_within_bounds() {
        assert_eq!(
            tick_period(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(
            tick_period(Duration::from_millis(1)),
            Duration::from_millis(5)
        );
        assert_eq!(
            tick_period(Duration::from_secs(60)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn probe_backoff_doubles_to_its_maximum() {
        let mut d = next_backoff(None);
        assert_eq!(d, PROBE_BACKOFF_INITIAL);
        for _ in 0..20 {
            let next = next_backoff(Some(d));
            assert!(next >= d && next <= PROBE_BACKOFF_MAX);
            d = next;
        }
        assert_eq!(d, PROBE_BACKOFF_MAX);
    }
}
