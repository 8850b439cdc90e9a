//! The vocabulary of the read stream: its configuration, what it delivers to the application
//! ([`Delivery`]: records and typed gaps), what it asks of the runtime ([`Action`]: open, slide,
//! close and rewind streams, fetch metadata, report stalls), the [`StreamId`] that tells a
//! stream's incarnations apart, and its counters.

use std::time::Duration;

use tally_common::wire::client::ClientRequest;
use tally_common::wire::{GapKind, ReadFilter, ReadRecord};
use tally_common::{Epoch, LogId, Lsn, NodeId};

/// What to read and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadStreamConfig {
    /// The log to read.
    pub log: LogId,
    /// First LSN to deliver (inclusive).
    pub from: Lsn,
    /// Last LSN to deliver (inclusive); [`Lsn::MAX`] to follow the log forever.
    pub until: Lsn,
    /// Most LSNs each node may ship beyond what the application has consumed (bounded
    /// buffering). The window actually used is also bounded by `window_bytes`.
    pub window: u64,
    /// Bytes of records (payload and header, estimated from what arrives) the window may span
    /// beyond what the application has consumed: keeps buffering bounded in bytes whatever the
    /// record size, while small records get a window of many LSNs. In all-send-all mode every
    /// copy holder ships the window, so up to R times this may be in flight.
    pub window_bytes: u64,
    /// How long to wait for the rest of the node set once an f-majority proved absence.
    pub grace: Duration,
    /// Single-copy delivery: each record is shipped by one node of its copyset.
    pub single_copy: bool,
    /// Seed for the nodes' copyset shuffle in single-copy mode.
    pub shuffle_seed: u64,
    /// Server-side time and payload filter (`tally grep`); [`RecordFilter::default`] passes
    /// everything. A filtered read runs all-send-all whatever `single_copy` says, and types
    /// proved-absent ranges inside an epoch `Filtered` instead of `DataLoss` (see
    /// [`super::ReadStream`]).
    pub record_filter: RecordFilter,
}

/// Which records a filtered read wants: timestamps in `min_timestamp_ms ..= max_timestamp_ms`
/// and payloads matching `payload_regex` (Rust `regex` syntax, on bytes; empty: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFilter {
    /// Earliest record timestamp wanted (ms since the Unix epoch, inclusive).
    pub min_timestamp_ms: u64,
    /// Latest record timestamp wanted (ms since the Unix epoch, inclusive).
    pub max_timestamp_ms: u64,
    /// Payload pattern; empty matches every payload.
    pub payload_regex: String,
}

impl Default for RecordFilter {
    /// Every record.
    fn default() -> RecordFilter {
        RecordFilter {
            min_timestamp_ms: 0,
            max_timestamp_ms: u64::MAX,
            payload_regex: String::new(),
        }
    }
}

impl RecordFilter {
    /// Whether the filter passes every record (an ordinary read).
    pub fn is_everything(&self) -> bool {
        *self == RecordFilter::default()
    }
}

impl ReadStreamConfig {
    /// Default `window`: LSNs each node may ship ahead.
    pub const DEFAULT_WINDOW: u64 = 8192;
    /// Default `window_bytes`: 16 MiB ahead of the application (8,192 LSNs of 2 KiB records;
    /// 16 of 1 MiB records).
    pub const DEFAULT_WINDOW_BYTES: u64 = 16 * 1024 * 1024;
    /// Default `grace`: the wait for the rest of the node set after an f-majority.
    pub const DEFAULT_GRACE: Duration = Duration::from_millis(100);

    /// All-send-all read of `from ..= until` with default window and grace period.
    pub fn new(log: LogId, from: Lsn, until: Lsn) -> ReadStreamConfig {
        ReadStreamConfig {
            log,
            from,
            until,
            window: Self::DEFAULT_WINDOW,
            window_bytes: Self::DEFAULT_WINDOW_BYTES,
            grace: Self::DEFAULT_GRACE,
            single_copy: false,
            shuffle_seed: 0,
            record_filter: RecordFilter::default(),
        }
    }
}

/// Why a read stream cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadStreamError {
    /// `from` is past `until`.
    #[error("empty read range {from}..={until}")]
    EmptyRange {
        /// The first LSN asked for.
        from: Lsn,
        /// The last LSN asked for.
        until: Lsn,
    },
    /// `window` is 0.
    #[error("the read window must be at least one LSN")]
    ZeroWindow,
    /// `window_bytes` is 0.
    #[error("the read window must span at least one byte")]
    ZeroWindowBytes,
}

/// One incarnation of a node's read stream. A rewind or reconnect makes a new one, so late
/// messages of the old one can be told apart and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The node the stream reads from.
    pub node: NodeId,
    /// Which of that node's streams (counts up on every reopen).
    pub incarnation: u64,
}

/// What the application receives, in strictly increasing LSN order with no LSN left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A record, checksum verified.
    Record(ReadRecord),
    /// No record in `from ..= to`, for the reason `kind` (never `NoRecords`).
    Gap {
        /// Why there is no record (see [`GapKind`]).
        kind: GapKind,
        /// First LSN of the gap.
        from: Lsn,
        /// Last LSN of the gap (inclusive).
        to: Lsn,
    },
}

impl Delivery {
    /// First LSN covered.
    pub fn from(&self) -> Lsn {
        match self {
            Delivery::Record(r) => r.header.lsn,
            Delivery::Gap { from, .. } => *from,
        }
    }

    /// Last LSN covered.
    pub fn to(&self) -> Lsn {
        match self {
            Delivery::Record(r) => r.header.lsn,
            Delivery::Gap { to, .. } => *to,
        }
    }
}

/// Why the stream was rewound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewindReason {
    /// A node went down or came back while in single-copy mode.
    DownNodesChanged,
    /// Single-copy delivery saw an apparent gap; checking in all-send-all mode.
    SuspectedGap,
    /// The suspected gap is behind us: back to single-copy delivery.
    BackToSingleCopy,
    /// Single-copy delivery stalled on nodes that did not move past a missing LSN while an
    /// f-majority did (dead without the reader knowing yet, or slow): still single copy, with
    /// them in the known-down list so the other copy holders ship their records.
    SlowShippers,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `StartRead` to `stream.node` (see [`Action::request`]).
    OpenStream {
        /// The stream (node and incarnation) to open.
        stream: StreamId,
        /// First LSN the node should ship.
        from: Lsn,
        /// Last LSN the node should ship.
        until: Lsn,
        /// How far the node may ship before the next window update.
        window_until: Lsn,
        /// Server-side filter (single copy, known-down nodes, record filter).
        filter: ReadFilter,
    },
    /// Send `ReadWindow { until }` on the stream.
    SendWindow {
        /// The stream.
        stream: StreamId,
        /// The new end of its window.
        until: Lsn,
    },
    /// Send `StopRead` and drop the stream; ignore whatever else it sends.
    CloseStream {
        /// The stream.
        stream: StreamId,
    },
    /// Informational (logs, metrics): every stream was reopened from `from`. The
    /// `CloseStream` / `OpenStream` actions that do it follow.
    Rewind {
        /// Where the streams were reopened.
        from: Lsn,
        /// Whether they were reopened in single-copy mode.
        single_copy: bool,
        /// The known-down list of the reopened streams' filters (down and slow nodes).
        known_down: Vec<NodeId>,
        /// Why.
        reason: RewindReason,
    },
    /// The node set of `epoch` is needed: fetch the log's metadata and call
    /// [`ReadStream::on_epoch_metadata`](super::ReadStream::on_epoch_metadata).
    FetchMetadata {
        /// The epoch whose node set is missing.
        epoch: Epoch,
    },
    /// The reader cannot decide `at` without nodes it cannot hear from; it waits (reported
    /// again whenever the position or the set changes).
    Stalled {
        /// The next LSN to deliver.
        at: Lsn,
        /// The nodes whose answers are needed.
        waiting_for: Vec<NodeId>,
    },
    /// Every LSN up to `until` was delivered; all streams are closed.
    Done,
}

impl Action {
    /// The wire request that carries a stream action, if it is one.
    pub fn request(&self, log: LogId) -> Option<ClientRequest> {
        match self {
            Action::OpenStream {
                from,
                until,
                window_until,
                filter,
                ..
            } => Some(ClientRequest::StartRead {
                log,
                from: *from,
                until: *until,
                window_until: *window_until,
                filter: filter.clone(),
            }),
            Action::SendWindow { until, .. } => Some(ClientRequest::ReadWindow { until: *until }),
            Action::CloseStream { .. } => Some(ClientRequest::StopRead),
            _ => None,
        }
    }
}

/// Counters for observability and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Copies dropped because the LSN was already buffered or delivered.
    pub duplicates: u64,
    /// Copies dropped because their checksum (or log, or flags) was wrong.
    pub bad_copies: u64,
    /// Messages of streams that were already closed.
    pub stale_messages: u64,
    /// Records beyond the stream's window or `until` (a misbehaving node).
    pub out_of_window: u64,
    /// Times every stream was reopened.
    pub rewinds: u64,
}
