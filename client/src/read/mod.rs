//! Reading a log (DESIGN §8): [`Client::read`] resolves where to start and stop, then one
//! task per reader drives the pure [`ReadStream`] over QUIC and hands its deliveries — records
//! and typed gaps, every LSN of the range exactly once, in order — to a [`Reader`]: an async
//! [`Stream`](futures_core::Stream) (or [`Reader::next`]), or a blocking iterator
//! ([`Reader::blocking`]).
//!
//! Layout: this file (options, errors, [`Reader`], [`BlockingReader`], [`Stall`]), `driver`
//! (the task: executes the stream's actions, feeds it what nodes push, ticks it, marks nodes
//! down and probes them back up with backoff, fetches metadata), `node_stream` (one push
//! stream to one node: `StartRead`, window updates, `StopRead`).
//!
//! Memory is bounded: each node ships at most `window` LSNs beyond what the application took,
//! and at most `buffer` deliveries wait in the channel to the application; a consumer that does
//! not take them stops the window from sliding, so the nodes stop shipping (backpressure).
//!
//! Stalls are not errors: when the nodes the reader can hear from are too few to decide the
//! next LSN, it waits (it never guesses) and says so through [`Reader::stalled`] and
//! [`Reader::stall_updates`], naming the nodes it waits for and their last errors. The stream
//! of deliveries simply pauses. The only errors the stream yields are fatal ones (the log was
//! deleted, the client shut down), after which it ends.
//!
//! Dropping the [`Reader`] stops everything: the task sends `StopRead` on every stream and
//! ends.

mod driver;
mod node_stream;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tally_common::wire::{FindTimeAccuracy, MAX_FILTER_REGEX_BYTES};
use tally_common::{LogId, Lsn, NodeId};
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminError};
use crate::client::Client;
pub use crate::reader::Delivery;
pub use crate::reader::RecordFilter;
use crate::reader::{ReadStream, ReadStreamConfig, ReadStreamError};

/// The compiled-size bound storage nodes put on a filter regex (checked here first).
const FILTER_REGEX_SIZE_LIMIT_BYTES: usize = 256 << 10;

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// At this LSN (inclusive).
    Lsn(Lsn),
    /// At the oldest LSN (what was trimmed arrives as one `Trim` gap).
    Oldest,
    /// At the first record with a timestamp at or after this time (ms since the Unix epoch),
    /// found with a strict [`Client::find_time`].
    Time(u64),
}

/// Where a read ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadUntil {
    /// At this LSN (inclusive), waiting for it to be written if need be.
    Lsn(Lsn),
    /// At the log's tail when the read starts ([`Client::tail_lsn`]).
    Tail,
    /// Never: follow the log as it grows.
    Forever,
}

/// What to read and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Where to start (default: the oldest LSN).
    pub from: ReadFrom,
    /// Where to stop (default: never, following the log).
    pub until: ReadUntil,
    /// Most LSNs each node may ship beyond what the application took (per-reader buffering).
    pub window: u64,
    /// Bytes of records each node may ship beyond what the application took (estimated from
    /// the records' sizes; bounds the buffering of logs of large records). The window is
    /// whichever of `window` and `window_bytes` is smaller.
    pub window_bytes: u64,
    /// Single-copy delivery: each record is shipped by one node of its copyset instead of all
    /// R, which divides read traffic by R. The reader falls back to all nodes shipping
    /// everything whenever a node is down or a record looks missing, so this never costs a
    /// record; it costs a rewind when nodes come and go. On by default.
    pub single_copy: bool,
    /// How long to wait for the rest of the node set once an f-majority proved a gap.
    pub grace: Duration,
    /// Deliveries that may wait for the application (records and gaps).
    pub buffer: usize,
    /// Server-side time and payload filter (default: every record). Nodes ship only the
    /// records that pass it; the reader then runs all-send-all and delivers
    /// [`GapKind::Filtered`](tally_common::wire::GapKind::Filtered) gaps where nothing
    /// passes (see [`crate::reader::ReadStream`]).
    pub filter: RecordFilter,
}

impl Default for ReadOptions {
    /// The whole log, from the oldest LSN, following it forever.
    fn default() -> ReadOptions {
        ReadOptions {
            from: ReadFrom::Oldest,
            until: ReadUntil::Forever,
            window: ReadStreamConfig::DEFAULT_WINDOW,
            window_bytes: ReadStreamConfig::DEFAULT_WINDOW_BYTES,
            single_copy: true,
            grace: ReadStreamConfig::DEFAULT_GRACE,
            buffer: 64,
            filter: RecordFilter::default(),
        }
    }
}

impl ReadOptions {
    /// `from ..= until` with the other options at their defaults.
    pub fn range(from: ReadFrom, until: ReadUntil) -> ReadOptions {
        ReadOptions {
            from,
            until,
            ..ReadOptions::default()
        }
    }

    fn validate(&self) -> Result<(), ReadError> {
        let bad = |reason: &str| Err(ReadError::InvalidOptions(reason.to_owned()));
        if self.window == 0 {
            return bad("window must be at least one LSN");
        }
        if self.buffer == 0 {
            return bad("buffer must hold at least one delivery");
        }
        if self.grace.is_zero() {
            return bad("grace must be greater than zero");
        }
        let f = &self.filter;
        if f.min_timestamp_ms > f.max_timestamp_ms {
            return bad("the filter's time range is empty");
        }
        if f.payload_regex.len() > MAX_FILTER_REGEX_BYTES {
            return bad("the filter's regex is too long");
        }
        if !f.payload_regex.is_empty() {
            // The nodes compile it with the same bound; refusing it here gives the reason
            // at once instead of streams refused by every node.
            regex::bytes::RegexBuilder::new(&f.payload_regex)
                .size_limit(FILTER_REGEX_SIZE_LIMIT_BYTES)
                .dfa_size_limit(FILTER_REGEX_SIZE_LIMIT_BYTES)
                .build()
                .map_err(|e| ReadError::InvalidOptions(format!("bad filter regex: {e}")))?;
        }
        Ok(())
    }
}

/// Why a read could not start, or (fatal, the last item of the stream) had to end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The log does not exist (or was deleted while being read).
    #[error("log {log} does not exist")]
    LogNotFound {
        /// The log asked for.
        log: LogId,
    },
    /// An explicit `from` LSN is past an explicit `until` LSN. (A start resolved from a time,
    /// or an end resolved as the tail, that leaves nothing to read gives a reader that ends
    /// at once instead.)
    #[error("empty read range {from}..={until}")]
    EmptyRange {
        /// The first LSN asked for.
        from: Lsn,
        /// The last LSN asked for.
        until: Lsn,
    },
    /// A [`ReadOptions`] value is out of range (the message says which).
    #[error("invalid read options: {0}")]
    InvalidOptions(String),
    /// Resolving the start (metadata, tail, time) failed; retry later.
    #[error("cannot start reading: {0}")]
    Start(AdminError),
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
}

impl From<AdminError> for ReadError {
    fn from(e: AdminError) -> ReadError {
        match e {
            AdminError::LogNotFound { log } => ReadError::LogNotFound { log },
            AdminError::Shutdown => ReadError::Shutdown,
            other => ReadError::Start(other),
        }
    }
}

impl From<ReadError> for AdminError {
    fn from(e: ReadError) -> AdminError {
        match e {
            ReadError::LogNotFound { log } => AdminError::LogNotFound { log },
            ReadError::Shutdown => AdminError::Shutdown,
            ReadError::Start(e) => e,
            other => AdminError::Unexpected {
                reason: other.to_string(),
            },
        }
    }
}

/// The reader is waiting at `at` for nodes it cannot hear from (DESIGN §1: it never guesses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// The next LSN to deliver.
    pub at: Lsn,
    /// Nodes whose answers are needed (down, or not authoritative).
    pub waiting_for: Vec<NodeId>,
    /// The last error of each of those nodes, when there is one.
    pub errors: Vec<(NodeId, String)>,
}

type Item = Result<Delivery, ReadError>;

/// What a reader moved so far: what the nodes shipped against what the application got. With
/// single-copy delivery `payload_bytes_received / payload_bytes_delivered` stays near 1; with
/// every node shipping everything it is near the replication factor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Record copies received from nodes (duplicates and bad copies included).
    pub records_received: u64,
    /// Payload bytes of those copies.
    pub payload_bytes_received: u64,
    /// Records handed to the application.
    pub records_delivered: u64,
    /// Payload bytes of those records.
    pub payload_bytes_delivered: u64,
    /// Times the reader reopened every node stream (down nodes, suspected gaps).
    pub rewinds: u64,
}

/// The counters behind [`ReaderStats`], written by the reader's task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records_received: AtomicU64,
    pub payload_bytes_received: AtomicU64,
    pub records_delivered: AtomicU64,
    pub payload_bytes_delivered: AtomicU64,
    pub rewinds: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ReaderStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReaderStats {
            records_received: get(&self.records_received),
            payload_bytes_received: get(&self.payload_bytes_received),
            records_delivered: get(&self.records_delivered),
            payload_bytes_delivered: get(&self.payload_bytes_delivered),
            rewinds: get(&self.rewinds),
        }
    }
}

/// A running read of one log: deliveries in LSN order. See the module documentation.
#[derive(Debug)]
pub struct Reader {
    log: LogId,
    from: Lsn,
    until: Lsn,
    rx: mpsc::Receiver<Item>,
    stall: watch::Receiver<Option<Stall>>,
    counters: Arc<Counters>,
}

impl Reader {
    /// The next delivery; `None` once everything up to `until` was delivered (or after a
    /// fatal error). Cancel safe.
    pub async fn next(&mut self) -> Option<Result<Delivery, ReadError>> {
        self.rx.recv().await
    }

    /// The log being read.
    pub fn log(&self) -> LogId {
        self.log
    }

    /// The first LSN of the read, as resolved at start.
    pub fn from_lsn(&self) -> Lsn {
        self.from
    }

    /// The last LSN of the read, as resolved at start (`Lsn::MAX` when following).
    pub fn until_lsn(&self) -> Lsn {
        self.until
    }

    /// Where the reader is stalled and for whom, if it is right now.
    pub fn stalled(&self) -> Option<Stall> {
        self.stall.borrow().clone()
    }

    /// What the reader moved so far (see [`ReaderStats`]).
    pub fn stats(&self) -> ReaderStats {
        self.counters.snapshot()
    }

    /// A receiver that sees every change of [`Reader::stalled`].
    pub fn stall_updates(&self) -> watch::Receiver<Option<Stall>> {
        self.stall.clone()
    }

    /// This reader as a blocking iterator, for code outside async contexts. The reader's
    /// task keeps running on the runtime the client was made on, which must stay alive (a
    /// multi-thread runtime, or one driven by another thread).
    pub fn blocking(self) -> BlockingReader {
        BlockingReader { reader: self }
    }
}

impl futures_core::Stream for Reader {
    type Item = Result<Delivery, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A [`Reader`] as a blocking [`Iterator`]. Must not be used from within an async task (it
/// blocks the thread).
#[derive(Debug)]
pub struct BlockingReader {
    reader: Reader,
}

impl BlockingReader {
    /// The reader behind it (stall reports, range).
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Back to the async reader.
    pub fn into_inner(self) -> Reader {
        self.reader
    }
}

impl Iterator for BlockingReader {
    type Item = Result<Delivery, ReadError>;

    fn next(&mut self) -> Option<Item> {
        self.reader.rx.blocking_recv()
    }
}

impl Client {
    /// Starts reading `log` (see [`ReadOptions`] and the module documentation). Fails when
    /// the log does not exist, the options are invalid or the start cannot be resolved;
    /// everything after that — nodes going away and coming back, epochs changing — is the
    /// reader's business.
    pub async fn read(&self, log: LogId, options: ReadOptions) -> Result<Reader, ReadError> {
        options.validate()?;
        let shared = self.shared();
        if shared.shutdown.is_cancelled() {
            return Err(ReadError::Shutdown);
        }
        let meta = admin::fetch_metadata(shared, log).await?;
        let from = match options.from {
            ReadFrom::Lsn(lsn) => lsn.max(Lsn::OLDEST),
            ReadFrom::Oldest => Lsn::OLDEST,
            ReadFrom::Time(ms) => self.find_time(log, ms, FindTimeAccuracy::Strict).await?,
        };
        let until = match options.until {
            ReadUntil::Lsn(lsn) => lsn,
            ReadUntil::Tail => admin::fetch_tail(shared, log).await?,
            ReadUntil::Forever => Lsn::MAX,
        };
        let (tx, rx) = mpsc::channel(options.buffer);
        let (stall_tx, stall) = watch::channel(None);
        let counters = Arc::new(Counters::default());
        let reader = Reader {
            log,
            from,
            until,
            rx,
            stall,
            counters: counters.clone(),
        };
        if from > until {
            let explicit = !matches!(options.from, ReadFrom::Time(_))
                && matches!(options.until, ReadUntil::Lsn(_));
            if explicit {
                return Err(ReadError::EmptyRange { from, until });
            }
            // Nothing after the time or up to the tail: a finished reader (no sender).
            return Ok(reader);
        }
        let config = ReadStreamConfig {
            log,
            from,
            until,
            window: options.window,
            window_bytes: options.window_bytes,
            grace: options.grace,
            single_copy: options.single_copy,
            shuffle_seed: rand::random(),
            record_filter: options.filter.clone(),
        };
        let stream = ReadStream::new(config, &meta).map_err(|e| match e {
            ReadStreamError::EmptyRange { from, until } => ReadError::EmptyRange { from, until },
            ReadStreamError::ZeroWindow | ReadStreamError::ZeroWindowBytes => {
                ReadError::InvalidOptions(e.to_string())
            }
        })?;
        // Nodes gone since the last refresh are then known down at once (see `driver`).
        shared.refresh_soon();
        driver::spawn(
            shared.clone(),
            log,
            stream,
            options.grace,
            tx,
            stall_tx,
            counters,
        );
        Ok(reader)
    }
}
