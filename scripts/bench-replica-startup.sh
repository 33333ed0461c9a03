#!/usr/bin/env bash
# Time from `kvnode replica 1 --data-dir DIR` starting to its "listening" line.
# Usage: scripts/bench-replica-startup.sh DIR [RUNS]
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/kvnode}
DIR=$1
RUNS=${2:-3}
for _ in $(seq "$RUNS"); do
  start=$(date +%s.%N)
  coproc R { exec "$BIN" replica 1 --listen 127.0.0.1:0 --peers 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3 --data-dir "$DIR" 2>/dev/null; }
  read -r line <&"${R[0]}"
  end=$(date +%s.%N)
  rss=$(awk '/VmRSS/ {print $2}' /proc/"$R_PID"/status)
  echo "$line after $(echo "$end - $start" | bc) s; RSS $((rss / 1024)) MiB"
  kill -TERM "$R_PID"; wait "$R_PID" || true
done
