//! Driving one append over the network (DESIGN §6): check the payloads (nothing is sent for a
//! batch over the limits), get a grant (`sequence`), then run the pure [`Appender`]: its
//! STOREs go out concurrently, each answer, store timeout or transport failure comes back as
//! an [`Event`], and a `Tick` is delivered when the appender asks ([`Appender::wake_at`]: a
//! waiting wave, the append timeout), so the append ends even if nothing answers. On completion the LSNs are returned at once and `ReportStored` goes to
//! the sequencer in the background: the application does not wait for it, and a lost report
//! is settled by the sequencer's abandoned-LSN path.

use std::ops::RangeInclusive;
use std::sync::Arc;

use tally_common::transport::TransportError;
use tally_common::wire::client::{ClientRequest, ClientResponse, Grant};
use tally_common::wire::{StoreBatch, StoreStatus};
use tally_common::{Copyset, LogId, Lsn, NodeId};
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

use crate::appender::{Action, AppendPolicy, Appender, Event, check_payloads};
use crate::client::Shared;
use crate::error::AppendError;

/// Appends `payloads` to `log` as one grant; the LSNs they got.
pub(crate) async fn append(
    shared: &Arc<Shared>,
    log: LogId,
    payloads: Vec<Vec<u8>>,
) -> Result<RangeInclusive<Lsn>, AppendError> {
    if shared.shutdown.is_cancelled() {
        return Err(AppendError::Shutdown);
    }
    // Before the grant: LSNs granted to a batch that cannot be sent would be abandoned.
    check_payloads(&payloads, &shared.config.transport.limits)?;
    let deadline = Instant::now() + shared.config.append.append_timeout;
    let count = u32::try_from(payloads.len()).expect("checked against the batch limit");
    let grant = crate::sequence::request_grant(shared, log, count, deadline).await?;
    write_copies(shared, grant, payloads, deadline).await
}

/// Runs the appender of `grant` until it completes or fails.
async fn write_copies(
    shared: &Arc<Shared>,
    grant: Grant,
    payloads: Vec<Vec<u8>>,
    deadline: Instant,
) -> Result<RangeInclusive<Lsn>, AppendError> {
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
        )?
    };
    let mut stores = JoinSet::new();
    loop {
        for action in actions.drain(..) {
            match action {
                Action::SendStore {
                    node,
                    batch,
                    timeout,
                } => {
                    stores.spawn(store(shared.clone(), node, batch, timeout));
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
                    return Err(e);
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
async fn store(shared: Arc<Shared>, node: NodeId, batch: StoreBatch, timeout: Duration) -> Event {
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
    match shared
        .connector
        .call(addr, &ClientRequest::Store(batch), timeout)
        .await
    {
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

/// Tells the sequencer in the background that `lsns` are stored on `copyset`.
fn report_stored(
    shared: &Arc<Shared>,
    grant: &Grant,
    lsns: &RangeInclusive<Lsn>,
    copyset: Copyset,
    wave: u32,
) {
    let req = ClientRequest::ReportStored {
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
        match shared
            .connector
            .call(addr, &req, shared.config.report_timeout)
            .await
        {
            Ok(ClientResponse::Ack) => {}
            // The append is acknowledged by its copies; recovery settles what the sequencer
            // did not learn.
            other => tracing::debug!(%sequencer, answer = ?other, "completion report not applied"),
        }
    });
}
