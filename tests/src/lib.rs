//! Tally's cross-crate tests. `tests/` holds integration tests that stand up several roles
//! together over real QUIC on loopback (today: the client's append path against a real
//! sequencer runtime and fake storage nodes, `tests/client_append.rs`). The multi-process
//! tests, the simulator and the chaos harness come with the issues that need them.
