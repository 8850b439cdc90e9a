//! The Rust client library of Tally. Its protocol logic is written sans I/O: the state
//! machines take events with the current time passed in and return actions; a thin tokio
//! runtime executes those actions over QUIC.
//!
//! Runtime (DESIGN §5–§6): `client` ([`Client`]: connect, `append`, `append_batch`, one
//! connector, graylist and cluster view shared by every append), `config` ([`ClientConfig`]),
//! `cluster` ([`ClusterView`]/[`ClusterState`]: `GetClusterState` from seeds, refreshed
//! periodically and on errors, sequencer ranking), `sequence` (grants: redirects,
//! `no_redirect` takeover, `SeqNoBufs` backoff), `append` (one appender driven over the
//! transport, `ReportStored` in the background), `buffered` ([`BufferedWriter`]: size, count
//! and time triggers, bounded memory).
//!
//! Write path (DESIGN §6): `placement` ([`CopysetSelector`]: R distinct nodes, weighted,
//! spread over failure domains, avoiding unhealthy nodes), `appender` ([`Appender`], one
//! granted batch written to R nodes in waves, with its `appender::Event`s and
//! `appender::Action`s), `graylist` ([`Graylist`]: nodes to route around, with expiry),
//! `error` ([`AppendError`], which says whether a failed append may have happened).
//! Read path (DESIGN §8): `reader` ([`reader::ReadStream`]: one stream per node of each
//! epoch's node set, merged by LSN, deduplicated, checksums verified, every gap typed through
//! the quorum checker, single-copy delivery with an all-send-all rewind before any `DataLoss`),
//! and its runtime `read` ([`Client::read`] → [`Reader`]: an async `Stream` or a blocking
//! iterator of [`Delivery`]s, one task per reader, node streams reopened after failures with
//! backoff, stalls reported as [`Stall`], bounded memory).
//!
//! Admin calls (DESIGN §8, §11): `admin` ([`Client::trim`], [`Client::find_time`],
//! [`Client::tail_lsn`], [`Client::is_log_empty`], [`Client::data_size`],
//! [`Client::log_metadata`]; answers combined over an f-majority of each node set).
//!
//! The write and read state machines each have their own `Event`/`Action` types; use them
//! through their module paths.

#![warn(missing_docs)]

pub mod admin;
mod append;
pub mod appender;
pub mod buffered;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod graylist;
mod latency;
mod mux;
pub mod placement;
pub mod read;
pub mod reader;
mod sequence;
mod suspects;

pub use admin::{AdminError, ScanEstimate};
pub use appender::{AppendPolicy, Appender, check_payloads};
pub use buffered::{BufferedConfig, BufferedWriter};
pub use client::{Client, ConnectError};
pub use cluster::{ClusterError, ClusterState, ClusterView};
pub use config::{ClientConfig, ConfigError};
pub use error::{AppendError, IndeterminateCause};
pub use graylist::{AvoidReason, Graylist, GraylistConfig};
pub use placement::{CopysetSelector, DomainScope, PlacementError, PlacementNode};
pub use read::{
    BlockingReader, ReadError, ReadFrom, ReadOptions, ReadUntil, Reader, ReaderStats, RecordFilter,
    Stall,
};
pub use reader::Delivery;
pub use tally_common::wire::{FindTimeAccuracy, GapKind};
