#!/usr/bin/env bash
# Durable semi-sync sets against 3 replica processes and a balancer on
# loopback, each replica with --data-dir on this machine's disk; then the
# replicas' RSS, their fsync counts, the snapshots taken and any failover.
# Usage: scripts/bench-durable-sets.sh [extra replica flags...]   (e.g. --sync-every-op)
# Env: CLIENTS (50), DURATION (10s), KEYS (1000), KVNODE_BIN, DATA_PARENT
# (where the data directory goes; default: a temporary directory).
set -euo pipefail
CLIENTS=${CLIENTS:-50}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-1000}
# shellcheck source=scripts/lib-cluster.sh
. "$(dirname "$0")/lib-cluster.sh"
kv_init
data=$(mktemp -d "${DATA_PARENT:-$work}/kvbench.XXXXXX")
trap 'kv_cleanup; rm -rf "$data"' EXIT
kv_log=info
kv_start --data-dir "$data" -- "$@"
"$bin" bench --connect "$kv_lb" --clients "$CLIENTS" --duration "$DURATION" --mix set:100 --keys "$KEYS" --quiet
for n in 1 2 3; do
  echo "r$n RSS $(awk '/VmRSS/ {print $2}' /proc/"${kv_pids[$((n - 1))]}"/status) kB"
done
# Stop the nodes so the replicas log their fsync counts.
kv_stop
grep -h "WAL: " "$work"/r*.log | sed 's/.*INFO *//'
# Snapshots taken, and any failover they caused (a long stall looks dead).
grep -h "snapshot up to" "$work"/r*.log | sed 's/.*INFO *//' || true
grep -h "\*\* lost\|\*\* promotes" "$work/lb.log" | sed 's/.*INFO *//' || true
