#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then checks formatting, lints and runs
# every test. This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use (none yet beyond the Rust toolchain; kcat and the Python
# clients arrive with the broker's integration tests).
need_apt=()
for pkg in ; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

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
