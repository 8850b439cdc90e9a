//! The recovery digest stream (DESIGN §9 step 3): `StartDigest{log, epoch, after}` opened as a
//! push stream; the node sends every record it holds of `log` in `epoch` with ESN > `after`,
//! released or not, with their metadata, in LSN order, as `DigestRecords` messages of at most
//! `digest_batch_bytes` payload bytes (and `MAX_READ_BATCH` records), then `DigestDone`.
//!
//! LogsDB reads are synchronous, so one blocking-pool task walks the records and hands
//! batches over a channel of two slots: the reader stays at most two messages ahead of the
//! network (bounded memory), and stops when the stream goes away or the server shuts down. A
//! copy that fails verification counts as missing on this node (DESIGN §3), but that a write
//! happened there is still known: it is sent as *evidence* (an `AMEND` copy without payload),
//! which forbids recovery to plug a hole at its ESN, so a damaged copy of an acknowledged
//! record ends as `DataLoss` for readers, never as a false `Hole`.

use tally_common::transport::{NodeProtocol, RequestContext, ServerStream};
use tally_common::wire::client::MAX_READ_BATCH;
use tally_common::wire::node::{NodeRequest, NodeResponse};
use tally_common::wire::{ErrorCode, ReadRecord, RemoteError};
use tally_common::{Copyset, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::StorageNode;
use super::admission::RECORD_OVERHEAD_BYTES;
use super::store_path::{error_of, remote};
use crate::logsdb::ReadItem;

/// What a digest says of a copy that failed verification: a payload-less `AMEND` naming only
/// this node, which recovery treats as evidence of a write and never as content.
fn evidence(log: LogId, lsn: Lsn, node: NodeId) -> ReadRecord {
    ReadRecord {
        header: RecordHeader {
            log,
            lsn,
            timestamp_ms: 0,
            lng: Esn::INVALID,
            wave_or_seal: 0,
            flags: RecordFlags::AMEND,
            copyset: Copyset::new(vec![node]).expect("one node is a valid copyset"),
            payload_crc32: 0,
        },
        payload: Vec::new(),
    }
}

impl StorageNode {
    pub(crate) async fn serve_open(
        &self,
        ctx: RequestContext,
        req: NodeRequest,
        mut stream: ServerStream<NodeProtocol>,
    ) {
        let NodeRequest::StartDigest { log, epoch, after } = req else {
            stream
                .reject(remote(
                    ErrorCode::BadRequest,
                    "the only node-protocol stream is StartDigest",
                ))
                .await;
            return;
        };
        let span = tracing::debug_span!("digest", node = %self.id(), %log, %epoch, %after);
        self.digest(ctx, log, epoch, after, stream)
            .instrument(span)
            .await;
    }

    async fn digest(
        &self,
        ctx: RequestContext,
        log: LogId,
        epoch: Epoch,
        after: Esn,
        mut stream: ServerStream<NodeProtocol>,
    ) {
        let (tx, mut rx) = mpsc::channel::<Result<Vec<ReadRecord>, RemoteError>>(2);
        if let Some(first) = after.next() {
            let db = self.logsdb.clone();
            let max_bytes = self.config.digest_batch_bytes;
            let node = self.id();
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                for item in db.read(log, Lsn::new(epoch, first), Lsn::epoch_end(epoch)) {
                    match item {
                        Ok(ReadItem::Record(r)) => {
                            bytes += r.payload.len() + RECORD_OVERHEAD_BYTES;
                            batch.push(ReadRecord {
                                header: r.header,
                                payload: r.payload,
                            });
                            if (bytes >= max_bytes || batch.len() >= MAX_READ_BATCH)
                                && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err()
                            {
                                return;
                            }
                            if batch.is_empty() {
                                bytes = 0;
                            }
                        }
                        Ok(ReadItem::Trimmed { .. }) => {}
                        Ok(ReadItem::Corrupt { lsn, kind }) => {
                            // Its content is lost here, but a write happened: recovery must
                            // not plug a hole over it (it may be an acknowledged record).
                            tracing::warn!(%node, %log, %lsn, %kind, "corrupt copy sent as evidence only");
                            bytes += RECORD_OVERHEAD_BYTES;
                            batch.push(evidence(log, lsn, node));
                            if batch.len() >= MAX_READ_BATCH
                                && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err()
                            {
                                return;
                            }
                            if batch.is_empty() {
                                bytes = 0;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(error_of(e)));
                            return;
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.blocking_send(Ok(batch));
                }
            });
        } else {
            drop(tx);
        }
        loop {
            let next = tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    stream.reject(remote(ErrorCode::Unavailable, "node is shutting down")).await;
                    return;
                }
                next = rx.recv() => next,
            };
            match next {
                Some(Ok(records)) => {
                    if stream
                        .push(&NodeResponse::DigestRecords(records))
                        .await
                        .is_err()
                    {
                        return; // the recovery went away; dropping `rx` stops the reader
                    }
                }
                Some(Err(e)) => {
                    stream.reject(e).await;
                    return;
                }
                None => break,
            }
        }
        if stream.push(&NodeResponse::DigestDone).await.is_ok() {
            let (sink, _control) = stream.split();
            sink.finish();
        }
    }
}
