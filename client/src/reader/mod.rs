//! The read path of the client (DESIGN §8), sans I/O: [`ReadStream`] merges the per-node read
//! streams of one log into records and typed gaps, and says which streams to open, slide,
//! close or rewind; the runtime that runs it over QUIC is `crate::read` ([`crate::Reader`]).
//!
//! Layout: `read_stream` ([`ReadStream`], the state machine), `types` (its
//! [`ReadStreamConfig`], the [`Delivery`]s it hands the application, the [`Action`]s it asks of
//! the runtime, [`StreamId`], [`ReadStats`]), `gap` (f-majority proofs of absence over the one
//! quorum checker, and gap typing). Tests: `tests` (one unit test per
//! rule) and `model_tests` (a property test against a model of the log, over simulated nodes).

pub mod gap;
pub mod read_stream;
pub mod types;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use read_stream::ReadStream;
pub use types::{
    Action, Delivery, ReadStats, ReadStreamConfig, ReadStreamError, RecordFilter, RewindReason,
    StreamId,
};
