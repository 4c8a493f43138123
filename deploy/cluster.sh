#!/usr/bin/env bash
# Brings up (or stops) a Ringlog cluster of brokers on this host, one process per broker, each
# with its own data dir, Kafka port and RPC (Raft) port. For trying a cluster on one machine
# and for the tests; on real hosts run the same `ringlog` command once per host (see
# deploy/README.md).
#
#   deploy/cluster.sh start DIR [N]   start N brokers (default 3) with data under DIR
#   deploy/cluster.sh stop DIR        SIGTERM every broker started in DIR, wait for exit
#   deploy/cluster.sh status DIR      which brokers of DIR are running
#
# Environment:
#   RINGLOG_BIN   broker binary (default: target/release/ringlog, built if missing)
#   KAFKA_PORTS   comma-separated Kafka ports, one per broker (default 9092,9093,...)
#   RPC_PORTS     comma-separated RPC ports, one per broker (default 9192,9202,...); a broker
#                 with C cores listens for brokers on C consecutive ports from its own
#   CORES         cores per broker (default 1)
#   EXTRA_ARGS    more flags for every broker
#
# `start` returns once every broker answers on its Kafka port (the controller quorum is up),
# or fails after 60 s with the logs' tails. Logs: DIR/nodeN.log; pids: DIR/nodeN.pid.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
n=${3:-3}
if [[ -z "$cmd" || -z "$dir" ]]; then
    sed -n '2,20p' "$0"
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${RINGLOG_BIN:-$repo/target/release/ringlog}

ports() { # $1 = list or empty, $2 = default base, $3 = step
    if [[ -n "$1" ]]; then tr ',' ' ' <<<"$1"; else seq "$2" "${3:-1}" $(($2 + (n - 1) * ${3:-1})) | tr '\n' ' '; fi
}

case "$cmd" in
start)
    if [[ ! -x "$bin" ]]; then
        (cd "$repo" && cargo build --release --bin ringlog)
    fi
    mkdir -p "$dir"
    read -r -a kafka <<<"$(ports "${KAFKA_PORTS:-}" 9092)"
    read -r -a rpc <<<"$(ports "${RPC_PORTS:-}" 9192 10)"
    if ((${#kafka[@]} < n || ${#rpc[@]} < n)); then
        echo "need $n Kafka and RPC ports" >&2
        exit 2
    fi
    peers=""
    for ((i = 1; i <= n; i++)); do
        peers+="${peers:+,}$i@127.0.0.1:${rpc[i - 1]}"
    done
    for ((i = 1; i <= n; i++)); do
        if [[ -f "$dir/node$i.pid" ]] && kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
            echo "node $i already running" >&2
            continue
        fi
        # shellcheck disable=SC2086
        nohup "$bin" --node-id "$i" --data-dir "$dir/data$i" \
            --kafka-addr "127.0.0.1:${kafka[i - 1]}" --rpc-addr "127.0.0.1:${rpc[i - 1]}" \
            --peers "$peers" --cores "${CORES:-1}" ${EXTRA_ARGS:-} \
            >"$dir/node$i.log" 2>&1 </dev/null &
        echo $! >"$dir/node$i.pid"
    done
    deadline=$((SECONDS + 60))
    for ((i = 1; i <= n; i++)); do
        until grep -q "listening for Kafka clients" "$dir/node$i.log" 2>/dev/null; do
            if ((SECONDS > deadline)) || ! kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
                echo "node $i did not come up; last lines of $dir/node$i.log:" >&2
                tail -n 20 "$dir/node$i.log" >&2 || true
                exit 1
            fi
            sleep 0.1
        done
    done
    bootstrap=""
    for ((i = 1; i <= n; i++)); do bootstrap+="${bootstrap:+,}127.0.0.1:${kafka[i - 1]}"; done
    echo "cluster of $n brokers up; bootstrap servers: $bootstrap"
    ;;
stop)
    for pidfile in "$dir"/node*.pid; do
        [[ -f "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pidfile in "$dir"/node*.pid; do
        [[ -f "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$pidfile: still running after 20 s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    ;;
status)
    for pidfile in "$dir"/node*.pid; do
        [[ -f "$pidfile" ]] || continue
        if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "$(basename "$pidfile" .pid): running (pid $(cat "$pidfile"))"
        else
            echo "$(basename "$pidfile" .pid): not running"
        fi
    done
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
