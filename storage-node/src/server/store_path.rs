//! One STORE batch, from a client (`ClientRequest::Store`) or from recovery / rebuilding
//! (`NodeRequest::Store`), and the mapping of LogsDB errors to wire answers.
//!
//! Order of checks (LogDevice's STORE handling, reference §5.1): the copyset must name this
//! node (`BadRequest` otherwise: the sender placed the copy wrongly and retrying cannot help);
//! the deadline must not have passed; the batch must fit the in-flight budgets (`Overloaded`
//! at once); the disk must have room (`NoSpace`); then LogsDB verifies every payload checksum
//! before anything is queued (`ChecksumMismatch{lsn}` of the first bad record, nothing
//! stored), applies the seal / soft-seal rule to the whole batch (`Preempted{seal}`, nothing
//! stored) and writes with the batch's durability (`Durable` answers after the WAL fsync,
//! `Fast` after the write). AMEND batches carry no payload; LogsDB's precedence merge amends
//! the metadata of a copy already there.
//!
//! After a write or sync failure LogsDB refuses all writes until restart: such stores get
//! `Disabled`, or `NoSpace` when the failure was ENOSPC (`disk::is_no_space`).

use tally_common::wire::{ErrorCode, RemoteError, StoreBatch, StoreStatus};
use tally_common::{Lsn, RecordHeader};
use tokio::time::Instant;
use tracing::Instrument;

use super::StorageNode;
use super::admission::Admission;
use super::disk::is_no_space;
use crate::logsdb::{LogRecord, LogsDbError};

/// What became of a LogsDB call, in wire terms.
pub(crate) enum Outcome {
    /// A store status (including refusals that are answers, not errors).
    Status(StoreStatus),
    Error(RemoteError),
}

pub(crate) fn remote(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError::new(code, message)
}

/// A LogsDB error as the answer to a store.
pub(crate) fn store_outcome(node: &StorageNode, e: LogsDbError) -> Outcome {
    match e {
        LogsDbError::Preempted { seal, .. } => Outcome::Status(StoreStatus::Preempted {
            seal,
            // LogsDB keeps the seal epoch only, not who sealed.
            sequencer: None,
        }),
        LogsDbError::PayloadChecksum { lsn, .. } => {
            Outcome::Status(StoreStatus::ChecksumMismatch { lsn })
        }
        LogsDbError::Failed(msg) => {
            node.note_write_failure();
            if is_no_space(&msg) {
                Outcome::Status(StoreStatus::NoSpace)
            } else {
                Outcome::Status(StoreStatus::Disabled)
            }
        }
        LogsDbError::RocksDb(e) if is_no_space(e.as_ref()) => Outcome::Status(StoreStatus::NoSpace),
        other => Outcome::Error(error_of(other)),
    }
}

/// A LogsDB error (other than the store answers above) as a wire error.
pub(crate) fn error_of(e: LogsDbError) -> RemoteError {
    let code = match &e {
        LogsDbError::PayloadTooLarge { .. }
        | LogsDbError::TooManyRecords { .. }
        | LogsDbError::InvalidRecord { .. }
        | LogsDbError::Copyset { .. }
        | LogsDbError::PayloadChecksum { .. } => ErrorCode::BadRequest,
        LogsDbError::Closed | LogsDbError::Failed(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "LogsDB error");
    }
    remote(code, e.to_string())
}

/// The request's deadline has passed: the caller gave up, do not start the work.
pub(crate) fn expired(deadline: Instant) -> Option<RemoteError> {
    (Instant::now() >= deadline).then(|| {
        remote(
            ErrorCode::Timeout,
            "deadline passed before the work started",
        )
    })
}

impl StorageNode {
    /// Handles one STORE batch (see the module docs for the order of checks).
    pub(crate) async fn store_batch(&self, batch: StoreBatch, deadline: Instant) -> Outcome {
        let span = tracing::debug_span!("store", node = %self.id(), log = %batch.log,
            first = %batch.records.first().map_or(Lsn::INVALID, |r| r.lsn), n = batch.records.len());
        let (records, bytes) = (batch.records.len() as u64, batch.payload_bytes() as u64);
        let started = Instant::now();
        let outcome = self
            .store_batch_inner(batch, deadline)
            .instrument(span)
            .await;
        let metrics = &self.config.metrics;
        if let Outcome::Status(StoreStatus::Stored) = outcome {
            metrics.stores.inc();
            metrics.stored_records.inc_by(records);
            metrics.stored_bytes.inc_by(bytes);
            metrics.store_latency.observe(started.elapsed());
        } else {
            metrics.stores_refused.inc();
        }
        outcome
    }

    async fn store_batch_inner(&self, batch: StoreBatch, deadline: Instant) -> Outcome {
        if !batch.copyset.contains(self.id()) {
            return Outcome::Error(remote(
                ErrorCode::BadRequest,
                format!(
                    "copyset {:?} of the store does not contain node {}",
                    batch.copyset.nodes(),
                    self.id()
                ),
            ));
        }
        if let Some(e) = expired(deadline) {
            return Outcome::Error(e);
        }
        let cost = Admission::cost(batch.records.len(), batch.payload_bytes());
        let Some(admitted) = self.admission.try_admit(cost) else {
            tracing::debug!(cost, "store refused: in-flight budget exhausted");
            return Outcome::Status(StoreStatus::Overloaded);
        };
        if self.disk.is_full() {
            return Outcome::Status(StoreStatus::NoSpace);
        }
        let StoreBatch {
            log,
            copyset,
            wave_or_seal,
            flags,
            durability,
            lng,
            records,
        } = batch;
        let records: Vec<LogRecord> = records
            .into_iter()
            .map(|r| LogRecord {
                header: RecordHeader {
                    log,
                    lsn: r.lsn,
                    timestamp_ms: r.timestamp_ms,
                    lng,
                    wave_or_seal,
                    flags,
                    copyset: copyset.clone(),
                    payload_crc32: r.payload_crc32,
                },
                payload: Vec::from(r.payload),
            })
            .collect();
        // LogsDB checks every payload against its crc32 (one pass, also seeding the stored
        // value's checksum) before the write is queued, so a mismatch stores nothing.
        let ticket = match self.logsdb.submit_store(records, durability).await {
            Ok(ticket) => ticket,
            Err(e) => return self.refused(e),
        };
        // The permits stay taken until LogsDB acknowledges, even if the caller gives up (the
        // transport drops this future at the deadline): a queued write is still work.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tracker.spawn(async move {
            let result = ticket.wait_async().await;
            drop(admitted);
            let _ = tx.send(result);
        });
        match rx.await {
            Ok(Ok(())) => Outcome::Status(StoreStatus::Stored),
            Ok(Err(e)) => self.refused(e),
            Err(_) => Outcome::Error(remote(ErrorCode::Internal, "store acknowledgement lost")),
        }
    }

    fn refused(&self, e: LogsDbError) -> Outcome {
        let out = store_outcome(self, e);
        if let Outcome::Status(s) = &out {
            tracing::debug!(status = ?s, "store refused");
        }
        out
    }
}
