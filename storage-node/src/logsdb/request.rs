//! Write operations sent to the writer threads, their results, and [`Ticket`], the handle on
//! one operation's acknowledgement (awaitable from async code, or waited on from a thread).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Barrier, Mutex};

use tally_common::{Durability, Epoch, Esn, LogId, Lsn, RecordHeader};
use tokio::sync::oneshot;

use super::directory::PartitionId;
use super::error::LogsDbError;
use super::retention::RetentionReport;

/// A record ready for the writer: its header and its value already encoded and checksummed
/// (by the caller's thread, so the writer thread only merges and writes). The copyset-index
/// value is encoded by the writer from the header of the copy it writes (merged or not),
/// into a buffer it reuses: a separate small allocation per record, made on the caller's
/// thread and freed on the writer's, cost more than the encoding.
#[derive(Debug)]
pub(crate) struct PreparedRecord {
    pub header: RecordHeader,
    pub value: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum Op {
    Store(Vec<PreparedRecord>),
    Seal {
        log: LogId,
        epoch: Epoch,
    },
    Trim {
        log: LogId,
        lsn: Lsn,
    },
    SetLastReleased {
        log: LogId,
        lsn: Lsn,
    },
    SetLastCleanEpoch {
        log: LogId,
        epoch: Epoch,
    },
    SetEpochLng {
        log: LogId,
        epoch: Epoch,
        lng: Esn,
    },
    /// Delete the copy at `(log, lsn)` and its copyset-index entry (a repair and test tool).
    RemoveCopy {
        log: LogId,
        lsn: Lsn,
    },
    /// Apply time-based retention (backlog per log, ms) and drop dead partitions.
    Retention {
        backlogs_ms: BTreeMap<LogId, u64>,
    },
    /// Start a new partition now.
    Roll,
}

impl Op {
    pub(crate) fn value_bytes(&self) -> usize {
        match self {
            Op::Store(records) => records.iter().map(|r| r.value.len()).sum(),
            _ => 64,
        }
    }

    /// Which writer threads this operation needs: the one owning its log, every one owning a
    /// log of a store (usually one), or all of them (operations on the partition list).
    pub(crate) fn shards(&self, shards: usize) -> Shards {
        let one = |log: &LogId| Shards(1 << shard_of(*log, shards));
        match self {
            Op::Store(records) => {
                let mask = records
                    .iter()
                    .fold(0, |m, r| m | 1 << shard_of(r.header.log, shards));
                Shards(mask.max(1))
            }
            Op::Seal { log, .. }
            | Op::Trim { log, .. }
            | Op::SetLastReleased { log, .. }
            | Op::SetLastCleanEpoch { log, .. }
            | Op::SetEpochLng { log, .. }
            | Op::RemoveCopy { log, .. } => one(log),
            Op::Retention { .. } | Op::Roll => Shards(u64::MAX >> (64 - shards)),
        }
    }

    /// Operations that touch the partition list run alone, with every writer thread paused.
    pub(crate) fn is_global(&self) -> bool {
        matches!(self, Op::Retention { .. } | Op::Roll)
    }
}

/// The writer thread that owns `log` (its metadata, its directory entries, its writes).
pub(crate) fn shard_of(log: LogId, shards: usize) -> usize {
    (log.0 % shards as u64) as usize
}

/// A set of writer threads, as a bit mask (`LogsDbConfig::writer_threads` is at most 64): no
/// allocation on the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shards(u64);

impl Shards {
    /// How many writer threads are in the set.
    pub(crate) fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The one writer thread of a set of one.
    pub(crate) fn only(self) -> Option<usize> {
        (self.len() == 1).then(|| self.0.trailing_zeros() as usize)
    }

    /// The writer threads of the set, in increasing order.
    pub(crate) fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |i| self.0 & (1 << i) != 0)
    }
}

/// What the writer threads' queues carry.
#[derive(Debug)]
pub(crate) enum Msg {
    /// An operation on logs of this writer thread only.
    Request(Request),
    /// An operation that needs several writer threads (see [`Exclusive`]).
    Exclusive(Arc<Exclusive>),
}

impl Msg {
    pub(crate) fn value_bytes(&self) -> usize {
        match self {
            Msg::Request(r) => r.op.value_bytes(),
            Msg::Exclusive(_) => 64,
        }
    }
}

/// An operation run by one writer thread while the others it involves are paused: queued to
/// each of them (in the same order relative to other exclusive operations: they are queued
/// under one lock), so it runs after everything queued before it on each. The last thread to
/// arrive runs it with every writer thread's state locked; the others wait until it is done.
pub(crate) struct Exclusive {
    pub arrive: Barrier,
    pub leave: Barrier,
    pub request: Mutex<Option<Request>>,
}

impl Exclusive {
    pub(crate) fn new(parties: usize, request: Request) -> Exclusive {
        Exclusive {
            arrive: Barrier::new(parties),
            leave: Barrier::new(parties),
            request: Mutex::new(Some(request)),
        }
    }
}

impl fmt::Debug for Exclusive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exclusive").finish_non_exhaustive()
    }
}

pub(crate) type Reply = oneshot::Sender<Result<OpResult, LogsDbError>>;

#[derive(Debug)]
pub(crate) struct Request {
    pub op: Op,
    pub durability: Durability,
    pub reply: Reply,
}

/// The result of a trim: the trim point now in force, and whether this call moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimOutcome {
    pub trim_point: Lsn,
    pub advanced: bool,
}

#[derive(Debug)]
pub(crate) enum OpResult {
    Done,
    Sealed(Epoch),
    Trimmed(TrimOutcome),
    Retention(RetentionReport),
    Rolled(PartitionId),
}

/// The pending acknowledgement of one write operation.
pub struct Ticket<T> {
    rx: oneshot::Receiver<Result<OpResult, LogsDbError>>,
    map: fn(OpResult) -> T,
}

impl<T> fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").finish_non_exhaustive()
    }
}

impl<T> Ticket<T> {
    pub(crate) fn new(
        rx: oneshot::Receiver<Result<OpResult, LogsDbError>>,
        map: fn(OpResult) -> T,
    ) -> Self {
        Ticket { rx, map }
    }

    /// Waits for the acknowledgement from async code (never blocks the executor).
    pub async fn wait_async(self) -> Result<T, LogsDbError> {
        let r = self.rx.await.map_err(|_| LogsDbError::Closed)?;
        r.map(self.map)
    }

    /// Waits for the acknowledgement on the calling thread. Not for async contexts.
    pub fn wait(self) -> Result<T, LogsDbError> {
        let mut rx = self.rx;
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(oneshot::error::TryRecvError::Empty) => {
                rx.blocking_recv().map_err(|_| LogsDbError::Closed)?
            }
            Err(oneshot::error::TryRecvError::Closed) => return Err(LogsDbError::Closed),
        };
        r.map(self.map)
    }
}

// Result mappings for tickets (the writer answers each operation with its own variant).

pub(crate) fn done(_: OpResult) {}

pub(crate) fn sealed(r: OpResult) -> Epoch {
    match r {
        OpResult::Sealed(e) => e,
        other => unreachable!("seal answered {other:?}"),
    }
}

pub(crate) fn trimmed(r: OpResult) -> TrimOutcome {
    match r {
        OpResult::Trimmed(t) => t,
        other => unreachable!("trim answered {other:?}"),
    }
}

pub(crate) fn retention(r: OpResult) -> RetentionReport {
    match r {
        OpResult::Retention(rep) => rep,
        other => unreachable!("retention answered {other:?}"),
    }
}

pub(crate) fn rolled(r: OpResult) -> PartitionId {
    match r {
        OpResult::Rolled(p) => p,
        other => unreachable!("roll answered {other:?}"),
    }
}
