//! Tally's cross-crate tests. `tests/` holds integration tests that stand up several roles
//! together over real QUIC on loopback: the client's append path against a real sequencer
//! runtime and fake storage nodes (`tests/client_append.rs`), and tests over a whole
//! in-process cluster ([`cluster::TestCluster`]: real storage nodes, sequencers and epoch
//! store). The multi-process tests live with the binary in `ops/tests/`.

pub mod chaos;
pub mod cluster;
pub mod sim;
