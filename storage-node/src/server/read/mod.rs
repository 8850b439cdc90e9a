//! Read streams (DESIGN §7 read streams, §8): `StartRead{log, from, until, window_until,
//! filter}` opened as a push stream on the client protocol; `ReadWindow{until}` and `StopRead`
//! arrive as control frames on it.
//!
//! What a stream sends, in order, each message moving the stream's position `passed` forward
//! (see `cursor` for the exact rules; the client's `ReadStream` relies on them):
//! - `Records` — this node's copies in increasing LSN order, at most `MAX_READ_BATCH` records
//!   and about `read_batch_bytes` of payload per message, only LSNs ≤ min(until, window, the
//!   log's last released LSN here). Hole plugs and bridges are records (flags in the header).
//!   Shipping up to X means "this node has nothing else ≤ X" for this stream's filter.
//! - `Gap{NoRecords, from, to}` — after every scan that got further than its last record,
//!   including when the node holds nothing at all, so a reader never waits on this node.
//! - `Gap{Trim, from, to}` — the part of the range at or below the trim point, first, up to
//!   min(trim point, until, window), not waiting for releases.
//! - `ReadDone` once `until` is covered (instead of a last gap ending there); then the stream
//!   ends. A stream with `until` above every release (`Lsn::MAX` to follow) never ends by
//!   itself: when it has shipped all it may it waits for the log's release point to move
//!   (`LogWatch`, signalled by LogsDB's writer) or the window to widen.
//! - `Error` — the stream ends: `BadRequest` (only `StartRead` opens a stream, a bad filter, an
//!   unexpected control message), `NotFound` (a log this node never heard of and the epoch
//!   store does not know), `Overloaded` (more than `max_read_streams` streams open: refused
//!   before anything is allocated), `Timeout` (opened past its deadline), `Unavailable` (the
//!   node is shutting down), or a LogsDB read error.
//!
//! `StopRead` ends the stream normally (finished, after the message being pushed). A client
//! that finishes its side without `StopRead` only gives up widening the window: the stream
//! goes on, and ends when a push fails because the client stopped reading. (The transport
//! does not tell an idle server stream that its reader went away, so a following stream whose
//! client vanished without `StopRead` holds its slot until the log's next release.)
//!
//! Flow control and memory: nothing beyond the window is shipped; windows only widen. Each
//! chunk is read by one blocking-pool task (`scan`), and the next chunk is read while the
//! current one is pushed, so a stream holds at most two batches; QUIC flow control stops the
//! pushes (and so the reads) when the reader does not keep up. Blocking tasks run on the
//! node's task tracker, so shutdown waits for the (bounded) chunk reads in progress.
//!
//! Layout: `cursor` (the pure position and message rules), `filter` (single-copy order,
//! time and payload filters; pure), `scan` (one chunk from LogsDB).

mod cursor;
mod filter;
mod scan;

use std::sync::Arc;

use tally_common::transport::{
    ClientProtocol, PushSink, RequestContext, ServerStream, TransportError,
};
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::{ErrorCode, RemoteError};
use tally_common::{LogId, Lsn};
use tally_epochstore::EpochStoreError;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use self::cursor::{Cursor, Plan};
use self::filter::Filter;
use self::scan::{Scanned, scan};
use super::StorageNode;
use super::store_path::{error_of, expired, remote};
use crate::logsdb::LogsDbError;

pub use self::filter::{single_copy_order, single_copy_rank, single_copy_shipper};

/// How the client side of a stream ended.
#[derive(Debug, Clone)]
enum ControlEnd {
    /// `StopRead`.
    Stop,
    /// The stream or connection failed.
    Gone,
    /// A control message that does not belong on a read stream.
    Bad(String),
}

/// How a stream ended, and so how to close it.
#[derive(Debug)]
enum Ended {
    /// `ReadDone` was pushed, or the client stopped the stream: finish it.
    Finish,
    /// The client is gone: nothing to send.
    Gone,
    Error(RemoteError),
}

type ScanJob = JoinHandle<Result<Scanned, LogsDbError>>;

impl StorageNode {
    /// Serves a push stream opened on the client protocol (only `StartRead` opens one).
    pub(crate) async fn serve_read(
        &self,
        ctx: RequestContext,
        req: ClientRequest,
        mut stream: ServerStream<ClientProtocol>,
    ) {
        let ClientRequest::StartRead {
            log,
            from,
            until,
            window_until,
            filter,
        } = req
        else {
            let msg = "only StartRead opens a stream on the client protocol";
            stream.reject(remote(ErrorCode::BadRequest, msg)).await;
            return;
        };
        // The limit comes first: a refused stream allocates nothing.
        let Ok(permit) = self.read_streams.clone().try_acquire_owned() else {
            let msg = format!(
                "this node serves at most {} read streams at once",
                self.config.max_read_streams
            );
            stream.reject(remote(ErrorCode::Overloaded, msg)).await;
            return;
        };
        if let Some(e) = expired(ctx.deadline) {
            stream.reject(e).await;
            return;
        }
        let filter = match Filter::new(self.id(), &filter) {
            Ok(f) => f,
            Err(msg) => {
                stream.reject(remote(ErrorCode::BadRequest, msg)).await;
                return;
            }
        };
        if let Err(e) = self.check_log(log, ctx.deadline).await {
            stream.reject(e).await;
            return;
        }
        self.config.metrics.read_streams_opened.inc();
        let span = tracing::debug_span!("read", node = %self.id(), %log, %from, %until);
        let cursor = Cursor::new(from, until, window_until);
        self.read(ctx, log, cursor, filter, stream, permit)
            .instrument(span)
            .await;
    }

    /// Refuses a log this node holds nothing of and the epoch store does not know. When the
    /// epoch store cannot answer in time the stream is served (it waits for releases).
    async fn check_log(&self, log: LogId, deadline: Instant) -> Result<(), RemoteError> {
        if self.logsdb.knows_log(log) {
            return Ok(());
        }
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(self.config.epoch_store_timeout);
        match tokio::time::timeout(limit, self.store.get_log(log)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(EpochStoreError::NotFound { .. })) => Err(remote(
                ErrorCode::NotFound,
                format!("log {log} does not exist"),
            )),
            Ok(Err(e)) => {
                tracing::debug!(%log, error = %e, "cannot check the log; serving the read");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    async fn read(
        &self,
        ctx: RequestContext,
        log: LogId,
        mut cursor: Cursor,
        filter: Filter,
        stream: ServerStream<ClientProtocol>,
        _permit: OwnedSemaphorePermit,
    ) {
        let filter = Arc::new(filter);
        let (mut sink, mut control) = stream.split();
        let (window_tx, mut window_rx) = watch::channel(cursor.window());
        let (end_tx, mut end_rx) = watch::channel(None::<ControlEnd>);
        // Control frames are read for as long as the stream lasts (reading one is not cancel
        // safe, so this future is only dropped when the stream is over).
        let controls = async {
            let end = loop {
                match control.next_control().await {
                    Ok(Some(ClientRequest::ReadWindow { until })) => {
                        window_tx.send_if_modified(|w| {
                            let wider = until > *w;
                            *w = (*w).max(until);
                            wider
                        });
                    }
                    Ok(Some(ClientRequest::StopRead)) => break Some(ControlEnd::Stop),
                    // The client finished its side: no more window changes, the stream goes
                    // on until `until` or until its pushes fail.
                    Ok(None) => break None,
                    Ok(Some(other)) => {
                        let what: String = format!("{other:?}").chars().take(200).collect();
                        let msg = format!("unexpected control message on a read stream: {what}");
                        break Some(ControlEnd::Bad(msg));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "read stream control failed");
                        break Some(ControlEnd::Gone);
                    }
                }
            };
            if end.is_some() {
                end_tx.send_replace(end);
            }
            std::future::pending::<()>().await
        };
        let ended = tokio::select! {
            () = controls => unreachable!("the control future never completes"),
            ended = self.pump(log, &mut cursor, &filter, &mut sink, &mut window_rx, &mut end_rx) => ended,
            () = ctx.shutdown.cancelled() => Ended::Error(remote(ErrorCode::Unavailable, "node is shutting down")),
            () = self.shutdown.cancelled() => Ended::Error(remote(ErrorCode::Unavailable, "node is shutting down")),
        };
        tracing::debug!(passed = %cursor.passed(), ?ended, "read stream ended");
        match ended {
            Ended::Finish => sink.finish(),
            Ended::Gone => {}
            Ended::Error(e) => sink.reject(e).await,
        }
    }

    fn spawn_scan(&self, log: LogId, from: Lsn, to: Lsn, filter: &Arc<Filter>) -> ScanJob {
        let (db, filter, node) = (self.logsdb.clone(), filter.clone(), self.id());
        let max_bytes = self.config.read_batch_bytes;
        self.tracker
            .spawn_blocking(move || scan(&db, node, log, from, to, &filter, max_bytes))
    }

    /// Ships what the cursor allows, waits when it allows nothing, until the stream is over.
    async fn pump(
        &self,
        log: LogId,
        cursor: &mut Cursor,
        filter: &Arc<Filter>,
        sink: &mut PushSink<ClientProtocol>,
        window: &mut watch::Receiver<Lsn>,
        control: &mut watch::Receiver<Option<ControlEnd>>,
    ) -> Ended {
        let mut changes = self.logsdb.watch_log(log);
        let mut ahead: Option<(Lsn, ScanJob)> = None;
        loop {
            match control.borrow_and_update().clone() {
                Some(ControlEnd::Stop) => return Ended::Finish,
                Some(ControlEnd::Gone) => return Ended::Gone,
                Some(ControlEnd::Bad(msg)) => {
                    return Ended::Error(remote(ErrorCode::BadRequest, msg));
                }
                None => {}
            }
            changes.mark_seen();
            cursor.widen(*window.borrow_and_update());
            let (released, trim) = self.logsdb.release_and_trim(log);
            let messages = match cursor.plan(released, trim) {
                Plan::Done => vec![ClientResponse::ReadDone],
                Plan::Trim { to, .. } => vec![cursor.trimmed(to)],
                Plan::Wait => {
                    ahead = None;
                    tokio::select! {
                        () = changes.changed() => {}
                        _ = window.changed() => {}
                        _ = control.changed() => {}
                    }
                    continue;
                }
                Plan::Scan { from, to } => {
                    let job = match ahead.take() {
                        Some((at, job)) if at == from => job,
                        _ => self.spawn_scan(log, from, to, filter),
                    };
                    let chunk = match job.await {
                        Ok(Ok(Scanned::Chunk(chunk))) => chunk,
                        Ok(Ok(Scanned::Replan)) => continue,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "read stream cannot read LogsDB");
                            return Ended::Error(error_of(e));
                        }
                        Err(_) => {
                            let msg = "a read stream's LogsDB task failed";
                            return Ended::Error(remote(ErrorCode::Internal, msg));
                        }
                    };
                    let messages = cursor.after_scan(chunk);
                    // Read the next chunk while this one is pushed.
                    let (released, trim) = self.logsdb.release_and_trim(log);
                    if let Plan::Scan { from, to } = cursor.plan(released, trim) {
                        ahead = Some((from, self.spawn_scan(log, from, to, filter)));
                    }
                    messages
                }
            };
            for message in &messages {
                match sink.push(message).await {
                    Ok(()) => {
                        if let ClientResponse::Records(records) = message {
                            let metrics = &self.config.metrics;
                            metrics.read_records.inc_by(records.len() as u64);
                            let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
                            metrics.read_bytes.inc_by(bytes as u64);
                        }
                    }
                    Err(e @ (TransportError::FrameTooLarge { .. } | TransportError::Encode(_))) => {
                        // Batches are bounded well below the frame limit: a bug or a
                        // frame limit configured below `read_batch_bytes` + one payload.
                        tracing::error!(error = %e, "cannot push a read-stream message");
                        let msg = format!("cannot push a read-stream message: {e}");
                        return Ended::Error(remote(ErrorCode::Internal, msg));
                    }
                    Err(_) => return Ended::Gone,
                }
            }
            if matches!(messages.last(), Some(ClientResponse::ReadDone)) {
                return Ended::Finish;
            }
        }
    }
}
