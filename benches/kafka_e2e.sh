#!/usr/bin/env bash
# End-to-end Kafka benchmark of `linewatch run` (issue 3): throughput against the raw consume
# rate, record-to-alert latency below capacity, and peak RSS with a backlog vs fed live.
#
#   benches/kafka_e2e.sh [SUBSCRIBERS] [DAYS]     (default 110000 x 4: about 5 million records)
#
# 1. Broker: LINEWATCH_TEST_BROKERS if set, else deploy/local/kafka.sh up (stopped at exit).
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
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

subs="${1:-110000}"
days="${2:-4}"
partitions="${PARTITIONS:-1}"
fraction="${LIVE_FRACTION:-0.5}"
phase_timeout="${PHASE_TIMEOUT_S:-1200}"
watch=benches/kafka_e2e/watch.py
libs="${LINEWATCH_KAFKA_DIR:-deploy/local/.kafka}/libs"
bin=target/release/linewatch
run_id="$(date +%Y%m%d-%H%M%S)-$$"
work="target/bench-kafka/$run_id"
mkdir -p "$work"

say() { printf 'kafka_e2e: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
command -v kcat >/dev/null || die "needs kcat (deploy/local/setup.sh installs it)"
command -v python3 >/dev/null || die "needs python3"

cfg_args=()
if [ -n "${LINEWATCH_BENCH_CONFIG:-}" ]; then
  cfg_args=(--config "$LINEWATCH_BENCH_CONFIG")
  cp "$LINEWATCH_BENCH_CONFIG" "$work/config.toml"
fi
# The developer's own LINEWATCH_* settings must not change what is measured.
for v in $(compgen -e | grep '^LINEWATCH_' | grep -v '^LINEWATCH_TEST_BROKERS$' | grep -v '^LINEWATCH_BENCH_CONFIG$' || true); do
  unset "$v"
done

STARTED_BROKER=0
SVC_PID=""
GEN_PID=""
TOPICS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  [ -n "$GEN_PID" ] && kill "$GEN_PID" 2>/dev/null
  if [ -n "$SVC_PID" ] && kill -0 "$SVC_PID" 2>/dev/null; then
    kill -TERM "$SVC_PID"
    wait "$SVC_PID" 2>/dev/null
  fi
  if [ "$STARTED_BROKER" = 1 ]; then
    say "stopping the broker this script started"
    deploy/local/kafka.sh down
  elif [ ${#TOPICS[@]} -gt 0 ]; then
    delete_topics
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# On a broker we did not start, the benchmark's topics (about 2 GB) are deleted again.
delete_topics() {
  local t
  if [ ! -d "$libs" ]; then
    say "left topics behind (no Kafka tools in $libs to delete them): ${TOPICS[*]}"
    return
  fi
  for t in "${TOPICS[@]}"; do
    java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$libs/*" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "$BROKERS" --delete --topic "$t" >/dev/null 2>&1 ||
      say "could not delete topic $t"
  done
}

say "building (release)"
cargo build --release --quiet

if [ -n "${LINEWATCH_TEST_BROKERS:-}" ]; then
  BROKERS="$LINEWATCH_TEST_BROKERS"
  say "using the broker at $BROKERS (LINEWATCH_TEST_BROKERS)"
else
  STARTED_BROKER=1
  BROKERS="$(deploy/local/kafka.sh up | tail -n1)"
  [ -n "$BROKERS" ] || die "kafka.sh up printed no address"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Topics through the broker's own admin tool (kafka.sh topic needs a broker kafka.sh
# started; with LINEWATCH_TEST_BROKERS it may be someone else's).
create_topic() {
  local name="$1" parts="$2"
  shift 2
  TOPICS+=("$name")
  timeout 120 java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$libs/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create \
    --topic "$name" --partitions "$parts" --replication-factor 1 "$@" >/dev/null ||
    die "could not create topic $name"
}
[ -d "$libs" ] || die "no Kafka tools in $libs: run deploy/local/kafka.sh up once (it fetches them)"

suffix="$(printf '%04x%04x' $RANDOM $RANDOM)"
backlog="bench-backlog-$suffix"
live="bench-live-$suffix"
append=(--config message.timestamp.type=LogAppendTime)
say "creating topics (*-$suffix, $partitions input partitions)"
create_topic "$backlog" "$partitions" "${append[@]}"
create_topic "$live" "$partitions" "${append[@]}"
for t in alerts-a dead-a alerts-b dead-b; do create_topic "bench-$t-$suffix" 1; done

gen() {
  # gen TOPIC RATE MANIFEST: the city to TOPIC, timed, bounded by the phase timeout.
  timeout "$phase_timeout" "$bin" "${cfg_args[@]}" generate --subscribers "$subs" --days "$days" \
    --seed 42 --kafka-brokers "$BROKERS" --topic "$1" --rate "$2" --manifest "$3"
}

# --- 2. backlog ---------------------------------------------------------------------------
say "producing ${subs} subscribers x ${days} days to $backlog as fast as possible"
t0=$(date +%s.%N)
gen "$backlog" 0 "$work/manifest.json" 2> >(tee "$work/produce.log" >&2)
produce_s=$(python3 -c "import time; print(time.time() - $t0)")
records=$(python3 -c "import json; print(json.load(open('$work/manifest.json'))['events_written'])")
say "$records records in $backlog"

# --- 3. raw consume -----------------------------------------------------------------------
say "raw consume with kcat"
t0=$(date +%s.%N)
timeout "$phase_timeout" kcat -C -b "$BROKERS" -t "$backlog" -o beginning -e -q >/dev/null
kcat_s=$(python3 -c "import time; print(time.time() - $t0)")

# --- 4/5. the service ---------------------------------------------------------------------
start_service() {
  # start_service TOPIC RUN: fresh group, own alert/dead-letter topics, JSON log to a file.
  local port
  port="$(free_port)"
  HTTP="127.0.0.1:$port"
  T_START=$(date +%s.%N)
  LINEWATCH_LOG="info,librdkafka=warn" "$bin" "${cfg_args[@]}" run --brokers "$BROKERS" \
    --group "bench-$2-$suffix" --input-topic "$1" --alert-topic "bench-alerts-$2-$suffix" \
    --dead-letter-topic "bench-dead-$2-$suffix" --http "$HTTP" --log-format json \
    </dev/null >/dev/null 2>"$work/service-$2.log" &
  SVC_PID=$!
}

stop_service() {
  kill -TERM "$SVC_PID"
  local rc=0
  wait "$SVC_PID" || rc=$?
  SVC_PID=""
  [ "$rc" -eq 0 ] || die "service exited $rc on SIGTERM (log: $work/service-$1.log)"
}

say "run A: linewatch run over the backlog"
start_service "$backlog" a
python3 "$watch" wait "$HTTP" "$SVC_PID" "$records" "$T_START" "$phase_timeout" "$work/backlog.json" ||
  die "run A did not finish (log: $work/service-a.log)"
stop_service a

live_rate="${LIVE_RATE:-$(python3 -c "import json; a=json.load(open('$work/backlog.json')); print(int($records / a['seconds_from_start'] * $fraction))")}"
say "run B: linewatch run fed live at $live_rate records/s"
start_service "$live" b
python3 "$watch" ready "$HTTP" 120 || die "run B never became ready (log: $work/service-b.log)"
t0=$(date +%s.%N)
gen "$live" "$live_rate" "$work/manifest-live.json" 2> >(tee "$work/produce-live.log" >&2)
live_produce_s=$(python3 -c "import time; print(time.time() - $t0)")
python3 "$watch" wait "$HTTP" "$SVC_PID" "$records" "$T_START" "$phase_timeout" "$work/live.json" ||
  die "run B did not finish (log: $work/service-b.log)"
stop_service b

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
python3 "$watch" table "$work/results.json"
say "figures in $work/results.json"
