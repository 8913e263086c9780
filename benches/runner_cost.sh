#!/usr/bin/env bash
# `runner_movement`'s cost over many runs (issue 13: the engine's records/s with the
# detector at least 0.9 of without). One run of `benches/runner_cost.rs` is the median of
# alternating pairs, but on a shared VM the figure still moves with the hour by a few
# points either side of the bar, so the bar is read from the median of many runs and how
# many of them reach it.
#
#   benches/runner_cost.sh [RUNS] [PAIRS]      (default 15 runs of 21 pairs)
#
# Builds the bench, then runs it RUNS times on one core (`taskset -c 1`) with huge pages
# asked for, as `replay` runs (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` unless
# GLIBC_TUNABLES is set). Prints each run's records/s with / without, then their median
# and how many runs reach 0.9. `RUNNER_COST_BATCH=N` passes through (batches of N records,
# as `replay` and `run` give the engine, instead of a record at a time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init runner_cost

runs="${1:-15}"
pairs="${2:-21}"
case "$runs$pairs" in
  *[!0-9]*) die "RUNS and PAIRS are whole numbers (got '$runs' '$pairs')" ;;
esac
if [ "$runs" -lt 1 ] || [ "$pairs" -lt 1 ]; then die "RUNS and PAIRS are at least 1"; fi
need taskset "apt-get install util-linux"
need jq "apt-get install jq"

say "building the bench (release)"
bin=$(cargo bench --bench runner_cost --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.target.name? == "runner_cost" and .executable != null) | .executable' \
  | tail -1)
[ -x "$bin" ] || die "cargo built no runner_cost bench"

ratios=()
for r in $(seq "$runs"); do
  out=$(GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}" taskset -c 1 "$bin" --bench "$pairs")
  ratio=$(sed -nE 's/^runner_cost: records\/s with \/ without ([0-9.]+) .*/\1/p' <<<"$out")
  [ -n "$ratio" ] || die "run $r printed no ratio: $out"
  say "run $r of $runs: records/s with / without $ratio"
  ratios+=("$ratio")
done

printf '%s\n' "${ratios[@]}" | sort -n | awk -v bar=0.9 '
  { a[NR] = $1; if ($1 >= bar) n++ }
  END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "runner_cost: median of %d runs %.4f (range %s to %s); %d of %d at or above %.1f\n",
      NR, m, a[1], a[NR], n + 0, NR, bar
  }'
