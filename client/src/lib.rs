//! The Rust client library of Tally, written sans I/O: its state machines take events with the
//! current time passed in and return actions; the QUIC runtime that executes those actions
//! comes later, as do admin calls.
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

pub mod appender;
pub mod error;
pub mod graylist;
pub mod placement;
pub mod reader;

pub use appender::{AppendPolicy, Appender, check_payloads};
pub use error::{AppendError, IndeterminateCause};
pub use graylist::{AvoidReason, Graylist, GraylistConfig};
pub use placement::{CopysetSelector, DomainScope, PlacementError, PlacementNode};
