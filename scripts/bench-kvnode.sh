#!/usr/bin/env bash
# Reproduces kvnode's benchmark figures on this machine: 3 replicas and a
# balancer as separate processes on loopback, `kvnode bench` as the client.
#   1. semi-synchronous sets from 50 clients      (target >= 30,000/s)
#   2. session gets from 50 clients               (target >= 60,000/s)
#   3. gets from one connection, p50 latency      (target < 150 us)
# Usage: scripts/bench-kvnode.sh [DURATION] [--data-dir] [--open]
#   default 10s, in memory, every node proving a fresh random cluster secret
#   (--open: no secret, to measure what authentication costs)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=10s
durable=
open=
for a in "$@"; do
  case "$a" in
    --data-dir) durable=1 ;;
    --open) open=1 ;;
    *) duration=$a ;;
  esac
done
cargo build -q --release -p kvstore --bin kvnode
bin=${KVNODE_BIN:-target/release/kvnode}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Four free loopback ports, chosen by the kernel.
read -r p0 p1 p2 p3 < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(4)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])
[s.close() for s in ss]')
secret=()
if [ -z "$open" ]; then
  head -c 32 /dev/urandom | base64 >"$work/secret"
  chmod 600 "$work/secret"
  secret=(--secret-file "$work/secret")
fi
peers="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
for i in 1 2 3; do
  port_var="p$i"
  args=(replica "$i" --listen "127.0.0.1:${!port_var}" --peers "$peers" "${secret[@]}")
  [ -n "$durable" ] && args+=(--data-dir "$work/r$i")
  "$bin" "${args[@]}" >"$work/r$i.log" 2>&1 &
  pids+=($!)
done
"$bin" balancer "127.0.0.1:$p0" "127.0.0.1:$p1" "127.0.0.1:$p2" "127.0.0.1:$p3" "${secret[@]}" >"$work/lb.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  "$bin" client --connect "127.0.0.1:$p0" set bench-ready=1 >/dev/null 2>&1 && break
  sleep 0.1
done

lb="127.0.0.1:$p0"
echo "== semi-synchronous sets, 50 clients"
"$bin" bench --connect "$lb" --clients 50 --duration "$duration" --mix set:100 --quiet
echo "== session gets, 50 clients"
"$bin" bench --connect "$lb" --clients 50 --duration "$duration" --mix get:100 --read session --quiet
echo "== gets from one connection"
"$bin" bench --connect "$lb" --clients 1 --duration "$duration" --mix get:100 --read session --quiet
