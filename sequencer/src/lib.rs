//! The sequencer role (DESIGN §5): hands out LSNs of a log in its current epoch, tracks their
//! completion, advances the last known good ESN and the release point, and hands abandoned LSNs
//! and ESN exhaustion to a new epoch. It never sees payload bytes: clients place copies.
//!
//! Layout: `window` (one epoch's sliding window of granted / completed ESNs), `log_sequencer`
//! (the per-log state machine: grants, reports, releases, preemption, reactivation),
//! `recovery` (sealing, digesting and repairing the epochs an activation inherits: re-replicate
//! or plug each uncertain ESN, bridge, clean, last clean epoch). All are pure — events in,
//! actions out — so the simulator drives the same code as the server. `runtime` runs them over
//! the network: placement, activation through the epoch store, the client-facing service and
//! the release broadcaster.

pub mod log_sequencer;
pub mod recovery;
pub mod runtime;
pub mod window;

pub use log_sequencer::{
    Action, Activation, LogSequencer, ReactivateReason, SequenceOutcome, SequencerTiming,
};
pub use window::{CompleteError, EpochWindow, GrantError};
