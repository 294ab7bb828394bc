#!/usr/bin/env bash
# Runs the whole colex test suite: unit tests, root tests of the silo
# runtime, and multi-host cluster tests in lab network namespaces.
# Run as root; without root the root tests are skipped (and fail when CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
