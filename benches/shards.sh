#!/usr/bin/env bash
# The partitioned engine on every core against one shard pinned to one core (issue 10).
#
#   benches/shards.sh [SUBSCRIBERS] [DAYS] [ROUNDS] [SHARDS...]
#        (default 150000 x 5, 3 rounds, shards 2 3 8)
#
# Generates the city once (seed 3, with its cell map so every detector runs) under
# target/bench-data, then per round, alternating so drift in the machine's load hits both
# sides alike: `taskset -c 0 replay --shards 1` (one shard on one core), then
# `replay --shards N` on every core for each N. Prints wall and user CPU seconds per run,
# the median ratio of one pinned shard's wall time to each N's, and checks that the sorted
# alert ids of every run are byte-identical, and the alerts whole but `detected_at`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init shards

subs="${1:-150000}"
days="${2:-5}"
rounds="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(2 3 8)
need /usr/bin/time "apt-get install time"
need taskset "apt-get install util-linux"
need jq "apt-get install jq"
bench_build
bench_city "$subs" "$days"
data="$DATA"

run() { # run TAG SHARDS [PIN...]: one replay; appends "TAG wall user" to $data/times
  local tag="$1" n="$2"
  shift 2
  /usr/bin/time -f "%e %U" -o "$data/time.txt" "$@" "$BIN" replay --quiet --shards "$n" \
    --input "$data/events.jsonl" --cells "$data/cells.csv" \
    --output "$data/alerts-$tag.jsonl" --summary "$data/summary-$tag.json"
  echo "$tag $(cat "$data/time.txt")" >> "$data/times"
  jq -r .alert_id "$data/alerts-$tag.jsonl" | sort > "$data/ids-$tag.txt"
  jq -c 'del(.detected_at)' "$data/alerts-$tag.jsonl" | sort > "$data/whole-$tag.txt"
  say "$tag: $(cat "$data/time.txt") (wall s, user s); $(wc -l < "$data/ids-$tag.txt") alerts"
}

: > "$data/times"
for r in $(seq "$rounds"); do
  run "1-pinned-r$r" 1 taskset -c 0
  for n in "${counts[@]}"; do
    run "$n-r$r" "$n"
  done
done

for f in "$data"/ids-*.txt; do
  cmp -s "$data/ids-1-pinned-r1.txt" "$f" || die "alert ids differ: $f against ids-1-pinned-r1.txt"
done
say "sorted alert ids identical in every run ($(wc -l < "$data/ids-1-pinned-r1.txt") alerts)"
# Whole alerts too (all but `detected_at`, the wall clock): the ids hash the subject and
# the window, not the explanation, and an explanation that depends on the shard count is
# as much a difference (a deal line's runner, once, before ties were broken by figures).
for f in "$data"/whole-*.txt; do
  cmp -s "$data/whole-1-pinned-r1.txt" "$f" || die "alerts differ (all but detected_at): $f against whole-1-pinned-r1.txt"
done
say "sorted alerts identical in every run, all but detected_at"

python3 - "$data/times" "${counts[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
one = [float(w) for t, w, u in rows if t.startswith("1-pinned")]
print(f"one shard pinned to one core: wall {statistics.median(one):.2f} s (median of {len(one)})")
for n in sys.argv[2:]:
    many = [float(w) for t, w, u in rows if t.split("-")[0] == n]
    ratios = [a / b for a, b in zip(one, many)]
    print(f"{n} shards, every core: wall {statistics.median(many):.2f} s; "
          f"one pinned / {n}: {statistics.median(ratios):.2f}x median "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")
PY
