#!/usr/bin/env bash
# Short runs of the benchmarks, so CI proves they still work. Full runs: docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
out="${TMPDIR:-/tmp}/tally-smoke"
mkdir -p "$out"
cargo run -q -p tally -- --version
cargo bench -q -p tally-benches --bench wire -- --test
cargo run -q -p tally -- bench epochstore --quick --json "$out/epochstore.json"
cargo run -q -p tally -- bench storage --quick --json "$out/storage.json"
cargo run -q -p tally -- bench write --quick --json "$out/write.json"
cargo run -q -p tally -- bench read --quick --json "$out/read.json"
# Tally against NATS JetStream on tiny sizes (docs/BENCHMARKS.md): the whole pipeline — the
# NATS virtual environment (cached in ~/.cache/tally-compare), both clusters, limits, JSON,
# plots — in about 2 minutes; it fails on a problem (a system that acknowledged nothing, a tail
# reader that missed an acknowledged append), not on missed targets.
cargo run -q -p tally-benches --bin compare -- --smoke --json "$out/compare.json"
