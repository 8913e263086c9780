#!/usr/bin/env bash
# Sorted alert ids of one input under two builds: identical, or the first differences.
#
#   scripts/compare_alerts.sh BASE_BINARY NEW_BINARY INPUT.jsonl
#
# Issue 10 changes how state is laid out and how records are decoded, never what is
# detected: this is the check that a city's alerts are byte-identical before and after.
# Whole alerts are compared but for `detected_at` (the wall clock of each run).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 BASE_BINARY NEW_BINARY INPUT.jsonl" >&2; exit 2; }
base="$1" new="$2" input="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for side in base new; do
  bin="$base"; [ "$side" = new ] && bin="$new"
  "$bin" replay --quiet --input "$input" --output "$work/$side.jsonl" --summary "$work/$side-summary.json"
  python3 -c '
import json, sys
for l in open(sys.argv[1]):
    a = json.loads(l)
    a.pop("detected_at", None)
    print(a["alert_id"], json.dumps(a, sort_keys=True))
' "$work/$side.jsonl" | sort > "$work/$side.sorted"
done
n=$(wc -l < "$work/base.sorted")
if cmp -s "$work/base.sorted" "$work/new.sorted"; then
  echo "identical: $n alerts (ids and every field but detected_at)"
else
  echo "DIFFERENT: base $n alerts, new $(wc -l < "$work/new.sorted")" >&2
  diff <(cut -d' ' -f1 "$work/base.sorted") <(cut -d' ' -f1 "$work/new.sorted") | head -20 >&2
  exit 1
fi
