#!/usr/bin/env bash
# `runner_movement`'s cost end to end (issue 13): `replay` of a whole city with its cell map
# (every detector, `runner_movement` included) against the same replay without it (the
# detector then holds nothing, and the ingest places no cell).
#
#   benches/runner_e2e.sh [SUBSCRIBERS] [DAYS] [PAIRS]      (default 150000 x 5, 10 pairs)
#
# `benches/runner_cost.sh` times the engine alone on a warm 20,000-subscriber city, whose
# state fits a core's second-level cache far better than a large city's does; this is the
# same question asked of the whole program at scale. Generates the city once (seed 3, with
# its cell map) under target/bench-data, then runs the two replays in alternating pairs
# (which goes first turning each pair, so the hour's drift hits both alike), each on one
# shard pinned to one core (`taskset -c 1`) with huge pages asked for, as `replay` runs
# (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` unless GLIBC_TUNABLES is set). Prints each
# pair's records/s, then the median ratio with / without and how many pairs reach 0.9.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init runner_e2e

subs="${1:-150000}"
days="${2:-5}"
pairs="${3:-10}"
case "$subs$days$pairs" in
  *[!0-9]*) die "SUBSCRIBERS, DAYS and PAIRS are whole numbers (got '$subs' '$days' '$pairs')" ;;
esac
if [ "$pairs" -lt 1 ]; then die "PAIRS is at least 1"; fi
need taskset "apt-get install util-linux"
need jq "apt-get install jq"
bench_build
bench_city "$subs" "$days"
data="$DATA"

# rate SIDE: one replay, `with` (the cell map) or `without`; prints its records/s.
rate() {
  local cells=()
  [ "$1" = with ] && cells=(--cells "$data/cells.csv")
  GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}" taskset -c 1 "$BIN" replay \
    --quiet --shards 1 --input "$data/events.jsonl" "${cells[@]}" \
    --output "$data/alerts-runner-$1.jsonl" --summary "$data/summary-runner-$1.json"
  jq -r .events_per_s "$data/summary-runner-$1.json"
}

ratios=()
for p in $(seq "$pairs"); do
  if [ $((p % 2)) = 1 ]; then
    w=$(rate with)
    wo=$(rate without)
  else
    wo=$(rate without)
    w=$(rate with)
  fi
  r=$(awk -v a="$w" -v b="$wo" 'BEGIN { printf "%.3f", a / b }')
  say "pair $p of $pairs: records/s with $(printf '%.0f' "$w"), without $(printf '%.0f' "$wo"): $r"
  ratios+=("$r")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk -v label="$BENCH_NAME" '
  { a[NR] = $1; if ($1 >= 0.9) n++ }
  END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%s: records/s with / without, median of %d pairs %.3f (range %s to %s); %d of %d at or above 0.9\n",
      label, NR, m, a[1], a[NR], n + 0, NR
  }'
