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
#
#   RUNNER_COST_BASE=REV benches/runner_cost.sh [RUNS] [PAIRS]
#
# A change against a base: also builds the bench at git revision REV (a worktree and a
# target folder of its own under target/runner-cost-base, kept for the next call) and
# alternates the two binaries run by run, which one goes first turning each round, so the
# hour's drift hits both alike; prints each side's median and count at 0.9, and in how
# many of the rounds this checkout's build was ahead.
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

# built_bench [CARGO_TARGET_DIR]: builds the bench in the current folder, prints its path.
built_bench() {
  local bin
  bin=$(CARGO_TARGET_DIR="${1:-target}" cargo bench --bench runner_cost --no-run \
    --message-format=json 2>/dev/null \
    | jq -r 'select(.target.name? == "runner_cost" and .executable != null) | .executable' \
    | tail -1)
  [ -x "$bin" ] || die "cargo built no runner_cost bench${1:+ in $1}"
  printf '%s\n' "$bin"
}

# one BIN: one run's records/s with / without.
one() {
  local out ratio
  out=$(GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}" taskset -c 1 "$1" --bench "$pairs")
  ratio=$(sed -nE 's/^runner_cost: records\/s with \/ without ([0-9.]+) .*/\1/p' <<<"$out")
  [ -n "$ratio" ] || die "$1 printed no ratio: $out"
  printf '%s\n' "$ratio"
}

# summary LABEL RATIO...: the median and how many reach the bar.
summary() {
  local label="$1"
  shift
  printf '%s\n' "$@" | sort -n | awk -v bar=0.9 -v label="$label" '
    { a[NR] = $1; if ($1 >= bar) n++ }
    END {
      m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
      printf "runner_cost: %smedian of %d runs %.4f (range %s to %s); %d of %d at or above %.1f\n",
        label, NR, m, a[1], a[NR], n + 0, NR, bar
    }'
}

say "building the bench (release)"
bin=$(built_bench)

if [ -z "${RUNNER_COST_BASE:-}" ]; then
  ratios=()
  for r in $(seq "$runs"); do
    ratio=$(one "$bin")
    say "run $r of $runs: records/s with / without $ratio"
    ratios+=("$ratio")
  done
  summary "" "${ratios[@]}"
  exit 0
fi

need git "apt-get install git"
rev=$(git rev-parse --verify --quiet "$RUNNER_COST_BASE^{commit}") \
  || die "RUNNER_COST_BASE: no such revision '$RUNNER_COST_BASE'"
base=target/runner-cost-base
if [ -e "$base/src/.git" ]; then
  git -C "$base/src" checkout --quiet --detach "$rev" || die "cannot check out $rev in $base/src"
else
  mkdir -p "$base"
  git worktree add --quiet --detach "$base/src" "$rev" || die "cannot add a worktree at $base/src"
fi
say "building the bench at ${rev:0:7} (release, in $base)"
base_target="$PWD/$base/target"
base_bin=$(cd "$base/src" && built_bench "$base_target")

this=()
based=()
ahead=0
for r in $(seq "$runs"); do
  if [ $((r % 2)) = 1 ]; then
    b=$(one "$base_bin")
    t=$(one "$bin")
  else
    t=$(one "$bin")
    b=$(one "$base_bin")
  fi
  say "round $r of $runs: base ${rev:0:7} $b, this checkout $t"
  based+=("$b")
  this+=("$t")
  at_least "$b" "$t" || ahead=$((ahead + 1))
done
summary "base ${rev:0:7}: " "${based[@]}"
summary "this checkout: " "${this[@]}"
say "this checkout ahead in $ahead of $runs rounds"
