#!/usr/bin/env bash
# End-to-end replay benchmark: decode + every detector over a generated city, one core.
#
#   benches/replay_e2e.sh [SUBSCRIBERS] [DAYS]      (default 100000 x 4: about 5 million records)
#
# Prints records/s, peak RSS and detector state bytes per tracked line, taken from the
# replay summary and /usr/bin/time. The data file is cached under target/bench-data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init replay_e2e

subs="${1:-100000}"
days="${2:-4}"
data="target/bench-data/city-${subs}x${days}"
mkdir -p "$data"

need /usr/bin/time "apt-get install time"
bench_build

if [ ! -s "$data/events.jsonl" ]; then
  say "generating ${subs} subscribers x ${days} days ..."
  "$BIN" generate --subscribers "$subs" --days "$days" --seed 42 \
    --output "$data/events.jsonl" --labels "$data/labels.csv" --manifest "$data/manifest.json"
fi

# One core, as the target says: taskset pins the process (the engine is single-threaded).
pin=()
command -v taskset >/dev/null && pin=(taskset -c 0)
/usr/bin/time -v "${pin[@]}" "$BIN" replay --quiet --input "$data/events.jsonl" --output "$data/alerts.jsonl" \
  --summary "$data/summary.json" 2> "$data/time.txt"

python3 - "$data" <<'PY'
import json, re, sys
d = sys.argv[1]
s = json.load(open(f"{d}/summary.json"))
t = open(f"{d}/time.txt").read()
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", t).group(1)
print(f"records            {s['events_total']:,}")
print(f"alerts             {s['alerts_total']:,}  {s['alerts_by_detector']}")
print(f"replay time        {s['elapsed_s']:.2f} s (process wall {wall})")
print(f"records/s          {s['events_per_s']:,.0f}  (decode + dedup + watermark + all detectors, 1 core)")
print(f"peak RSS           {rss_kb/1024:.0f} MiB")
print(f"tracked lines      {s['tracked_lines']:,}")
print(f"state bytes/line   {s['detector_state_bytes_per_line']:.0f}")
for k, v in sorted(s["state"].items()):
    print(f"  {k:<16} keys {v['keys']:>9,}  bytes {v['bytes']:>12,}  cap hits {v['cap_hits']}")
PY
