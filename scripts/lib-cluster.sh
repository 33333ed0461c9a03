# shellcheck shell=bash
# Sourced by the benchmark scripts beside it: one way to build kvnode, pick
# free loopback ports, start a cluster and clean up after it.
#
#   kv_init [TOOL...]   check the tools are installed, cd to the repository,
#                       build kvnode (KVNODE_BIN picks another binary), make
#                       $work (removed on exit); every pid put in `pids` is
#                       killed on exit
#   free_ports N        print N free loopback ports, chosen by the kernel
#   kv_start [--resp] [--data-dir DIR] [--open] [--] [REPLICA FLAG...]
#                       3 replica processes and a balancer on free ports
#                       (with a fresh cluster secret in $work, one per
#                       run, unless --open), logs in
#                       $work/{r1,r2,r3,lb}.log; waits until a write is
#                       taken; sets kv_lb (the balancer's ADDR), kv_resp
#                       (its RESP ADDR, with --resp) and kv_pids. Nodes log
#                       at level $kv_log (default warn)
#   kv_stop             stops what kv_start started

kv_init() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      echo "error: $tool not found (see .ci/run for the packages)" >&2
      exit 2
    }
  done
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
  cargo build -q --release -p kvstore --bin kvnode
  bin=${KVNODE_BIN:-target/release/kvnode}
  work=$(mktemp -d)
  pids=()
  trap kv_cleanup EXIT
}

kv_cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}

free_ports() {
  python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss:
    s.close()' "$1"
}

kv_start() {
  local resp= data= open=
  while [ $# -gt 0 ]; do
    case "$1" in
      --resp) resp=1 ;;
      --data-dir) data=$2; shift ;;
      --open) open=1 ;;
      --) shift; break ;;
      *) break ;;
    esac
    shift
  done
  local auth=()
  if [ -z "$open" ]; then
    if [ ! -f "$work/secret" ]; then
      head -c 32 /dev/urandom | base64 >"$work/secret"
      chmod 600 "$work/secret"
    fi
    auth=(--secret-file "$work/secret")
  fi
  local p0 p1 p2 p3 pr
  read -r p0 p1 p2 p3 pr < <(free_ports 5)
  local peers="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3" i port args
  kv_pids=()
  for i in 1 2 3; do
    port="p$i"
    args=(--log "${kv_log:-warn}" replica "$i" --listen "127.0.0.1:${!port}" --peers "$peers" "${auth[@]}")
    [ -n "$data" ] && args+=(--data-dir "$data")
    "$bin" "${args[@]}" "$@" >>"$work/r$i.log" 2>&1 &
    kv_pids+=($!)
  done
  kv_lb="127.0.0.1:$p0"
  kv_resp=
  args=(--log "${kv_log:-warn}" balancer "$kv_lb" "127.0.0.1:$p1" "127.0.0.1:$p2" "127.0.0.1:$p3" "${auth[@]}")
  if [ -n "$resp" ]; then
    kv_resp="127.0.0.1:$pr"
    args+=(--resp "$kv_resp")
  fi
  "$bin" "${args[@]}" >>"$work/lb.log" 2>&1 &
  kv_pids+=($!)
  pids+=("${kv_pids[@]}")
  for _ in $(seq 100); do
    "$bin" client --connect "$kv_lb" set bench-ready=1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: kvstore never took a write; balancer log:" >&2
  tail -20 "$work/lb.log" >&2
  exit 1
}

kv_stop() {
  kill "${kv_pids[@]}" 2>/dev/null || true
  local pid
  for pid in "${kv_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  kv_pids=()
}
