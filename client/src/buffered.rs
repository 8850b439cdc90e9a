//! The buffered writer (DESIGN §6 "batching is first class"; LogDevice's `BufferedWriter`):
//! many small appends to one log become one grant and one STORE batch per copyset member,
//! while every caller still gets its own `Result<Lsn, AppendError>`.
//!
//! A batch is flushed when it holds `max_batch_records` records, when the next record would
//! take it past `max_batch_bytes`, when its first record has waited `max_delay`, or on
//! [`BufferedWriter::flush`]. [`Batcher`] makes that decision (pure, time passed in); one
//! task per writer feeds it and sends each flushed batch as one `append_batch` on its own
//! task. Memory is bounded: a caller first takes `payload.len()` of `max_buffered_bytes`
//! and gives it back when its batch's outcome is known, so appends wait while the writer
//! holds that much. Each flushed batch is queued with the client's other appends to the log
//! as it is flushed (and may be coalesced with them), so batches are granted in flush order
//! and the writer's records get LSNs in the order they reached it; a failed batch fails
//! alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_common::limits::FRAME_OVERHEAD_BYTES;
use tally_common::{Limits, LogId, Lsn};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::appender::{RECORD_OVERHEAD_BYTES, check_payloads};
use crate::client::Shared;
use crate::config::ConfigError;
use crate::error::{AppendError, IndeterminateCause};

/// Triggers and memory bound of a [`BufferedWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferedConfig {
    /// Count trigger: a batch holding this many records is sent.
    pub max_batch_records: usize,
    /// Size trigger: a batch is sent before a record would take it past this many payload
    /// bytes (a single larger record goes alone).
    pub max_batch_bytes: usize,
    /// Time trigger: a batch is sent this long after its first record arrived.
    pub max_delay: Duration,
    /// Payload bytes the writer may hold (buffered or in flight) before appends wait.
    pub max_buffered_bytes: usize,
}

impl Default for BufferedConfig {
    fn default() -> Self {
        BufferedConfig {
            max_batch_records: 1024,
            max_batch_bytes: 256 * 1024,
            max_delay: Duration::from_millis(5),
            max_buffered_bytes: 32 * 1024 * 1024,
        }
    }
}

impl BufferedConfig {
    /// Checks the triggers against the client's `limits`: every batch must fit one grant
    /// and one STORE frame, and the memory bound must admit the largest payload.
    pub fn validate(&self, limits: &Limits) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        if self.max_batch_records == 0
            || self.max_batch_records > limits.max_records_per_batch as usize
        {
            return Err(invalid(
                "buffered.max_batch_records",
                format!(
                    "{} is outside 1..={} (limits.max_records_per_batch)",
                    self.max_batch_records, limits.max_records_per_batch
                ),
            ));
        }
        if self.max_delay.is_zero() || self.max_batch_bytes == 0 {
            return Err(invalid(
                "buffered.max_delay / max_batch_bytes",
                "must be greater than zero".into(),
            ));
        }
        let frame = limits.max_frame_bytes.saturating_sub(FRAME_OVERHEAD_BYTES);
        let worst = self.max_batch_bytes.max(limits.max_payload_bytes)
            + self.max_batch_records * RECORD_OVERHEAD_BYTES;
        if worst > frame {
            return Err(invalid(
                "buffered.max_batch_bytes",
                format!("a batch of up to {worst} bytes does not fit a {frame}-byte STORE frame"),
            ));
        }
        if self.max_buffered_bytes < limits.max_payload_bytes.max(self.max_batch_bytes)
            || self.max_buffered_bytes > Semaphore::MAX_PERMITS
        {
            return Err(invalid(
                "buffered.max_buffered_bytes",
                format!(
                    "{} must hold the largest payload ({}) and a full batch ({})",
                    self.max_buffered_bytes, limits.max_payload_bytes, self.max_batch_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Why a batch was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// It held `max_batch_records` records.
    Count,
    /// The next record would have taken it past `max_batch_bytes`.
    Bytes,
    /// `max_delay` passed since its first record arrived.
    Time,
    /// The application asked ([`BufferedWriter::flush`], or the writer is closing).
    Explicit,
}

/// A batch ready to send: payloads in arrival order, each with its caller's `T`.
#[derive(Debug)]
pub struct Batch<T> {
    /// The records, in arrival order.
    pub payloads: Vec<Vec<u8>>,
    /// One per payload, in the same order: who waits for each record's outcome.
    pub waiters: Vec<T>,
    /// Which trigger sent the batch.
    pub reason: FlushReason,
}

/// The batching decisions of one writer, with the time passed in.
#[derive(Debug)]
pub struct Batcher<T> {
    config: BufferedConfig,
    payloads: Vec<Vec<u8>>,
    waiters: Vec<T>,
    bytes: usize,
    /// When the first record of the current batch arrived.
    since: Option<Instant>,
}

impl<T> Batcher<T> {
    /// An empty batcher with `config`'s triggers (validated by the caller).
    pub fn new(config: BufferedConfig) -> Batcher<T> {
        Batcher {
            config,
            payloads: Vec::new(),
            waiters: Vec::new(),
            bytes: 0,
            since: None,
        }
    }

    /// Adds one record; returns the batches to send now (the previous one if this record
    /// would overflow it, and this one if it is full).
    pub fn push(&mut self, payload: Vec<u8>, waiter: T, now: Instant) -> Vec<Batch<T>> {
        let mut ready = Vec::new();
        if !self.payloads.is_empty() && self.bytes + payload.len() > self.config.max_batch_bytes {
            ready.extend(self.take(FlushReason::Bytes));
        }
        self.since.get_or_insert(now);
        self.bytes += payload.len();
        self.payloads.push(payload);
        self.waiters.push(waiter);
        if self.payloads.len() >= self.config.max_batch_records {
            ready.extend(self.take(FlushReason::Count));
        } else if self.bytes >= self.config.max_batch_bytes {
            ready.extend(self.take(FlushReason::Bytes));
        }
        ready
    }

    /// When the current batch must go, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + self.config.max_delay)
    }

    /// The current batch if its time trigger has fired at `now`.
    pub fn poll_time(&mut self, now: Instant) -> Option<Batch<T>> {
        match self.deadline() {
            Some(at) if at <= now => self.take(FlushReason::Time),
            _ => None,
        }
    }

    /// The current batch, if any, whatever the triggers say.
    pub fn take(&mut self, reason: FlushReason) -> Option<Batch<T>> {
        if self.payloads.is_empty() {
            return None;
        }
        self.since = None;
        self.bytes = 0;
        Some(Batch {
            payloads: std::mem::take(&mut self.payloads),
            waiters: std::mem::take(&mut self.waiters),
            reason,
        })
    }

    /// Records in the current batch.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether the current batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

/// One caller waiting for its record's outcome; the permit is its share of the memory bound.
type Waiter = (
    oneshot::Sender<Result<Lsn, AppendError>>,
    OwnedSemaphorePermit,
);

enum Command {
    Append { payload: Vec<u8>, waiter: Waiter },
    Flush,
}

/// Many small appends to one log, batched. Cheap to clone; the batching task ends when every
/// clone is dropped (after sending what it holds) or when the client closes.
#[derive(Debug, Clone)]
pub struct BufferedWriter {
    log: LogId,
    limits: Limits,
    tx: mpsc::Sender<Command>,
    memory: Arc<Semaphore>,
}

impl BufferedWriter {
    pub(crate) fn start(shared: Arc<Shared>, log: LogId, config: BufferedConfig) -> BufferedWriter {
        let (tx, rx) = mpsc::channel(config.max_batch_records.min(4096));
        let writer = BufferedWriter {
            log,
            limits: shared.config.transport.limits,
            tx,
            memory: Arc::new(Semaphore::new(config.max_buffered_bytes)),
        };
        let tracker = shared.tracker.clone();
        tracker.spawn(run(shared, log, config, rx));
        writer
    }

    /// The log this writer appends to.
    pub fn log(&self) -> LogId {
        self.log
    }

    /// Appends one record through the buffer; its LSN once its batch is stored on R nodes.
    /// Waits while the writer holds `max_buffered_bytes`.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn, AppendError> {
        check_payloads(std::slice::from_ref(&payload), &self.limits)?;
        let permits = u32::try_from(payload.len().max(1)).expect("payload within the limits");
        let permit = self
            .memory
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| AppendError::Shutdown)?;
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Command::Append {
                payload,
                waiter: (reply, permit),
            })
            .await
            .map_err(|_| AppendError::Shutdown)?;
        // Every batch answers its waiters; a dropped sender means its task died mid-append,
        // so the outcome is unknown.
        outcome.await.unwrap_or(Err(AppendError::Indeterminate {
            cause: IndeterminateCause::TimedOut,
        }))
    }

    /// Sends what the writer holds now, without waiting for its outcome.
    pub async fn flush(&self) {
        let _ = self.tx.send(Command::Flush).await;
    }
}

/// The batching task of one writer.
async fn run(
    shared: Arc<Shared>,
    log: LogId,
    config: BufferedConfig,
    mut rx: mpsc::Receiver<Command>,
) {
    let mut batcher: Batcher<Waiter> = Batcher::new(config);
    loop {
        let deadline = batcher.deadline().map(tokio::time::Instant::from_std);
        let command = tokio::select! {
            command = rx.recv() => command,
            () = sleep_until_some(deadline) => {
                let now = tokio::time::Instant::now().into_std();
                if let Some(batch) = batcher.poll_time(now) {
                    send(&shared, log, batch);
                }
                continue;
            }
            () = shared.shutdown.cancelled() => None,
        };
        match command {
            Some(Command::Append { payload, waiter }) => {
                let now = tokio::time::Instant::now().into_std();
                for batch in batcher.push(payload, waiter, now) {
                    send(&shared, log, batch);
                }
            }
            Some(Command::Flush) => {
                if let Some(batch) = batcher.take(FlushReason::Explicit) {
                    send(&shared, log, batch);
                }
            }
            None => {
                if let Some(batch) = batcher.take(FlushReason::Explicit) {
                    send(&shared, log, batch);
                }
                // Appends still queued (the client is closing) were never sent.
                rx.close();
                while let Ok(command) = rx.try_recv() {
                    if let Command::Append { waiter, .. } = command {
                        let _ = waiter.0.send(Err(AppendError::Shutdown));
                    }
                }
                return;
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queues `batch` now (flush order is grant order) and answers each waiter on a task of its
/// own.
fn send(shared: &Arc<Shared>, log: LogId, batch: Batch<Waiter>) {
    tracing::trace!(%log, records = batch.payloads.len(), reason = ?batch.reason, "flushing batch");
    let pending = crate::append::enqueue(shared, log, batch.payloads);
    shared.tracker.spawn(async move {
        let outcome = match pending {
            Ok(pending) => pending.outcome().await,
            Err(e) => Err(e),
        };
        for (i, (reply, _permit)) in batch.waiters.into_iter().enumerate() {
            let result = match &outcome {
                Ok(lsns) => Ok(Lsn(lsns.start().0 + i as u64)),
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(result);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BufferedConfig {
        BufferedConfig {
            max_batch_records: 4,
            max_batch_bytes: 100,
            max_delay: Duration::from_millis(10),
            max_buffered_bytes: 1 << 20,
        }
    }

    #[test]
    fn count_trigger_sends_a_full_batch() {
        let t0 = Instant::now();
        let mut b = Batcher::new(config());
        for i in 0..3 {
            assert!(b.push(vec![1], i, t0).is_empty());
        }
        let ready = b.push(vec![1], 3, t0);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].waiters, vec![0, 1, 2, 3]);
        assert_eq!(ready[0].reason, FlushReason::Count);
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[test]
    fn size_trigger_sends_before_overflowing_and_alone_when_big() {
        let t0 = Instant::now();
        let mut b = Batcher::new(config());
        assert!(b.push(vec![0; 60], 'a', t0).is_empty());
        // 60 + 50 > 100: the first batch goes, the new record starts the next one.
        let ready = b.push(vec![0; 50], 'b', t0);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].waiters, vec!['a']);
        assert_eq!(ready[0].reason, FlushReason::Bytes);
        assert_eq!(b.len(), 1);
        // A record larger than the trigger flushes what is there and goes alone.
        let ready = b.push(vec![0; 300], 'c', t0);
        let waiters: Vec<Vec<char>> = ready.into_iter().map(|r| r.waiters).collect();
        assert_eq!(waiters, vec![vec!['b'], vec!['c']]);
        assert!(b.is_empty());
        // Exactly reaching the trigger sends at once.
        let ready = b.push(vec![0; 100], 'd', t0);
        assert_eq!(ready.len(), 1);
    }

    #[test]
    fn time_trigger_counts_from_the_first_record() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batcher::new(config());
        assert!(b.poll_time(t0 + ms(100)).is_none());
        b.push(vec![1], 1, t0);
        b.push(vec![1], 2, t0 + ms(8));
        assert_eq!(b.deadline(), Some(t0 + ms(10)));
        assert!(b.poll_time(t0 + ms(9)).is_none());
        let batch = b.poll_time(t0 + ms(10)).expect("time trigger");
        assert_eq!(batch.waiters, vec![1, 2]);
        assert_eq!(batch.reason, FlushReason::Time);
        // The next batch's clock starts with its own first record.
        b.push(vec![1], 3, t0 + ms(50));
        assert_eq!(b.deadline(), Some(t0 + ms(60)));
    }

    #[test]
    fn config_must_fit_the_limits() {
        let limits = Limits::default();
        BufferedConfig::default().validate(&limits).unwrap();
        let too_many = BufferedConfig {
            max_batch_records: limits.max_records_per_batch as usize + 1,
            ..BufferedConfig::default()
        };
        assert!(too_many.validate(&limits).is_err());
        let too_big = BufferedConfig {
            max_batch_bytes: limits.max_frame_bytes,
            ..BufferedConfig::default()
        };
        assert!(too_big.validate(&limits).is_err());
        let too_little_memory = BufferedConfig {
            max_buffered_bytes: 1000,
            ..BufferedConfig::default()
        };
        assert!(too_little_memory.validate(&limits).is_err());
    }
}
