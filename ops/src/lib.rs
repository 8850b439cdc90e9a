//! The library behind the `tally` binary (DESIGN §11): everything but argument dispatch, so
//! the cross-role tests (`tests/`) can start nodes and dev clusters in process.
//!
//! Layout: `node` (one node's roles behind one endpoint, shared by `server` and `dev`),
//! `server` (`tally server`), `dev` (`tally dev`, a cluster in one process), `config` (the
//! node's TOML config, layered file → env → flags), `cli` (`tally append`, `tally log`, …),
//! `signals` (SIGINT / SIGTERM), `bench` (`tally bench`), `admin` (the admin HTTP port:
//! metrics, health, readiness, the status page), `logging` (`RUST_LOG`, `TALLY_LOG_FORMAT`).

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod logging;
pub mod node;
pub mod server;
pub mod signals;
