//! The Rust client library of Tally. Its protocol logic is written sans I/O: the state
//! machines take events with the current time passed in and return actions; a thin tokio
//! runtime executes those actions over QUIC. Admin calls come later.
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
//! the quorum checker, single-copy delivery with an all-send-all rewind before any `DataLoss`).
//!
//! The write and read state machines each have their own `Event`/`Action` types; use them
//! through their module paths.

mod append;
pub mod appender;
pub mod buffered;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod graylist;
mod latency;
pub mod placement;
pub mod reader;
mod sequence;

pub use appender::{AppendPolicy, Appender, check_payloads};
pub use buffered::{BufferedConfig, BufferedWriter};
pub use client::{Client, ConnectError};
pub use cluster::{ClusterError, ClusterState, ClusterView};
pub use config::{ClientConfig, ConfigError};
pub use error::{AppendError, IndeterminateCause};
pub use graylist::{AvoidReason, Graylist, GraylistConfig};
pub use placement::{CopysetSelector, DomainScope, PlacementError, PlacementNode};
