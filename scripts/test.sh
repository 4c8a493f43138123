#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then checks formatting, lints and runs
# every test. This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test data must live on a disk filesystem: O_DIRECT does not work on tmpfs.
tmp_fs=$(stat -f -c %T "${TMPDIR:-/tmp}")
if [ "$tmp_fs" = "tmpfs" ]; then
  export TMPDIR="$PWD/target/test-tmp"
  mkdir -p "$TMPDIR"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Bounded in time: the whole suite takes a few minutes on 2 cores.
timeout 1500 cargo test --workspace --all-targets
# Black-box tests of the real broker with kcat, confluent-kafka and kafka-python (installs
# kcat and a Python venv on first use).
INTEGRATION_TIMEOUT=1200 scripts/integration.sh
