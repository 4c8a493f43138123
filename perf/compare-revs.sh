#!/usr/bin/env bash
# Regression check between two git revisions: build each in its own worktree (release), run
# the same workload on a fresh broker with each, and compare with `ringlog-loadgen compare`.
#
#   perf/compare-revs.sh REV_A REV_B [--workload FILE] [--rate R] [--duration S] [--threshold T]
#
# Defaults: perf/workloads/omb-1topic-100p-1k.toml at 10000 msg/s for 20 s, threshold 0.1.
# Exit 0: no regression beyond the threshold; 1: B regressed; other: a step failed.
# Broker on CPU 0, load generator on CPU 1 (as perf/run.py). Worktrees and builds live in
# perf/tmp/ and are reused.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 2 ]] || { sed -n '2,9p' "$0"; exit 2; }
A=$1 B=$2; shift 2
WORKLOAD=$ROOT/perf/workloads/omb-1topic-100p-1k.toml RATE=10000 DURATION=20 THRESHOLD=0.1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workload) WORKLOAD=$(realpath "$2"); shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --threshold) THRESHOLD=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
TMP=$ROOT/perf/tmp/compare
mkdir -p "$TMP"
CPUS=$(nproc)
LG_CPU=$([[ $CPUS -gt 1 ]] && echo 1-1 || echo 0-0)

build() { # rev -> dir with binaries
  local rev sha wt
  rev=$1
  sha=$(git -C "$ROOT" rev-parse --short=12 "$rev")
  wt=$TMP/wt-$sha
  if [[ ! -d $wt ]]; then
    git -C "$ROOT" worktree add --detach "$wt" "$sha" >/dev/null
  fi
  (cd "$wt" && timeout 1800 cargo build --release -q -p ringlog-server -p ringlog-loadgen \
    --target-dir "$TMP/target-$sha") >&2
  echo "$TMP/target-$sha/release"
}

bench() { # bin-dir label -> json path
  local bins=$1 label=$2 data port pid out
  data=$(mktemp -d /tmp/ringlog-compare-XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bins/ringlog" --data-dir "$data" --kafka-addr "127.0.0.1:$port" --cores 0-0 \
    >"$TMP/broker-$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  out=$TMP/result-$label.json
  set +e
  # The candidate's load generator measures both, so only the broker differs.
  timeout 600 "$LOADGEN" run --workload "$WORKLOAD" --bootstrap "127.0.0.1:$port" \
    --cores "$LG_CPU" --rate "$RATE" --duration "$DURATION" --json "$out" --quiet >&2
  set -e
  kill -TERM $pid; wait $pid || true
  rm -rf "$data"
  echo "$out"
}

BIN_A=$(build "$A")
BIN_B=$(build "$B")
LOADGEN=$BIN_B/ringlog-loadgen
[[ -x $LOADGEN ]] || LOADGEN=$ROOT/target/release/ringlog-loadgen
RA=$(bench "$BIN_A" a)
RB=$(bench "$BIN_B" b)
"$LOADGEN" compare "$RA" "$RB" --threshold "$THRESHOLD"
