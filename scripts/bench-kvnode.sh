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
# shellcheck source=scripts/lib-cluster.sh
. "$(dirname "$0")/lib-cluster.sh"
kv_init
flags=()
[ -n "$open" ] && flags+=(--open)
[ -n "$durable" ] && flags+=(--data-dir "$work/kv")
kv_start "${flags[@]}"

lb=$kv_lb
echo "== semi-synchronous sets, 50 clients"
"$bin" bench --connect "$lb" --clients 50 --duration "$duration" --mix set:100 --quiet
echo "== session gets, 50 clients"
"$bin" bench --connect "$lb" --clients 50 --duration "$duration" --mix get:100 --read session --quiet
echo "== gets from one connection"
"$bin" bench --connect "$lb" --clients 1 --duration "$duration" --mix get:100 --read session --quiet
