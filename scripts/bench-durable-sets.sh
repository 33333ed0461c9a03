#!/usr/bin/env bash
# Durable semi-sync sets against 3 replica processes and a balancer on
# loopback, each replica with --data-dir on this machine's disk.
# Usage: scripts/bench-durable-sets.sh [extra replica flags...]   (e.g. --sync-every-op)
# Env: CLIENTS (50), DURATION (10s), KEYS (1000), BIN (target/release/kvnode), PORT (18080).
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/kvnode}
CLIENTS=${CLIENTS:-50}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-1000}
PORT=${PORT:-18080}
DATA=$(mktemp -d "${DATA_PARENT:-${CARGO_TARGET_DIR:-target}}/kvbench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
for n in 1 2 3; do
  "$BIN" --log info replica "$n" --listen "127.0.0.1:$((PORT + n))" \
    --peers "127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2)),127.0.0.1:$((PORT + 3))" \
    --data-dir "$DATA" "$@" 2>"$DATA/r$n.log" >/dev/null &
  pids+=($!)
done
sleep 0.5
"$BIN" --log info balancer "127.0.0.1:$PORT" "127.0.0.1:$((PORT + 1))" "127.0.0.1:$((PORT + 2))" "127.0.0.1:$((PORT + 3))" >/dev/null 2>"$DATA/lb.log" &
pids+=($!)
sleep 1
"$BIN" bench --connect "127.0.0.1:$PORT" --clients "$CLIENTS" --duration "$DURATION" --mix set:100 --keys "$KEYS" --quiet
for n in 1 2 3; do
  echo "r$n RSS $(awk '/VmRSS/ {print $2}' /proc/"${pids[$((n - 1))]}"/status) kB"
done
# Stop the replicas so they log their fsync counts.
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
grep -h "WAL: " "$DATA"/r*.log | sed 's/.*INFO *//'
# Snapshots taken, and any failover they caused (a long stall looks dead).
grep -h "snapshot up to" "$DATA"/r*.log | sed 's/.*INFO *//' || true
grep -h "\*\* lost\|\*\* promotes" "$DATA/lb.log" | sed 's/.*INFO *//' || true
