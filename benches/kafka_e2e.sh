#!/usr/bin/env bash
# End-to-end Kafka benchmark of `linewatch run` (issue 3): throughput against the raw consume
# rate, record-to-alert latency below capacity, and peak RSS with a backlog vs fed live.
#
#   benches/kafka_e2e.sh [SUBSCRIBERS] [DAYS]     (default 110000 x 4: about 5 million records)
#
# 1. Broker: LINEWATCH_TEST_BROKERS if set, else the local broker (deploy/local/kafka.sh;
#    started, and stopped at exit, if none runs).
# 2. Backlog: the city is produced once, as fast as the producer goes, to a fresh topic
#    (`generate --kafka --rate 0`). Input topics use message.timestamp.type=LogAppendTime, so
#    a record's Kafka timestamp is the moment the broker made it available.
# 3. Raw consume rate of that topic: `kcat -C -o beginning -e -q > /dev/null`, timed.
# 4. Run A: `linewatch run` (release) with a fresh group on the backlog topic; timed from the
#    process start until every record is counted and the consumer lag is 0. Peak RSS (VmHWM).
# 5. Run B: a fresh service on an empty topic, fed the same city live at LIVE_FRACTION (0.5)
#    of run A's rate; record-to-alert p50/p99 from /metrics and peak RSS.
# 6. The table; everything this script started is stopped (a trap, also on failure).
#
# Knobs (environment): PARTITIONS (1; see docs/benchmarks-kafka.md on why not more), LIVE_FRACTION (0.5), LIVE_RATE (records/s; overrides
# LIVE_FRACTION), PHASE_TIMEOUT_S (1200, the bound of each phase), LINEWATCH_BENCH_CONFIG
# (a config file for the service and the producer, e.g. to try batch or fetch settings).
# Results go to target/bench-kafka/<run>/ (results.json, service logs, manifest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init kafka_e2e

subs="${1:-110000}"
days="${2:-4}"
partitions="${PARTITIONS:-1}"
fraction="${LIVE_FRACTION:-0.5}"
phase_timeout="${PHASE_TIMEOUT_S:-1200}"
run_id="$(date +%Y%m%d-%H%M%S)-$$"
work="target/bench-kafka/$run_id"
mkdir -p "$work"

need kcat "deploy/local/setup.sh installs it"
need python3

bench_config "$work"
bench_clean_env

bench_build
broker_up

suffix="$(rand_suffix)"
backlog="bench-backlog-$suffix"
live="bench-live-$suffix"
say "creating topics (*-$suffix, $partitions input partitions)"
input_topic "$backlog" "$partitions"
input_topic "$live" "$partitions"
for t in alerts-a dead-a alerts-b dead-b; do create_topic "bench-$t-$suffix" 1; done

# gen TOPIC RATE MANIFEST: the city to TOPIC, timed, bounded by the phase timeout.
CITY_TIMEOUT_S="$phase_timeout"
gen() {
  kafka_city "$1" "$2" "$3" "$subs" "$days" 42 "${CFG_ARGS[@]}"
}

# --- 2. backlog ---------------------------------------------------------------------------
say "producing ${subs} subscribers x ${days} days to $backlog as fast as possible"
t0=$(now)
gen "$backlog" 0 "$work/manifest.json" 2> >(tee "$work/produce.log" >&2)
produce_s=$(since "$t0")
records=$(manifest_records "$work/manifest.json")
say "$records records in $backlog"

# --- 3. raw consume -----------------------------------------------------------------------
say "raw consume with kcat"
t0=$(now)
timeout "$phase_timeout" kcat -C -b "$BROKERS" -t "$backlog" -o beginning -e -q >/dev/null
kcat_s=$(since "$t0")

# --- 4/5. the service ---------------------------------------------------------------------
start_service() {
  # start_service TOPIC RUN: fresh group, own alert/dead-letter topics, JSON log to a file.
  run_service "$work/service-$2.log" "${CFG_ARGS[@]}" run --brokers "$BROKERS" \
    --group "bench-$2-$suffix" --input-topic "$1" --alert-topic "bench-alerts-$2-$suffix" \
    --dead-letter-topic "bench-dead-$2-$suffix"
}

say "run A: linewatch run over the backlog"
start_service "$backlog" a
python3 "$WATCH" wait "$HTTP" "$SVC_PID" "$records" "$T_START" "$phase_timeout" "$work/backlog.json" ||
  die "run A did not finish (log: $work/service-a.log)"
stop_service "$SVC_PID" "$work/service-a.log"

live_rate="${LIVE_RATE:-$(python3 -c "import json; a=json.load(open('$work/backlog.json')); print(int($records / a['seconds_from_start'] * $fraction))")}"
say "run B: linewatch run fed live at $live_rate records/s"
start_service "$live" b
python3 "$WATCH" ready "$HTTP" 120 || die "run B never became ready (log: $work/service-b.log)"
t0=$(now)
gen "$live" "$live_rate" "$work/manifest-live.json" 2> >(tee "$work/produce-live.log" >&2)
live_produce_s=$(since "$t0")
python3 "$WATCH" wait "$HTTP" "$SVC_PID" "$records" "$T_START" "$phase_timeout" "$work/live.json" ||
  die "run B did not finish (log: $work/service-b.log)"
stop_service "$SVC_PID" "$work/service-b.log"

python3 - "$work" <<PY
import json, sys
d = sys.argv[1]
json.dump({
    "subscribers": $subs, "days": $days, "partitions": $partitions, "records": $records,
    "produce_s": $produce_s, "kcat_s": $kcat_s, "live_rate": $live_rate,
    "live_produce_s": $live_produce_s,
    "backlog": json.load(open(f"{d}/backlog.json")), "live": json.load(open(f"{d}/live.json")),
}, open(f"{d}/results.json", "w"), indent=1)
PY
echo
echo "linewatch Kafka end-to-end, ${subs} subscribers x ${days} days, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
python3 "$WATCH" table "$work/results.json"
say "figures in $work/results.json"
