#!/usr/bin/env bash
# kvstore against Redis on this machine, with the same tools, one run:
#   Redis 7: a primary and two replicas, no persistence (save "", no AOF);
#   kvstore: 3 replicas as processes, durable (--data-dir, group-commit
#   fsync), semi-synchronous (sync_acks 1), balancer serving RESP (--resp).
# Then, against each in turn (everything on loopback):
#   redis-benchmark -t set,get -c 50 -n N -P 1     (N = 200000 by default)
#   redis-benchmark -t set,get -c 50 -n N -P 16
#   kvnode bench --resp ADDR --mix set:100 --wait 1   (SET, then WAIT 1 0)
#   kvnode bench --resp ADDR --mix get:100            (50 clients, and 1)
#   kvnode bench --resp ADDR --mix set:100 --wait 1   (1 client: durable SET p50)
# and the two SET + WAIT runs again on a kvstore cluster with --no-fsync
# and prints a table of kvstore/Redis ratios.
# Usage: scripts/bench-vs-redis.sh [-n N] [DURATION]   (default 200000, 10s)
set -euo pipefail
n=200000
duration=10s
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift ;;
    *) duration=$1 ;;
  esac
  shift
done
# shellcheck source=scripts/lib-cluster.sh
. "$(dirname "$0")/lib-cluster.sh"
kv_init redis-server redis-cli redis-benchmark
read -r rp rr1 rr2 < <(free_ports 3)

# ---- Redis: a primary and two replicas, no persistence.
redis_args=(--bind 127.0.0.1 --save "" --appendonly no --protected-mode no --daemonize no --dir "$work")
redis-server --port "$rp" "${redis_args[@]}" >"$work/redis-p.log" 2>&1 &
pids+=($!)
for port in "$rr1" "$rr2"; do
  redis-server --port "$port" --replicaof 127.0.0.1 "$rp" "${redis_args[@]}" >"$work/redis-$port.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  up=0
  for port in "$rr1" "$rr2"; do
    redis-cli -p "$port" info replication 2>/dev/null | grep -q "master_link_status:up" && up=$((up + 1))
  done
  [ "$up" = 2 ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$rp" info replication | tr -d '\r' | grep connected_slaves)" = "connected_slaves:2" ] ||
  { echo "error: Redis replicas did not connect" >&2; exit 1; }

# ---- kvstore: durable, semi-synchronous, with a cluster secret.
kv_start --resp --data-dir "$work/kv"
pr=${kv_resp##*:}

declare -A fig
# redis-benchmark's "SET: 12345.67 requests per second, p50=..." lines.
rb() { # name port pipeline
  local out
  out=$(redis-benchmark -p "$2" -t set,get -c 50 -n "$n" -P "$3" -q 2>&1 | tr '\r' '\n')
  if grep -qi error <<<"$out"; then echo "redis-benchmark against $1 -P $3 reported errors:" >&2; echo "$out" >&2; exit 1; fi
  fig[$1.set.P$3]=$(grep '^SET:' <<<"$out" | tail -1 | awk '{print $2}')
  fig[$1.get.P$3]=$(grep '^GET:' <<<"$out" | tail -1 | awk '{print $2}')
  echo "  $1 -P $3: SET ${fig[$1.set.P$3]}/s  GET ${fig[$1.get.P$3]}/s"
}
kb() { # name port key -- bench args
  local name=$1 port=$2 key=$3
  shift 4
  local json
  json=$("$bin" bench --resp "127.0.0.1:$port" --duration "$duration" --quiet --json "$@")
  local errors
  errors=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"])' <<<"$json")
  [ "$errors" = 0 ] || { echo "kvnode bench against $name $*: $errors errors: $json" >&2; exit 1; }
  fig[$name.$key]=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["throughput_ops_s"]))' <<<"$json")
  fig[$name.$key.p50]=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["latency_us"]["p50"])' <<<"$json")
  echo "  $name $key: ${fig[$name.$key]}/s, p50 ${fig[$name.$key.p50]} us"
}

for target in redis kvstore; do
  port=$rp
  [ "$target" = kvstore ] && port=$pr
  echo "== $target"
  rb "$target" "$port" 1
  rb "$target" "$port" 16
  kb "$target" "$port" setwait -- --clients 50 --mix set:100 --wait 1
  kb "$target" "$port" get50 -- --clients 50 --mix get:100
  kb "$target" "$port" get1 -- --clients 1 --mix get:100
  kb "$target" "$port" setwait1 -- --clients 1 --mix set:100 --wait 1
done

# The same cluster without fsync: what durability costs the durable SET.
kv_stop
kv_start --resp --data-dir "$work/kv-nofsync" -- --no-fsync
pr=${kv_resp##*:}
echo "== kvstore --no-fsync"
kb kvstore-nofsync "$pr" setwait -- --clients 50 --mix set:100 --wait 1
kb kvstore-nofsync "$pr" setwait1 -- --clients 1 --mix set:100 --wait 1

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
echo
echo "| what (50 clients unless said) | Redis | kvstore | kvstore/Redis | target |"
echo "| --- | --- | --- | --- | --- |"
row() { # label redis kvstore target
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$3" "$2")" "$4"
}
row "redis-benchmark SET -P 1 (ops/s)" "${fig[redis.set.P1]}" "${fig[kvstore.set.P1]}" "report"
row "redis-benchmark GET -P 1 (ops/s)" "${fig[redis.get.P1]}" "${fig[kvstore.get.P1]}" ">= 0.9x"
row "redis-benchmark SET -P 16 (ops/s)" "${fig[redis.set.P16]}" "${fig[kvstore.set.P16]}" "report"
row "redis-benchmark GET -P 16 (ops/s)" "${fig[redis.get.P16]}" "${fig[kvstore.get.P16]}" "report"
row "kvnode bench --resp SET + WAIT 1 0 (ops/s)" "${fig[redis.setwait]}" "${fig[kvstore.setwait]}" ">= 1.0x"
row "the same, kvstore with --no-fsync (ops/s)" "${fig[redis.setwait]}" "${fig[kvstore-nofsync.setwait]}" "report"
row "kvnode bench --resp GET (ops/s)" "${fig[redis.get50]}" "${fig[kvstore.get50]}" "report"
row "kvnode bench --resp GET, 1 client (ops/s)" "${fig[redis.get1]}" "${fig[kvstore.get1]}" "report"
printf '| %s | %s | %s | %s | %s |\n' "GET p50, 1 client (us; Redis/kvstore)" "${fig[redis.get1.p50]}" \
  "${fig[kvstore.get1.p50]}" "$(ratio "${fig[redis.get1.p50]}" "${fig[kvstore.get1.p50]}")" "report"
printf '| %s | %s | %s | %s | %s |\n' "durable SET p50, 1 client (us; Redis SET + WAIT 1 0)" "${fig[redis.setwait1.p50]}" \
  "${fig[kvstore.setwait1.p50]}" "$(ratio "${fig[redis.setwait1.p50]}" "${fig[kvstore.setwait1.p50]}")" "report"
printf '| %s | %s | %s | %s | %s |\n' "the same, kvstore with --no-fsync" "${fig[redis.setwait1.p50]}" \
  "${fig[kvstore-nofsync.setwait1.p50]}" "$(ratio "${fig[redis.setwait1.p50]}" "${fig[kvstore-nofsync.setwait1.p50]}")" "report"
echo
echo "(kvstore: durable, fsync per group commit, semi-sync; Redis: no persistence. $(nproc) cores, shared by servers and clients.)"
