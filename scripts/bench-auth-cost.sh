#!/usr/bin/env bash
# What authentication costs: scripts/bench-kvnode.sh with every node proving
# a fresh cluster secret, against the same with --open (no secret), in turn
# (A B A B ...), so a machine whose speed drifts hits both alike. Prints
# each pair's ratio and the medians. Target: authenticated >= 0.95x open.
# Usage: scripts/bench-auth-cost.sh [PAIRS] [DURATION]   (default 5 pairs of 5s)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-5}
duration=${2:-5s}
cargo build -q --release -p kvstore --bin kvnode
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One bench run; prints "sets gets one_conn_p50_us".
run() {
  scripts/bench-kvnode.sh "$duration" "$@" >"$out/run" 2>&1
  awk '
    /^throughput/ { t[++n] = $2 }
    /^latency/    { p = $3 }
    END {
      if (p ~ /ms$/) { sub(/ms$/, "", p); p = p * 1000 } else { sub(/µs$/, "", p) }
      print t[1], t[2], p
    }' "$out/run"
}

printf '%-5s %-26s %-26s %s\n' pair "secret (sets gets p50us)" "open (sets gets p50us)" "ratio sets gets"
for i in $(seq "$pairs"); do
  read -r as ag ap < <(run)
  read -r bs bg bp < <(run --open)
  rs=$(awk -v a="$as" -v b="$bs" 'BEGIN { printf "%.3f", a / b }')
  rg=$(awk -v a="$ag" -v b="$bg" 'BEGIN { printf "%.3f", a / b }')
  printf '%-5s %-26s %-26s %s %s\n' "$i" "$as $ag $ap" "$bs $bg $bp" "$rs" "$rg"
  echo "$as $ag $ap $bs $bg $bp $rs $rg" >>"$out/pairs"
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "medians: secret sets $(cut -d' ' -f1 "$out/pairs" | median)/s gets $(cut -d' ' -f2 "$out/pairs" | median)/s;" \
  "open sets $(cut -d' ' -f4 "$out/pairs" | median)/s gets $(cut -d' ' -f5 "$out/pairs" | median)/s;" \
  "ratio (secret/open) sets $(cut -d' ' -f7 "$out/pairs" | median) gets $(cut -d' ' -f8 "$out/pairs" | median)"
