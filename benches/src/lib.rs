//! Tally's micro benchmarks (criterion, under `benches/`). The end-to-end load generator and
//! the peer comparison live in the `tally bench` commands of the `tally` binary.
