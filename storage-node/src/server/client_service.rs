//! The client-protocol side of the storage role: [`StorageNode::handle_client`] answers the
//! requests that belong to storage (`Store`, `Trim`, `FindTime`, `DataSize`) and the metadata
//! every node serves (`GetClusterState` from the membership view, `GetLogMetadata` from the
//! epoch store), and `None` for the rest, so a node that also runs the sequencer composes the
//! two roles behind its one `Service<ClientProtocol>`. The `Service` impl here is for
//! storage-only nodes: it answers other requests with `BadRequest`, and serves read streams
//! (`StartRead` opened as a push stream, see `read`); a composing service routes `open` here.

use std::sync::Arc;

use tally_common::transport::{ClientProtocol, RequestContext, ServerStream, Service};
use tally_common::wire::client::{ClientRequest, ClientResponse, StoreAnswer};
use tally_common::wire::{ErrorCode, FindTimeAccuracy as WireAccuracy, RemoteError};
use tally_common::{LogId, Lsn};
use tally_epochstore::EpochStoreError;
use tokio::time::Instant;

use super::StorageNode;
use super::store_path::{Outcome, error_of, expired, remote};
use crate::logsdb::{FindTimeAccuracy, LogsDb, LogsDbError};

fn error(e: RemoteError) -> ClientResponse {
    ClientResponse::Error(e)
}

fn store_error(e: &EpochStoreError) -> RemoteError {
    let code = match e {
        EpochStoreError::NotFound { .. } => ErrorCode::NotFound,
        EpochStoreError::Unavailable { .. } => ErrorCode::Unavailable,
        EpochStoreError::Timeout { .. } => ErrorCode::Timeout,
        EpochStoreError::InvalidArgument(_) => ErrorCode::BadRequest,
        EpochStoreError::Unauthorized(_) => ErrorCode::PermissionDenied,
        _ => ErrorCode::Internal,
    };
    remote(code, e.to_string())
}

/// Runs a short synchronous LogsDB read on the blocking pool.
async fn blocking_read<T: Send + 'static>(
    db: &Arc<LogsDb>,
    f: impl FnOnce(&LogsDb) -> Result<T, LogsDbError> + Send + 'static,
) -> Result<T, RemoteError> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(r) => r.map_err(error_of),
        Err(_) => Err(remote(ErrorCode::Internal, "LogsDB read task failed")),
    }
}

impl StorageNode {
    /// Whether [`StorageNode::handle_client`] answers `req` (so a composing service can route
    /// without cloning the request): storage requests and the metadata requests.
    pub fn serves(req: &ClientRequest) -> bool {
        matches!(
            req,
            ClientRequest::Store(_)
                | ClientRequest::StoreMany(_)
                | ClientRequest::Trim { .. }
                | ClientRequest::FindTime { .. }
                | ClientRequest::DataSize { .. }
                | ClientRequest::GetClusterState
                | ClientRequest::GetLogMetadata { .. }
                | ClientRequest::ListLogs
                | ClientRequest::UpdateLog { .. }
                | ClientRequest::ScanEstimate { .. }
        )
    }

    /// Answers `req` if it is a storage or metadata request; `None` if it belongs to another
    /// role (sequencer requests, `CreateLog`) or is a read-stream message.
    pub async fn handle_client(
        &self,
        ctx: RequestContext,
        req: ClientRequest,
    ) -> Option<ClientResponse> {
        let deadline = ctx.deadline;
        Some(match req {
            ClientRequest::Store(batch) => match self.store_batch(batch, deadline).await {
                Outcome::Status(s) => ClientResponse::StoreResult(s),
                Outcome::Error(e) => error(e),
            },
            ClientRequest::StoreMany(batches) => {
                // All at once: LogsDB's writers commit them together (one WAL write, one
                // fsync for the durable ones), and each is answered as if alone.
                let stores = batches
                    .into_iter()
                    .map(|batch| self.store_batch(batch, deadline));
                let answers = futures_util::future::join_all(stores)
                    .await
                    .into_iter()
                    .map(|outcome| match outcome {
                        Outcome::Status(s) => StoreAnswer::Status(s),
                        Outcome::Error(e) => StoreAnswer::Error(e),
                    })
                    .collect();
                ClientResponse::StoreResults(answers)
            }
            ClientRequest::Trim { log, upto } => self.trim(log, upto, deadline).await,
            ClientRequest::FindTime {
                log,
                timestamp_ms,
                accuracy,
            } => {
                let accuracy = match accuracy {
                    WireAccuracy::Strict => FindTimeAccuracy::Strict,
                    WireAccuracy::Approximate => FindTimeAccuracy::Approximate,
                };
                match blocking_read(&self.logsdb, move |db| {
                    db.find_time(log, timestamp_ms, accuracy)
                })
                .await
                {
                    Ok(lsn) => ClientResponse::FoundTime { lsn },
                    Err(e) => error(e),
                }
            }
            ClientRequest::DataSize {
                log,
                from_ms,
                until_ms,
            } => match blocking_read(&self.logsdb, move |db| {
                data_size_by_time(db, log, from_ms, until_ms)
            })
            .await
            {
                Ok(bytes) => ClientResponse::DataSize { bytes },
                Err(e) => error(e),
            },
            ClientRequest::GetClusterState => {
                let (nodes, version) = self.cluster.snapshot();
                ClientResponse::ClusterState { nodes, version }
            }
            ClientRequest::GetLogMetadata { log } => {
                let limit = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(limit, self.store.get_log(log)).await {
                    Ok(Ok(meta)) => ClientResponse::LogMetadata(meta),
                    Ok(Err(e)) => error(store_error(&e)),
                    Err(_) => error(remote(ErrorCode::Timeout, "epoch store call timed out")),
                }
            }
            // Log administration and scan estimates: `log_admin`.
            ClientRequest::ListLogs => self.list_logs(deadline).await,
            ClientRequest::UpdateLog { log, attributes } => {
                self.update_log(log, attributes, deadline).await
            }
            ClientRequest::ScanEstimate { log, from, until } => {
                self.scan_estimate(log, from, until)
            }
            _ => return None,
        })
    }

    async fn trim(&self, log: LogId, upto: Lsn, deadline: Instant) -> ClientResponse {
        if let Some(e) = expired(deadline) {
            return error(e);
        }
        tracing::debug!(node = %self.id(), %log, %upto, "trim");
        match self.logsdb.trim(log, upto).await {
            Ok(t) => ClientResponse::Trimmed {
                trim_point: t.trim_point,
            },
            Err(e) => error(error_of(e)),
        }
    }
}

/// Bytes of `log`'s records with timestamps in `[from_ms, until_ms)`: the LSN range between
/// the two time points (strict `find_time`, so the bounds are exact), sized from the
/// partition directory.
fn data_size_by_time(
    db: &LogsDb,
    log: LogId,
    from_ms: u64,
    until_ms: u64,
) -> Result<u64, LogsDbError> {
    let from = db.find_time(log, from_ms, FindTimeAccuracy::Strict)?;
    let until = db.find_time(log, until_ms, FindTimeAccuracy::Strict)?;
    if until <= from {
        return Ok(0);
    }
    Ok(db.data_size(log, from, until.prev()))
}

/// The storage-only node's client service (see [`StorageNode::handle_client`]).
impl Service<ClientProtocol> for StorageNode {
    async fn call(&self, ctx: RequestContext, req: ClientRequest) -> ClientResponse {
        match self.handle_client(ctx, req).await {
            Some(resp) => resp,
            None => error(remote(
                ErrorCode::BadRequest,
                "this node runs only the storage role; ask a sequencer node",
            )),
        }
    }

    /// Read streams (`StartRead`; see `read`).
    async fn open(
        &self,
        ctx: RequestContext,
        req: ClientRequest,
        stream: ServerStream<ClientProtocol>,
    ) {
        self.serve_read(ctx, req, stream).await
    }
}
