//! Driving appends over the network (DESIGN §6). An append is checked (nothing is sent for
//! payloads over the limits), then queued behind the appends of its log that wait
//! (`queue`: [`LogQueue`]). Concurrent appends to one log are coalesced: while one batch of
//! the log waits for its grant, the appends arriving meanwhile gather, and when the grant
//! comes back they go out together as the next batch — one `Sequence{count = n}`, one STORE
//! per copyset member, one `ReportStored` — and each caller gets its own LSN(s) from the
//! grant. An append to an idle log goes at once, alone; nothing waits on a timer. At most
//! `coalesce.max_batches_in_flight` batches of a log are between grant and outcome, so the
//! next one is sequenced while earlier ones write their copies.
//!
//! Each batch runs on its own task (it outlives any one caller) — except a batch that is one
//! caller's append alone, which runs on that caller's task: get a grant (`sequence`),
//! then run the pure [`Appender`]: its STOREs go out concurrently, each answer, store timeout
//! or transport failure comes back as an [`Event`], and a `Tick` is delivered when the
//! appender asks ([`Appender::wake_at`]: a waiting wave, the append timeout), so the batch
//! ends even if nothing answers. Waves, AMENDs and graylisting are per batch. Every caller of
//! a failed batch gets the batch's error, which says exactly whether it may have happened. On
//! completion the LSNs are returned at once and `ReportStored` goes to the sequencer in the
//! background: the application does not wait for it, and a lost report is settled by the
//! sequencer's abandoned-LSN path. A batch refused with `Preempted` sends `ReportPreempted`
//! likewise, so the sequencer leaves the sealed epoch before the next batch asks.
//!
//! Order: grants of a log are asked for one at a time, in queue order, and a unit takes its
//! place in the queue on the first poll of `append`, so appends a task issues one after the
//! other get increasing LSNs (within an epoch; a later epoch's LSNs are higher anyway).
//!
//! Preemption: a batch whose epoch was sealed (another sequencer took the log) before any
//! of its copies was stored — every payload store refused or certainly not applied, which
//! the appender waits to know — was certainly not appended, so it goes again in a new grant
//! (a few times, within its deadline) instead of failing. Its LSNs then come from the newer
//! epoch: a later batch of the same log whose copies were all stored before the seal keeps
//! its lower LSN. A batch that may have stored a copy fails with
//! `Preempted { may_be_stored: true }` (never retried: a duplicate could result).
//!
//! Window: a coalesced batch may ask for more LSNs than the log's sequencer window holds
//! (`SeqNoBufs` that no wait can cure). A batch of several appends that meets a full window
//! goes back to the front of the queue and the log's batches are halved until grants come
//! again (`queue`); a single append waits for room with backoff.
//!
//! Deadlines: an append's `append_timeout` runs from the call. A caller whose deadline passes
//! while it is still queued withdraws (`TimedOut`: nothing was sent); a batch runs under the
//! earliest deadline of its callers. A caller that drops its `append` future while queued
//! withdraws too; once its batch is launched the batch goes on without it, except a batch of
//! that append alone, which ends with it (as an append always did: it may or may not have
//! happened).

mod queue;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tally_common::transport::TransportError;
use tally_common::wire::client::{ClientRequest, ClientResponse, Grant, StoredReport};
use tally_common::wire::{StoreBatch, StoreStatus};
use tally_common::{Copyset, Epoch, LogId, Lsn, NodeId};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

use self::queue::{Batch, Launch, LogQueue, Unit};
use crate::appender::{
    Action, AppendPolicy, Appender, Event, RECORD_OVERHEAD_BYTES, check_payloads,
};
use crate::client::Shared;
use crate::config::CoalesceConfig;
use crate::error::{AppendError, IndeterminateCause};
use crate::sequence::NoGrant;

/// How a queued append is answered: the LSNs of its payloads, or its batch's error.
type Reply = oneshot::Sender<Result<RangeInclusive<Lsn>, AppendError>>;

/// The append queues of every log with appends queued or in flight.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    logs: Mutex<HashMap<LogId, LogQueue<Reply>>>,
    next_id: AtomicU64,
}

impl Queues {
    /// Locked for one synchronous decision, never across an await.
    fn lock(&self) -> MutexGuard<'_, HashMap<LogId, LogQueue<Reply>>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to the queue of `log` and takes from it what may go now, in one
    /// critical section.
    fn update(
        &self,
        log: LogId,
        config: &CoalesceConfig,
        change: impl FnOnce(&mut LogQueue<Reply>),
    ) -> Launch<Reply> {
        let mut logs = self.lock();
        let queue = logs.entry(log).or_default();
        change(queue);
        let launch = queue.launch(config, Instant::now().into_std());
        if queue.is_idle() {
            logs.remove(&log);
        }
        launch
    }

    /// Takes unit `id` of `log` out of its queue if it is still there (not yet launched).
    fn withdraw(&self, log: LogId, id: u64) -> bool {
        let mut logs = self.lock();
        let Some(queue) = logs.get_mut(&log) else {
            return false;
        };
        let found = queue.withdraw(id).is_some();
        if queue.is_idle() {
            logs.remove(&log);
        }
        found
    }
}

/// Appends `payloads` to `log` as one unit: consecutive LSNs, all stored or all failed
/// together, possibly in one batch with other callers' appends. See the module documentation.
pub(crate) async fn append(
    shared: &Arc<Shared>,
    log: LogId,
    payloads: Vec<Vec<u8>>,
) -> Result<RangeInclusive<Lsn>, AppendError> {
    enqueue(shared, log, payloads)?.outcome().await
}

/// Checks `payloads` and queues them as one unit of `log` now, so units queued one after the
/// other are granted in that order; the outcome comes through the returned [`Pending`].
pub(crate) fn enqueue(
    shared: &Arc<Shared>,
    log: LogId,
    payloads: Vec<Vec<u8>>,
) -> Result<Pending, AppendError> {
    if shared.shutdown.is_cancelled() {
        return Err(AppendError::Shutdown);
    }
    // Before the grant: LSNs granted to a batch that cannot be sent would be abandoned.
    check_payloads(&payloads, &shared.config.transport.limits)?;
    let deadline = Instant::now() + shared.config.append.append_timeout;
    let (reply, outcome) = oneshot::channel();
    let id = shared.queues.next_id.fetch_add(1, Ordering::Relaxed);
    let bytes = payloads
        .iter()
        .map(|p| p.len() + RECORD_OVERHEAD_BYTES)
        .sum();
    let unit = Unit {
        id,
        payloads,
        bytes,
        deadline: deadline.into_std(),
        waiter: reply,
    };
    let mut launch = shared
        .queues
        .update(log, &shared.config.coalesce, |q| q.push(unit));
    // Alone in its batch (the log was idle): it runs on the caller's task, no hop to another.
    let inline = match &launch.batch {
        Some(b) if b.units.len() == 1 && b.units[0].id == id => launch.batch.take(),
        _ => None,
    };
    start(shared, log, launch);
    Ok(Pending {
        shared: shared.clone(),
        log,
        id,
        deadline,
        outcome,
        armed: true,
        inline,
    })
}

/// One queued unit's outcome to come. Dropped before its batch is launched, it withdraws the
/// unit (nothing of it is sent); afterwards the batch goes on without it, unless the batch is
/// the unit alone running on the caller's task (`inline`), which then ends with it.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    log: LogId,
    id: u64,
    deadline: Instant,
    outcome: oneshot::Receiver<Result<RangeInclusive<Lsn>, AppendError>>,
    /// Still to withdraw on drop.
    armed: bool,
    /// The unit's batch when it went alone, to run in [`Pending::outcome`].
    inline: Option<Batch<Reply>>,
}

impl Pending {
    /// The LSNs of the unit, or its batch's error; `TimedOut` if its deadline passes while
    /// it is still queued.
    pub(crate) async fn outcome(mut self) -> Result<RangeInclusive<Lsn>, AppendError> {
        if let Some(batch) = self.inline.take() {
            self.armed = false;
            // Answers through `outcome` like a batch on its own task; dropped midway, its
            // stages release the log's queue.
            run_batch(self.shared.clone(), self.log, batch).await;
        }
        let answer = match tokio::time::timeout_at(self.deadline, &mut self.outcome).await {
            Ok(answer) => answer,
            Err(_elapsed) => {
                self.armed = false;
                if self.shared.queues.withdraw(self.log, self.id) {
                    return Err(AppendError::TimedOut);
                }
                // Launched: its batch runs under a deadline no later than this one.
                (&mut self.outcome).await
            }
        };
        self.armed = false;
        // Every batch answers its callers; a dropped reply means its task died mid-append.
        answer.unwrap_or(Err(AppendError::Indeterminate {
            cause: IndeterminateCause::TimedOut,
        }))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.inline.take().is_some() {
            // Launched but never run: nothing was sent; the log's next batch may go.
            let config = &self.shared.config.coalesce;
            let launch = self.shared.queues.update(self.log, config, |q| {
                q.granted(false, config);
                q.finished();
            });
            start(&self.shared, self.log, launch);
            return;
        }
        if self.armed {
            self.shared.queues.withdraw(self.log, self.id);
        }
    }
}

/// Does what a queue decided: answers its expired units and starts its batch.
fn start(shared: &Arc<Shared>, log: LogId, launch: Launch<Reply>) {
    for unit in launch.expired {
        let _ = unit.waiter.send(Err(AppendError::TimedOut));
    }
    if let Some(batch) = launch.batch {
        tracing::trace!(%log, units = batch.units.len(), records = batch.records, "launching append batch");
        shared.tracker.spawn(run_batch(shared.clone(), log, batch));
    }
}

/// Marks the stages of a launched batch in its log's queue, and launches what may follow:
/// `granted` once its grant request has an answer, `finished` (on drop, so also if the
/// batch's task ends early) once it has its outcome; or `requeue` instead of both.
struct Stages {
    shared: Arc<Shared>,
    log: LogId,
    granted: bool,
    /// Requeued: the queue no longer counts the batch.
    gone: bool,
}

impl Stages {
    fn granted(&mut self, fitted: bool) {
        if std::mem::replace(&mut self.granted, true) {
            return;
        }
        let config = &self.shared.config.coalesce;
        let launch = self
            .shared
            .queues
            .update(self.log, config, |q| q.granted(fitted, config));
        start(&self.shared, self.log, launch);
    }

    /// The window had no room for the batch: its units wait again, first in line.
    fn requeue(&mut self, units: Vec<Unit<Reply>>) {
        self.gone = true;
        let launch = self
            .shared
            .queues
            .update(self.log, &self.shared.config.coalesce, |q| q.requeue(units));
        start(&self.shared, self.log, launch);
    }
}

impl Drop for Stages {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
        let granted = self.granted;
        let config = &self.shared.config.coalesce;
        let launch = self.shared.queues.update(self.log, config, |q| {
            if !granted {
                q.granted(false, config);
            }
            q.finished();
        });
        start(&self.shared, self.log, launch);
    }
}

/// Sequences and writes one batch, then answers each of its callers.
async fn run_batch(shared: Arc<Shared>, log: LogId, batch: Batch<Reply>) {
    let mut stages = Stages {
        shared: shared.clone(),
        log,
        granted: false,
        gone: false,
    };
    let deadline = Instant::from_std(batch.deadline);
    let count = u32::try_from(batch.records).expect("within the batch limit");
    let grant = if shared.shutdown.is_cancelled() {
        Err(AppendError::Shutdown)
    } else {
        // A batch of several appends may be too big for the log's window; one append (or
        // one `append_batch`) waits for room as it always did.
        let splittable = batch.units.len() > 1;
        match crate::sequence::request_grant(&shared, log, count, deadline, splittable).await {
            Ok(grant) => Ok(grant),
            Err(NoGrant::WindowFull) => {
                tracing::debug!(%log, count, "window full for a coalesced batch; requeued");
                stages.requeue(batch.units);
                return;
            }
            Err(NoGrant::Failed(e)) => Err(e),
        }
    };
    // The next batch of the log may ask for its grant while this one writes its copies.
    stages.granted(grant.is_ok());
    let mut payloads = Vec::with_capacity(batch.records);
    let mut replies = Vec::with_capacity(batch.units.len());
    for unit in batch.units {
        replies.push((unit.waiter, unit.payloads.len() as u64));
        payloads.extend(unit.payloads);
    }
    let mut written = match grant {
        Ok(grant) => write_copies(&shared, grant, payloads, deadline).await,
        Err(e) => Written::Done(Err(e)),
    };
    let mut retries = 0;
    let outcome = loop {
        let (payloads, err) = match written {
            Written::Done(outcome) => break outcome,
            Written::Again(payloads, err) => (payloads, err),
        };
        if retries == MAX_PREEMPTED_RETRIES
            || Instant::now() >= deadline
            || shared.shutdown.is_cancelled()
        {
            break Err(err);
        }
        retries += 1;
        tracing::debug!(%log, count, error = %err, retries, "no copy stored before a seal; appending again in a new grant");
        written = match crate::sequence::request_grant(&shared, log, count, deadline, false).await {
            Ok(grant) => write_copies(&shared, grant, payloads, deadline).await,
            Err(NoGrant::Failed(e)) => Written::Done(Err(e)),
            Err(NoGrant::WindowFull) => unreachable!("only asked for with window_full_returns"),
        };
    };
    let mut offset = 0;
    for (reply, count) in replies {
        let answer = match &outcome {
            Ok(lsns) => {
                let first = lsns.start().0 + offset;
                Ok(Lsn(first)..=Lsn(first + count - 1))
            }
            Err(e) => Err(e.clone()),
        };
        offset += count;
        let _ = reply.send(answer);
    }
    drop(stages);
}

/// How often one batch is appended again after its epoch was sealed before any of its copies
/// was stored (each time in a new grant, within the batch's deadline).
const MAX_PREEMPTED_RETRIES: usize = 3;

/// How the writing of one grant ended.
enum Written {
    Done(Result<RangeInclusive<Lsn>, AppendError>),
    /// Refused by a seal with certainly no copy stored (`Preempted { may_be_stored: false }`):
    /// nothing of the batch was appended, so it may go again in a new grant; the payloads
    /// are handed back for that.
    Again(Vec<Vec<u8>>, AppendError),
}

/// Runs the appender of `grant` until it completes or fails.
async fn write_copies(
    shared: &Arc<Shared>,
    grant: Grant,
    payloads: Vec<Vec<u8>>,
    deadline: Instant,
) -> Written {
    match write_grant(shared, grant, payloads, deadline).await {
        Ok(lsns) => Written::Done(Ok(lsns)),
        Err((err, Some(appender))) if err.certainly_not_appended() => {
            Written::Again(appender.into_payloads(), err)
        }
        Err((err, _)) => Written::Done(Err(err)),
    }
}

/// Runs the appender of `grant` until it completes or fails; a failure that may be retried
/// (preempted, no copy stored) comes with the appender, which holds the payloads.
async fn write_grant(
    shared: &Arc<Shared>,
    grant: Grant,
    payloads: Vec<Vec<u8>>,
    deadline: Instant,
) -> Result<RangeInclusive<Lsn>, (AppendError, Option<Appender>)> {
    let now = Instant::now();
    // The appender's own timeout is what is left of the append's.
    let nodes = shared.cluster.current().nodes();
    let policy = AppendPolicy {
        append_timeout: deadline.saturating_duration_since(now),
        store_timeout_initial: shared.store_latency.first_wave_timeout(
            shared.config.append.store_timeout_initial,
            shared.config.append.store_timeout_max,
        ),
        domain_scope: shared.config.domain_scope_for(&grant.node_set, &nodes),
        ..shared.config.append
    };
    let (mut appender, mut actions) = {
        let graylist = shared.graylist();
        Appender::start(
            &grant,
            payloads,
            &nodes,
            policy,
            &shared.config.transport.limits,
            now.into_std(),
            &graylist,
            &mut rand::rng(),
        )
        .map_err(|e| (e, None))?
    };
    let mut stores = JoinSet::new();
    // Store timeouts reported while the STORE is still awaited (see `store`).
    let (late_tx, mut late_rx) = tokio::sync::mpsc::unbounded_channel();
    loop {
        for action in actions.drain(..) {
            match action {
                Action::SendStore {
                    node,
                    batch,
                    timeout,
                } => {
                    stores.spawn(store(
                        shared.clone(),
                        node,
                        batch,
                        timeout,
                        deadline,
                        late_tx.clone(),
                    ));
                }
                Action::Completed {
                    lsns,
                    copyset,
                    wave,
                } => {
                    report_stored(shared, &grant, &lsns, copyset, wave);
                    return Ok(lsns);
                }
                Action::Failed(e) => {
                    tracing::debug!(log = %grant.log, first = %grant.first, error = %e, "append failed");
                    if let AppendError::Preempted { seal, .. } = &e {
                        report_preempted(shared, &grant, *seal).await;
                        return Err((e, Some(appender)));
                    }
                    return Err((e, None));
                }
            }
        }
        let tick_at = Instant::from_std(appender.wake_at());
        let event = tokio::select! {
            Some(joined) = stores.join_next() => match joined {
                Ok(event) => event,
                // A store task panicked; the deadline still ends the append.
                Err(e) => {
                    tracing::error!(error = %e, "store task failed");
                    continue;
                }
            },
            Some(timed_out) = late_rx.recv() => timed_out,
            () = tokio::time::sleep_until(tick_at) => Event::Tick,
        };
        actions = {
            let mut graylist = shared.graylist();
            appender.handle(
                Instant::now().into_std(),
                event,
                &mut graylist,
                &mut rand::rng(),
            )
        };
    }
}

/// Sends one STORE and turns its outcome into the appender's event.
///
/// `timeout` is the wave's store timeout, a *soft* one: when it passes, `StoreTimedOut` goes
/// to the appender through `timed_out` (it may start another wave) while the STORE is still
/// awaited, up to the append's `deadline`. A node that is only slow then still completes its
/// wave: when no other copyset can avoid it (a node set of R nodes, or every other node
/// avoided), the appender keeps the wave and its late `Stored` counts, instead of every wave
/// resending the batch to the same busy nodes and waiting out doubling timeouts — which under
/// load turned a few ms of delay into hundreds. Late answers also feed the store-latency
/// average that sets the first wave's timeout, which otherwise saw only the fast ones.
async fn store(
    shared: Arc<Shared>,
    node: NodeId,
    batch: StoreBatch,
    timeout: Duration,
    deadline: Instant,
    timed_out: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Event {
    let wave = batch.wave_or_seal;
    let Some(addr) = shared.cluster.address(node).await else {
        tracing::debug!(%node, "storage node not in the cluster view");
        shared.refresh_soon();
        return Event::TransportFailed {
            node,
            wave,
            may_have_been_applied: false,
        };
    };
    let started = Instant::now();
    let hard = deadline.saturating_duration_since(started).max(timeout);
    let call = shared.stores.send(addr, batch, hard);
    tokio::pin!(call);
    let mut reported = false;
    let answer = tokio::select! {
        answer = &mut call => answer,
        () = tokio::time::sleep(timeout) => {
            reported = true;
            let _ = timed_out.send(Event::StoreTimedOut { node, wave });
            call.await
        }
    };
    match answer {
        Ok(ClientResponse::StoreResult(status)) => {
            if status == StoreStatus::Stored {
                shared.store_latency.record(started.elapsed());
            }
            Event::StoreReply { node, wave, status }
        }
        Ok(ClientResponse::Error(e)) => transport_failed(node, wave, TransportError::Remote(e)),
        Ok(other) => {
            tracing::warn!(%node, answer = ?other, "unexpected answer to a STORE");
            Event::TransportFailed {
                node,
                wave,
                may_have_been_applied: true,
            }
        }
        // The append's deadline passed too: the appender ends the append on its own.
        Err(TransportError::Timeout(_)) if reported => Event::Tick,
        Err(TransportError::Timeout(_)) => Event::StoreTimedOut { node, wave },
        Err(e) => {
            if matches!(e, TransportError::Connect { .. }) {
                shared.refresh_soon();
            }
            transport_failed(node, wave, e)
        }
    }
}

fn transport_failed(node: NodeId, wave: u32, e: TransportError) -> Event {
    tracing::debug!(%node, wave, error = %e, "STORE failed");
    Event::TransportFailed {
        node,
        wave,
        may_have_been_applied: e.may_have_been_applied(),
    }
}

/// Tells the sequencer that granted `grant` that a storage node refused its epoch with a
/// seal at `seal`, so it stops granting there and the log's next grant comes from a new
/// epoch instead of meeting the same seal. Awaited (briefly) before the batch's callers hear
/// of the failure, so their retries do not reach the sealed epoch again; a lost report is
/// only logged (the next refused store reports again).
async fn report_preempted(shared: &Arc<Shared>, grant: &Grant, seal: Epoch) {
    let epoch = grant.first.epoch();
    if seal < epoch {
        return;
    }
    let req = ClientRequest::ReportPreempted {
        log: grant.log,
        epoch,
        seal,
    };
    let Some(addr) = shared.cluster.address(grant.sequencer).await else {
        return;
    };
    let config = &shared.config;
    let timeout = config.report_timeout.min(config.sequencer_silence_timeout);
    if let Err(e) = shared.connector.call(addr, &req, timeout).await {
        tracing::debug!(sequencer = %grant.sequencer, error = %e, "preemption report failed");
    }
}

/// Tells the sequencer in the background that `lsns` are stored on `copyset` (batched with
/// other reports to it while it is busy: `mux::Reports`). A lost report is settled by the
/// sequencer's own paths (abandoned LSNs, recovery), so failures are only logged.
fn report_stored(
    shared: &Arc<Shared>,
    grant: &Grant,
    lsns: &RangeInclusive<Lsn>,
    copyset: Copyset,
    wave: u32,
) {
    let report = StoredReport {
        log: grant.log,
        first: *lsns.start(),
        count: grant.count,
        copyset,
        wave,
    };
    let sequencer = grant.sequencer;
    let shared = shared.clone();
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let Some(addr) = shared.cluster.address(sequencer).await else {
            tracing::debug!(%sequencer, "sequencer not in the cluster view; report dropped");
            return;
        };
        let timeout = shared.config.report_timeout;
        match shared.reports.send(addr, report, timeout).await {
            Ok(ClientResponse::Ack) => {}
            other => tracing::debug!(%sequencer, answer = ?other, "report not applied"),
        }
    });
}
