#!/usr/bin/env bash
# Where a kvnode cluster's time goes under redis-benchmark: starts 3 durable
# replicas and a balancer serving RESP (as scripts/bench-vs-redis.sh does),
# runs `redis-benchmark -t OP -c 50 -P 1` against it, records every CPU with
# `perf record -a` for SECONDS, and prints the CPU split by thread (idle is
# "swapper"), kernel vs user per thread, and the balancer's hottest symbols.
# Usage: scripts/profile-kvnode.sh [get|set] [SECONDS]   (default get 5)
# Extra replica flags (e.g. --no-fsync) in $REPLICA_FLAGS. Needs perf
# (apt-get install -y linux-perf) and kernel.perf_event_paranoid <= 1 or root.
set -euo pipefail
op=${1:-get}
secs=${2:-5}
case "$op" in get | set) ;; *) echo "usage: $0 [get|set] [SECONDS]" >&2; exit 2 ;; esac
# shellcheck source=scripts/lib-cluster.sh
. "$(dirname "$0")/lib-cluster.sh"
kv_init perf redis-benchmark
# shellcheck disable=SC2086
kv_start --resp --data-dir "$work/kv" -- ${REPLICA_FLAGS:-}
pr=${kv_resp##*:}

# Enough requests to outlast the recording; stopped when it ends.
redis-benchmark -p "$pr" -t "$op" -c 50 -n 100000000 -P 1 -q >/dev/null 2>&1 &
rbpid=$!
pids+=($rbpid)
sleep 1
perf record -a -F 999 -o "$work/perf.data" -- sleep "$secs" 2>/dev/null
kill "$rbpid" 2>/dev/null || true
# `head` closes the pipe early: that is not a failure.
report() { perf report -i "$work/perf.data" --stdio "$@" 2>/dev/null | grep -v '^#' | grep -v '^$' || true; }
echo "== $op, 50 clients: CPU by thread (lb: balancer, rN: replica N, swapper: idle)"
report --sort comm | head -12
echo "== by thread and kernel/user"
report --sort comm,dso | head -16
echo "== the balancer's hottest symbols"
report --comm lb --sort sym | head -25
