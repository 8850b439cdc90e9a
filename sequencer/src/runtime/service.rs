//! The sequencer's `Service<ClientProtocol>`: `Sequence` (placement, activation, grant),
//! `ReportStored`, `ReportPreempted`, `GetTail`, and the metadata requests every node serves
//! (`GetClusterState` from the membership view, `GetLogMetadata` and `CreateLog` from the epoch
//! store). Other requests belong to the storage role and are refused as `BadRequest`.
//!
//! `SequenceMany` answers each ask the way `Sequence` would, from what runs here now: an ask
//! that would need an activation is answered `NotActive` (the client asks for it alone), so a
//! combined request never waits for the epoch store, and running logs' asks never wait behind
//! another log's activation.
//!
//! `Sequence` never answers `Preempted`: a preempted epoch (see `ReportPreempted`) is replaced
//! on the next `Sequence` by a new epoch if this node may serve the log (it owns it by
//! placement, the request says `no_redirect`, or a `no_redirect` takeover is still sticky),
//! and the request is redirected to the owner otherwise. The same holds when a conditional
//! reactivation (ESN exhaustion, abandoned LSN) finds that another sequencer took the log
//! meanwhile: the epoch steps down and the request is placed again. `ReportPreempted` is
//! always answered `Ack`, whether it applied or was ignored (an epoch this node no longer
//! runs).
//!
//! Hand-back: when a `no_redirect` takeover's stickiness ends while grants of its epoch are
//! still being written, requests for the log are answered `Unavailable` (retry) for up to
//! `handback_grace` instead of `Redirect`: the owner's next activation seals this epoch, and
//! appends still storing their copies here would fail with copies in doubt.
//!
//! Answers to a completion report the sequencer cannot apply (the log does not run here, the
//! report names another epoch, or LSNs never granted) are terminal `BadRequest` errors with the
//! reason: retrying cannot help, the client's append is already acknowledged by its R copies,
//! and the LSNs concerned are settled by recovery of their epoch.

use std::sync::Arc;
use std::time::Instant;

use tally_common::transport::{ClientProtocol, RequestContext, Service};
use tally_common::wire::client::{ClientRequest, ClientResponse, SequenceAnswer, SequenceAsk};
use tally_common::wire::{ErrorCode, RemoteError};
use tally_common::{LogId, Lsn};
use tally_epochstore::EpochStoreError;
use tracing::Instrument;

use super::logs::{ActivationError, LogSlot, Report, TrySequence};
use super::placement::Placement;
use super::{SequencerNode, now_ms};
use crate::log_sequencer::{SequenceOutcome, StoredError};

fn error(code: ErrorCode, message: impl Into<String>) -> ClientResponse {
    ClientResponse::Error(RemoteError::new(code, message))
}

fn store_error(e: &EpochStoreError) -> ClientResponse {
    ClientResponse::Error(store_remote_error(e))
}

fn store_remote_error(e: &EpochStoreError) -> RemoteError {
    let code = match e {
        EpochStoreError::NotFound { .. } => ErrorCode::NotFound,
        EpochStoreError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
        EpochStoreError::Unavailable { .. } => ErrorCode::Unavailable,
        EpochStoreError::Timeout { .. } => ErrorCode::Timeout,
        // Storage nodes may join: retry later.
        EpochStoreError::InsufficientNodes { .. } => ErrorCode::Unavailable,
        EpochStoreError::InvalidAttributes(_) | EpochStoreError::InvalidArgument(_) => {
            ErrorCode::BadRequest
        }
        EpochStoreError::Unauthorized(_) => ErrorCode::PermissionDenied,
        _ => ErrorCode::Internal,
    };
    RemoteError::new(code, e.to_string())
}

fn activation_error(e: &ActivationError) -> ClientResponse {
    ClientResponse::Error(activation_remote_error(e))
}

fn activation_remote_error(e: &ActivationError) -> RemoteError {
    let code = match e {
        ActivationError::Store(e) => return store_remote_error(e),
        ActivationError::Timeout(_) => ErrorCode::Timeout,
        // The epoch this node ran was replaced by another sequencer's; the log moved, retry.
        ActivationError::Superseded { .. } => ErrorCode::Unavailable,
        ActivationError::TooManyLogs { .. } => ErrorCode::Overloaded,
        ActivationError::ShuttingDown => ErrorCode::Unavailable,
    };
    RemoteError::new(code, e.to_string())
}

/// How often one `Sequence` request may (re)activate before giving up: the first activation
/// (or a conditional reactivation that finds the log taken over, stepping down), and one more
/// (the plain activation after such a step-down, or a reactivation if a new epoch were
/// exhausted at once, which it cannot be).
const MAX_ACTIVATIONS_PER_REQUEST: usize = 2;

/// What a `Sequence` can be answered without waiting, or the slot of a log that needs an
/// activation first.
enum Now {
    Answer(SequenceAnswer),
    Activate(Arc<LogSlot>),
}

impl SequencerNode {
    async fn sequence(&self, log: LogId, count: u32, no_redirect: bool) -> ClientResponse {
        let mut activations = 0;
        loop {
            let slot = match self.sequence_now(log, count, no_redirect, false) {
                Now::Answer(answer) => return answer.into(),
                Now::Activate(slot) => slot,
            };
            if activations == MAX_ACTIVATIONS_PER_REQUEST {
                return error(ErrorCode::Unavailable, "the log is moving to a new epoch");
            }
            activations += 1;
            match self.activate(&slot).await {
                Ok(()) => {}
                // The epoch stepped down for a newer one: place the request again (this node
                // activates a new epoch only if it may serve the log).
                Err(ActivationError::Superseded { current }) => {
                    tracing::debug!(node = %self.id(), %log, %current, "stepped down; placing again");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(node = %self.id(), %log, error = %e, "activation failed");
                    return activation_error(&e);
                }
            }
            if no_redirect {
                self.logs
                    .set_sticky(&slot, Instant::now() + self.config.no_redirect_duration);
            }
        }
    }

    /// The asks of a `SequenceMany`, each answered from what runs here now: a log that would
    /// need an activation is answered `NotActive` (the client asks for it alone), so the
    /// request never waits for the epoch store.
    fn sequence_many(&self, asks: Vec<SequenceAsk>) -> ClientResponse {
        let answers = asks
            .into_iter()
            .map(
                |ask| match self.sequence_now(ask.log, ask.count, false, true) {
                    Now::Answer(answer) => answer,
                    Now::Activate(_) => SequenceAnswer::NotActive,
                },
            )
            .collect();
        ClientResponse::Sequenced(answers)
    }

    /// Places the ask and grants from the running epoch if it can, without waiting. With
    /// `running_only`, a log with no slot here is answered `NotActive` rather than given one
    /// (a slot is only made by a request that will activate it).
    fn sequence_now(&self, log: LogId, count: u32, no_redirect: bool, running_only: bool) -> Now {
        loop {
            let now = Instant::now();
            let sticky = self
                .logs
                .get(log)
                .is_some_and(|slot| self.logs.sticky(&slot, now));
            if !no_redirect && !sticky {
                match self.membership.place(log) {
                    None => {
                        return Now::Answer(SequenceAnswer::Error(RemoteError::new(
                            ErrorCode::Unavailable,
                            "membership is not known yet",
                        )));
                    }
                    Some(Placement::Redirect(owner)) => {
                        if self.logs.get(log).is_some_and(|slot| {
                            self.logs
                                .handing_back(&slot, now, self.config.handback_grace)
                        }) {
                            return Now::Answer(SequenceAnswer::Error(RemoteError::new(
                                ErrorCode::Unavailable,
                                format!(
                                    "{log} goes back to its owner {owner} once the appends in \
                                     flight here complete"
                                ),
                            )));
                        }
                        self.config.metrics.redirects.inc();
                        return Now::Answer(SequenceAnswer::Redirect { owner });
                    }
                    Some(Placement::Here) => {}
                }
            }
            if running_only && self.logs.get(log).is_none() {
                return Now::Answer(SequenceAnswer::NotActive);
            }
            let slot = match self.logs.slot(log) {
                Ok(slot) => slot,
                Err(e) => return Now::Answer(SequenceAnswer::Error(activation_remote_error(&e))),
            };
            match self.logs.try_sequence(&slot, count, now_ms(), now) {
                TrySequence::Retired => continue,
                TrySequence::Outcome(outcome, effects) => {
                    self.apply(effects);
                    match outcome {
                        SequenceOutcome::Granted(grant) => {
                            let metrics = &self.config.metrics;
                            metrics.grants.inc();
                            metrics.appends.inc_by(u64::from(grant.count));
                            return Now::Answer(SequenceAnswer::Granted(grant));
                        }
                        SequenceOutcome::NoBufs => {
                            self.config.metrics.no_bufs.inc();
                            return Now::Answer(SequenceAnswer::NoBufs);
                        }
                        // ESN exhaustion: activate a new epoch right here. (A preempted epoch
                        // never gets here, `try_sequence` asks for activation first.)
                        SequenceOutcome::Reactivating | SequenceOutcome::Preempted { .. } => {}
                    }
                }
                TrySequence::NeedsActivation => {}
            }
            return Now::Activate(slot);
        }
    }

    fn report_stored(&self, log: LogId, first: Lsn, count: u32) -> ClientResponse {
        match self.logs.stored(log, first, count, Instant::now()) {
            Report::Applied(effects) => {
                let metrics = &self.config.metrics;
                metrics.appends_completed.inc_by(u64::from(count));
                if let Some(at) = effects.granted_at {
                    metrics.append_latency.observe(at.elapsed());
                }
                self.apply(effects);
                ClientResponse::Ack
            }
            Report::NotRunning => error(
                ErrorCode::BadRequest,
                format!(
                    "log {log} has no sequencer on {}; recovery settles {first}",
                    self.id()
                ),
            ),
            Report::Refused(e @ StoredError::OtherEpoch { .. }) => {
                error(ErrorCode::BadRequest, e.to_string())
            }
            Report::Refused(StoredError::Window(e)) => error(ErrorCode::BadRequest, e.to_string()),
        }
    }

    /// The release point. A log not running here (or preempted here) is placed like a
    /// `Sequence` (redirect to its owner, or activate here), because only the running
    /// sequencer knows the tail.
    async fn get_tail(&self, log: LogId) -> ClientResponse {
        if let Some((_, lsn)) = self.logs.tail(log) {
            return ClientResponse::Tail { lsn };
        }
        match self.membership.place(log) {
            None => return error(ErrorCode::Unavailable, "membership is not known yet"),
            Some(Placement::Redirect(owner)) => return ClientResponse::Redirect { owner },
            Some(Placement::Here) => {}
        }
        loop {
            let slot = match self.logs.slot(log) {
                Ok(slot) => slot,
                Err(e) => return activation_error(&e),
            };
            match self.activate(&slot).await {
                // Stepped down for a newer epoch; the next activation is a plain one.
                Ok(()) | Err(ActivationError::Superseded { .. }) => {}
                Err(e) => return activation_error(&e),
            }
            if let Some((_, lsn)) = self.logs.tail(log) {
                return ClientResponse::Tail { lsn };
            }
            // The slot was retired by a concurrent failure; look it up again (bounded by the
            // request deadline, which the server enforces).
        }
    }

    async fn with_deadline<T>(
        &self,
        deadline: Instant,
        call: impl Future<Output = Result<T, EpochStoreError>>,
    ) -> Result<T, ClientResponse> {
        let limit = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(store_error(&e)),
            Err(_) => Err(error(ErrorCode::Timeout, "epoch store call timed out")),
        }
    }
}

impl Service<ClientProtocol> for SequencerNode {
    async fn call(&self, ctx: RequestContext, req: ClientRequest) -> ClientResponse {
        let deadline = ctx.deadline.into_std();
        match req {
            ClientRequest::Sequence {
                log,
                count,
                no_redirect,
            } => {
                let span = tracing::debug_span!("sequence", node = %self.id(), %log);
                self.sequence(log, count, no_redirect)
                    .instrument(span)
                    .await
            }
            ClientRequest::SequenceMany(asks) => self.sequence_many(asks),
            ClientRequest::ReportStored {
                log, first, count, ..
            } => self.report_stored(log, first, count),
            ClientRequest::ReportStoredMany(reports) => {
                for r in reports {
                    if let ClientResponse::Error(e) = self.report_stored(r.log, r.first, r.count) {
                        tracing::debug!(log = %r.log, first = %r.first, error = %e, "report not applied");
                    }
                }
                ClientResponse::Ack
            }
            ClientRequest::ReportPreempted { log, epoch, seal } => {
                self.report_preempted(log, epoch, seal);
                ClientResponse::Ack
            }
            ClientRequest::GetTail { log } => self.get_tail(log).await,
            ClientRequest::GetClusterState => {
                let view = self.membership.view();
                ClientResponse::ClusterState {
                    nodes: view.nodes.values().cloned().collect(),
                    version: view.version,
                }
            }
            ClientRequest::GetLogMetadata { log } => {
                match self.with_deadline(deadline, self.store.get_log(log)).await {
                    Ok(meta) => ClientResponse::LogMetadata(meta),
                    Err(resp) => resp,
                }
            }
            ClientRequest::CreateLog { log, attributes } => {
                match self
                    .with_deadline(deadline, self.store.create_log(log, attributes))
                    .await
                {
                    Ok(_) => ClientResponse::LogCreated,
                    Err(resp) => resp,
                }
            }
            other => error(
                ErrorCode::BadRequest,
                format!("the sequencer role does not serve {}", request_name(&other)),
            ),
        }
    }
}

fn request_name(req: &ClientRequest) -> &'static str {
    match req {
        ClientRequest::Store(_) => "Store",
        ClientRequest::StoreMany(_) => "StoreMany",
        ClientRequest::ReportStoredMany(_) => "ReportStoredMany",
        ClientRequest::Trim { .. } => "Trim",
        ClientRequest::FindTime { .. } => "FindTime",
        ClientRequest::DataSize { .. } => "DataSize",
        ClientRequest::StartRead { .. } => "StartRead",
        ClientRequest::ReadWindow { .. } => "ReadWindow",
        ClientRequest::StopRead => "StopRead",
        _ => "this request",
    }
}
