#!/usr/bin/env bash
# The whole default test suite (what CI runs). Needs ops/setup.sh to have run once.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
cargo nextest run --config-file .ci/nextest.toml --workspace --all-features --no-fail-fast --profile ci "$@"
