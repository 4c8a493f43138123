#!/usr/bin/env bash
# Black-box integration tests: the `ringlog` broker driven over TCP on 127.0.0.1 by real Kafka
# clients (kcat, confluent-kafka, kafka-python) and raw sockets (tests/python).
#
# Idempotent: installs kcat if missing, creates .venv-tests and installs
# tests/python/requirements.txt into it unless already done for the same requirements, builds
# the broker, then runs pytest with a global time limit. Extra arguments go to pytest, e.g.
#   scripts/integration.sh -k crash
#
# Environment:
#   RINGLOG_BIN              use this broker binary and skip the cargo build
#   LOADGEN_BIN              use this ringlog-loadgen binary and skip its cargo build
#   BROKER_CMD_TEMPLATE      test another Kafka-compatible broker (see tests/python/conftest.py);
#                            skips the cargo build
#   INTEGRATION_TIMEOUT      global limit in seconds for the pytest run (default 1800)
set -euo pipefail
cd "$(dirname "$0")/.."

# kcat (Debian package). `apt-get update` only when the package cannot be found without it.
if ! command -v kcat >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq kcat >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq kcat
  fi
fi

# Python clients in their own venv.
venv=.venv-tests
req=tests/python/requirements.txt
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
[ -f "$venv/.gitignore" ] || echo '*' >"$venv/.gitignore"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] ||
  ! "$venv/bin/python" -c 'import confluent_kafka, kafka, pytest, pytest_timeout' 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
fi

# The broker (debug build: the tests' default RINGLOG_BIN is target/debug/ringlog).
if [ -z "${RINGLOG_BIN:-}" ] && [ -z "${BROKER_CMD_TEMPLATE:-}" ]; then
  cargo build -p ringlog-server --bin ringlog
fi
# The load generator (tests/python/test_loadgen.py; LOADGEN_BIN overrides).
if [ -z "${LOADGEN_BIN:-}" ]; then
  cargo build -p ringlog-loadgen --bin ringlog-loadgen
fi

# Broker data must live on a disk filesystem: O_DIRECT does not work on tmpfs.
tmp_fs=$(stat -f -c %T "${TMPDIR:-/tmp}")
if [ "$tmp_fs" = "tmpfs" ]; then
  export TMPDIR="$PWD/target/test-tmp"
  mkdir -p "$TMPDIR"
fi

export PYTHONDONTWRITEBYTECODE=1
# SIGTERM at the limit lets pytest tear down (stop the brokers); SIGKILL 30 s later if not.
# Brokers also die with pytest (they run under setpriv --pdeathsig KILL).
exec timeout -k 30 "${INTEGRATION_TIMEOUT:-1800}" \
  "$venv/bin/python" -m pytest -x -q -ra -p no:cacheprovider tests/python "$@"
