//! `Service<NodeProtocol>` of the storage role: what sequencers and other storage nodes ask.
//!
//! - `Release`: raises each log's last released LSN (monotone, not synced: sequencers
//!   re-broadcast), after settling the epochs below the releasing sequencer's (`purge`; a log
//!   whose epochs cannot be settled now keeps its release point until the next broadcast).
//!   Answer `Ack`.
//! - `Seal{log, epoch}`: writes the seal durably (fsync before the answer). A node sealed
//!   higher answers `Preempted{seal}`. Otherwise `Sealed{seal, lng, tail, last_released}`
//!   where `tail` is the highest LSN this node holds of the log in epochs ≤ the seal (the
//!   node's tail as the sealed sequencer left it; `Lsn::INVALID` if none above the trim
//!   point) and `lng` is the node's LNG **of the epoch of `tail`** — recovery reads the pair
//!   as describing that epoch only, and ignores it for other epochs. `data_loss` says the node
//!   may have lost acknowledged `fast` writes (it registers as `DataLoss` too, but membership
//!   may lag): recovery does not count it towards an authoritative digest.
//! - `Store`: a recovery or rebuilding store, same path as a client's (`store_path`).
//! - `Clean{log, epoch, seal}`: refused with `Preempted{seal}` when this node's seal is above
//!   the Clean's (a newer recovery owns the log); otherwise records `epoch` as the last clean
//!   epoch (monotone, synced). Answer `Ack`.
//! - `Trim`: raises the trim point (monotone). Answer `Ack`.
//! - `StartDigest`: the recovery digest push stream (`digest`).

use std::collections::BTreeMap;

use tally_common::meta::StorageState;
use tally_common::transport::{NodeProtocol, RequestContext, ServerStream, Service};
use tally_common::wire::ErrorCode;
use tally_common::wire::node::{NodeRequest, NodeResponse, Release};
use tally_common::{Epoch, Esn, LogId, Lsn};
use tokio::time::Instant;
use tracing::Instrument;

use super::StorageNode;
use super::purge::PurgeError;
use super::store_path::{Outcome, error_of, expired, remote};
use crate::logsdb::{LogsDb, LogsDbError};

fn error(code: ErrorCode, message: impl Into<String>) -> NodeResponse {
    NodeResponse::Error(remote(code, message))
}

/// The highest LSN of `log` held here at or below `limit` (above the trim point), or
/// `Lsn::INVALID`. The partition directory gives a lower bound (the last LSN of every
/// partition entirely at or below `limit`), so only the copyset index between that bound and
/// `limit` is walked, never payloads.
pub(crate) fn tail_up_to(db: &LogsDb, log: LogId, limit: Lsn) -> Result<Lsn, LogsDbError> {
    let from = db
        .directory(log)
        .iter()
        .filter(|(_, e)| e.last_lsn <= limit)
        .map(|(_, e)| e.last_lsn)
        .max()
        .unwrap_or(Lsn::OLDEST);
    let mut tail = Lsn::INVALID;
    for entry in db.copysets(log, from, limit) {
        match entry {
            Ok(e) => tail = tail.max(e.lsn),
            // A damaged index entry still says a copy was stored at that LSN.
            Err(LogsDbError::Corrupt { lsn, .. }) => tail = tail.max(lsn),
            Err(e) => return Err(e),
        }
    }
    Ok(tail)
}

impl StorageNode {
    async fn release(&self, releases: Vec<Release>, deadline: Instant) -> NodeResponse {
        if let Some(e) = expired(deadline) {
            return NodeResponse::Error(e);
        }
        // Only the highest point and epoch per log matter (both never move back).
        let mut highest: BTreeMap<LogId, (Lsn, Epoch)> = BTreeMap::new();
        for r in releases {
            if !r.log.is_user() && !r.log.is_internal() {
                return error(ErrorCode::BadRequest, format!("invalid log id {}", r.log.0));
            }
            let at = highest.entry(r.log).or_default();
            *at = (at.0.max(r.lsn), at.1.max(r.epoch));
        }
        for (log, (lsn, epoch)) in highest {
            if lsn == Lsn::INVALID {
                continue;
            }
            // Epochs below the releasing sequencer's are recovered: purge what this node
            // missed of them before anything of theirs can be shipped. If that cannot be
            // done now, this log's release waits for the next broadcast.
            match self.settle_below(log, epoch).await {
                Ok(()) => {}
                Err(PurgeError::Busy) => continue,
                Err(e) => {
                    self.config.metrics.releases_held.inc();
                    tracing::warn!(%log, %epoch, error = %e, "release held back: epochs below not settled");
                    continue;
                }
            }
            if let Err(e) = self.logsdb.set_last_released(log, lsn).await {
                return NodeResponse::Error(error_of(e));
            }
        }
        NodeResponse::Ack
    }

    async fn seal(&self, log: LogId, epoch: Epoch, deadline: Instant) -> NodeResponse {
        if let Some(e) = expired(deadline) {
            return NodeResponse::Error(e);
        }
        let seal = match self.logsdb.seal(log, epoch).await {
            Ok(seal) => {
                self.config.metrics.seals.inc();
                seal
            }
            Err(LogsDbError::Preempted { seal, .. }) => {
                tracing::debug!(%seal, "seal refused: sealed higher");
                return NodeResponse::Preempted { seal };
            }
            Err(e) => {
                if matches!(e, LogsDbError::Failed(_)) {
                    self.note_write_failure();
                }
                return NodeResponse::Error(error_of(e));
            }
        };
        let db = self.logsdb.clone();
        let tail =
            tokio::task::spawn_blocking(move || tail_up_to(&db, log, Lsn::epoch_end(seal))).await;
        let tail = match tail {
            Ok(Ok(tail)) => tail,
            Ok(Err(e)) => return NodeResponse::Error(error_of(e)),
            Err(_) => return error(ErrorCode::Internal, "tail lookup task failed"),
        };
        let meta = self.logsdb.log_meta(log);
        let lng = if tail == Lsn::INVALID {
            Esn::INVALID
        } else {
            meta.epoch_lng
                .get(&tail.epoch())
                .copied()
                .unwrap_or(Esn::INVALID)
        };
        NodeResponse::Sealed {
            seal: seal.max(meta.seal),
            lng,
            tail,
            last_released: meta.last_released,
            data_loss: self.storage_state() == StorageState::DataLoss,
        }
    }

    async fn clean(
        &self,
        log: LogId,
        epoch: Epoch,
        seal: Epoch,
        deadline: Instant,
    ) -> NodeResponse {
        if let Some(e) = expired(deadline) {
            return NodeResponse::Error(e);
        }
        let mine = self.logsdb.log_meta(log).seal;
        if mine > seal {
            tracing::debug!(%mine, "clean refused: sealed higher");
            return NodeResponse::Preempted { seal: mine };
        }
        match self.logsdb.set_last_clean_epoch(log, epoch).await {
            Ok(()) => NodeResponse::Ack,
            Err(e) => NodeResponse::Error(error_of(e)),
        }
    }
}

impl Service<NodeProtocol> for StorageNode {
    async fn call(&self, ctx: RequestContext, req: NodeRequest) -> NodeResponse {
        let deadline = ctx.deadline;
        let node = self.id();
        match req {
            NodeRequest::Ping => NodeResponse::Pong { node },
            NodeRequest::Release {
                sequencer,
                releases,
            } => {
                let span = tracing::debug_span!("release", %node, %sequencer, n = releases.len());
                self.release(releases, deadline).instrument(span).await
            }
            NodeRequest::Seal {
                log,
                epoch,
                sequencer,
            } => {
                let span = tracing::debug_span!("seal", %node, %log, %epoch, %sequencer);
                self.seal(log, epoch, deadline).instrument(span).await
            }
            NodeRequest::Store(batch) => match self.store_batch(batch, deadline).await {
                Outcome::Status(s) => NodeResponse::StoreResult(s),
                Outcome::Error(e) => NodeResponse::Error(e),
            },
            NodeRequest::Clean {
                log,
                epoch,
                seal,
                tail,
            } => {
                let span = tracing::debug_span!("clean", %node, %log, %epoch, %seal, %tail);
                self.clean(log, epoch, seal, deadline)
                    .instrument(span)
                    .await
            }
            NodeRequest::Trim { log, upto } => {
                if let Some(e) = expired(deadline) {
                    return NodeResponse::Error(e);
                }
                match self.logsdb.trim(log, upto).await {
                    Ok(_) => NodeResponse::Ack,
                    Err(e) => NodeResponse::Error(error_of(e)),
                }
            }
            NodeRequest::StartDigest { .. } => error(
                ErrorCode::BadRequest,
                "StartDigest opens a stream: send it as an Open frame",
            ),
        }
    }

    async fn open(
        &self,
        ctx: RequestContext,
        req: NodeRequest,
        stream: ServerStream<NodeProtocol>,
    ) {
        self.serve_open(ctx, req, stream).await
    }
}
