#!/usr/bin/env bash
# End-to-end benchmark of `linewatch board` (issue 9): ingest rate from Kafka into the
# board's database, and the queue page's response time with 100,000 alerts stored.
#
#   benches/board_e2e.sh [ALERTS]     (default 100000)
#
# 1. Broker: LINEWATCH_TEST_BROKERS if set, else the local broker (deploy/local/kafka.sh;
#    started, and stopped at exit, if none runs).
# 2. ALERTS alerts (5 detectors, 20,000 subjects, scores 0..1, event times over 30 days)
#    are written with python3 and produced to a fresh 3-partition topic with kcat, before
#    the board starts: a backlog.
# 3. `linewatch board` (release) starts on an empty database; ingest is timed from the
#    first alert stored to the last (linewatch_board_alerts_stored, polled every 100 ms).
# 4. The queue page and its filtered forms are fetched REPEAT (20) times each through curl
#    with the user header; median and worst `time_total` are printed.
# Everything this script started is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init board_e2e

n="${1:-100000}"
repeat="${REPEAT:-20}"
work="target/bench-board/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"
need kcat "deploy/local/setup.sh installs it"
need curl
bench_clean_env

bench_build
broker_up

topic="board-bench-$$-$RANDOM"
create_topic "$topic" 3

say "writing $n alerts"
python3 - "$n" > "$work/alerts.jsonl" <<'PY'
import json, sys, random, time
n = int(sys.argv[1]); r = random.Random(9)
dets = ["bulk_sms", "customer_fan_in", "handset_churn", "line_handover", "deal_line"]
now = int(time.time() * 1000)
for i in range(n):
    d = dets[i % 5]; s = f"L-{r.randrange(20000):05d}"; t = now - r.randrange(30 * 86400) * 1000
    print(json.dumps({"alert_id": f"bench-{i:08d}", "detector": d, "subject": s,
        "subject_kind": "handset" if d == "handset_churn" else "line",
        "score": round(r.random(), 3), "event_time": t, "window_start": t - 3600000, "window_end": t,
        "related": [f"L-{r.randrange(20000):05d}"] if d == "line_handover" else [],
        "evidence": {"recipients": 31, "min_recipients": 30, "window_s": 3600},
        "detected_at": t + 1000, "config_version": "bench001"}, separators=(",", ":")))
PY
say "producing to $topic"
kcat -P -b "$BROKERS" -t "$topic" -z lz4 -l "$work/alerts.jsonl"

cat > "$work/board.toml" <<TOML
[board]
db_path = "$work/board.db"
audit_log = "$work/audit.jsonl"
retention_days = 36500
[board.users]
bench = "analyst"
TOML
addr="127.0.0.1:$(free_port)"
"$BIN" --config "$work/board.toml" board --brokers "$BROKERS" --alert-topic "$topic" --http "$addr" \
  2> "$work/board.log" &
bench_track $!

stored() { metric "$addr" linewatch_board_alerts_stored; }
first="" ; deadline=$((SECONDS + 600))
while :; do
  v="$(stored || true)"; v="${v:-0}"
  if [ -z "$first" ] && [ "${v%.*}" -gt 0 ]; then first=$(now); first_v=${v%.*}; fi
  if [ "${v%.*}" -ge "$n" ]; then last=$(now); break; fi
  [ $SECONDS -lt $deadline ] || die "only $v of $n stored after 600 s"
  sleep 0.1
done
rate=$(python3 -c "print(round(($n - $first_v) / ($last - $first)))")
say "ingest: $n alerts stored; $rate alerts/s from the first stored to the last"

timeit() {
  local path="$1"; local times=()
  for _ in $(seq "$repeat"); do
    times+=("$(curl -s -o /dev/null -w '%{time_total}' -H 'X-Forwarded-User: bench' "http://$addr$path")")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v p="$path" '{a[NR]=$1} END {printf "  %-55s median %4.0f ms   worst %4.0f ms\n", p, a[int((NR+1)/2)]*1000, a[NR]*1000}'
}
say "queue page with $n alerts stored, $repeat fetches each:"
timeit "/"
timeit "/?sort=newest"
timeit "/?detector=deal_line&min_score=0.7&status=new"
timeit "/?hours=24"
timeit "/queue/rows?status=new"
timeit "/line/L-00042"
