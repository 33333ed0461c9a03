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
cd "$(dirname "$0")/.."
op=${1:-get}
secs=${2:-5}
case "$op" in get | set) ;; *) echo "usage: $0 [get|set] [SECONDS]" >&2; exit 2 ;; esac
for tool in perf redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 2; }
done
cargo build -q --release -p kvstore --bin kvnode
bin=${KVNODE_BIN:-target/release/kvnode}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
read -r p0 p1 p2 p3 pr < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(5)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])
[s.close() for s in ss]')
head -c 32 /dev/urandom | base64 >"$work/secret"
chmod 600 "$work/secret"
peers="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
for i in 1 2 3; do
  port_var="p$i"
  # shellcheck disable=SC2086
  "$bin" replica "$i" --listen "127.0.0.1:${!port_var}" --peers "$peers" --data-dir "$work/kv" \
    --secret-file "$work/secret" ${REPLICA_FLAGS:-} >"$work/r$i.log" 2>&1 &
  pids+=($!)
done
"$bin" balancer "127.0.0.1:$p0" "127.0.0.1:$p1" "127.0.0.1:$p2" "127.0.0.1:$p3" --resp "127.0.0.1:$pr" \
  --secret-file "$work/secret" >"$work/lb.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ "$(redis-cli -p "$pr" set bench-ready 1 2>/dev/null)" = OK ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$pr" set bench-ready 1)" = OK ] || { echo "error: kvstore never took a write" >&2; exit 1; }

# Enough requests to outlast the recording; stopped when it ends.
redis-benchmark -p "$pr" -t "$op" -c 50 -n 100000000 -P 1 -q >/dev/null 2>&1 &
rbpid=$!
pids+=($rbpid)
sleep 1
perf record -a -F 999 -o "$work/perf.data" -- sleep "$secs" 2>/dev/null
kill "$rbpid" 2>/dev/null || true
report() { perf report -i "$work/perf.data" --stdio "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
echo "== $op, 50 clients: CPU by thread (lb: balancer, rN: replica N, swapper: idle)"
report --sort comm | head -12
echo "== by thread and kernel/user"
report --sort comm,dso | head -16
echo "== the balancer's hottest symbols"
report --comm lb --sort sym | head -25
