#!/usr/bin/env bash
# The cost of exactly once (issue 8): `linewatch run` with processing_guarantee
# at_least_once and exactly_once over the same backlog, and fed live.
#
#   benches/eos_e2e.sh [SUBSCRIBERS] [DAYS]     (default 40000 x 4: about 1.8 million records)
#
# 1. Broker: LINEWATCH_TEST_BROKERS if set, else deploy/local/kafka.sh up (stopped at exit).
# 2. Backlog: the city produced once to a fresh topic (LogAppendTime).
# 3. ROUNDS (3) rounds, each running at_least_once then exactly_once (alternating, so a
#    change in the machine's load hits both) over the whole backlog with a fresh group and
#    fresh output topics; timed from the process start to every record counted and lag 0
#    (benches/kafka_e2e/watch.py). The share is exactly_once's rate over at_least_once's in
#    the same round.
# 4. Live: for each guarantee a fresh service on an empty topic, fed a smaller city
#    (LIVE_SUBSCRIBERS x LIVE_DAYS, default 10000 x 2) at LIVE_RATE (30000) records/s;
#    record-to-alert p50/p99 from /metrics (under exactly_once an alert counts once its
#    transaction is committed, when a read_committed reader can see it).
# Knobs: ROUNDS, LIVE_RATE, LIVE_SUBSCRIBERS, LIVE_DAYS, PHASE_TIMEOUT_S (1200),
# LINEWATCH_BENCH_CONFIG (a config file for the service, e.g. transaction_interval_ms).
# Results: target/bench-eos/<run>/ (results.json, service logs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

subs="${1:-40000}"
days="${2:-4}"
rounds="${ROUNDS:-3}"
live_rate="${LIVE_RATE:-30000}"
live_subs="${LIVE_SUBSCRIBERS:-10000}"
live_days="${LIVE_DAYS:-2}"
phase_timeout="${PHASE_TIMEOUT_S:-1200}"
watch=benches/kafka_e2e/watch.py
libs="${LINEWATCH_KAFKA_DIR:-deploy/local/.kafka}/libs"
bin=target/release/linewatch
work="target/bench-eos/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"

say() { printf 'eos_e2e: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
command -v python3 >/dev/null || die "needs python3"
cfg_args=()
if [ -n "${LINEWATCH_BENCH_CONFIG:-}" ]; then
  cfg_args=(--config "$LINEWATCH_BENCH_CONFIG")
  cp "$LINEWATCH_BENCH_CONFIG" "$work/config.toml"
fi
for v in $(compgen -e | grep '^LINEWATCH_' | grep -v '^LINEWATCH_TEST_BROKERS$' | grep -v '^LINEWATCH_BENCH_CONFIG$' || true); do
  unset "$v"
done

STARTED_BROKER=0
SVC_PID=""
TOPICS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  if [ -n "$SVC_PID" ] && kill -0 "$SVC_PID" 2>/dev/null; then
    kill -TERM "$SVC_PID"
    wait "$SVC_PID" 2>/dev/null
  fi
  if [ "$STARTED_BROKER" = 1 ]; then
    deploy/local/kafka.sh down
  elif [ ${#TOPICS[@]} -gt 0 ] && [ -d "$libs" ]; then
    for t in "${TOPICS[@]}"; do
      java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$libs/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BROKERS" --delete --topic "$t" >/dev/null 2>&1 || say "could not delete topic $t"
    done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building (release)"
cargo build --release --quiet
if [ -n "${LINEWATCH_TEST_BROKERS:-}" ]; then
  BROKERS="$LINEWATCH_TEST_BROKERS"
else
  STARTED_BROKER=1
  BROKERS="$(deploy/local/kafka.sh up | tail -n1)"
fi
[ -d "$libs" ] || die "no Kafka tools in $libs: run deploy/local/kafka.sh up once"

create_topic() {
  local name="$1" parts="$2"
  shift 2
  TOPICS+=("$name")
  timeout 120 java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$libs/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create \
    --topic "$name" --partitions "$parts" --replication-factor 1 "$@" >/dev/null ||
    die "could not create topic $name"
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

suffix="$(printf '%04x%04x' $RANDOM $RANDOM)"
backlog="eos-backlog-$suffix"
TOPICS+=("eos-state-$suffix")  # created by the service
append=(--config message.timestamp.type=LogAppendTime)
create_topic "$backlog" 1 "${append[@]}"
say "producing ${subs} subscribers x ${days} days to $backlog"
"$bin" "${cfg_args[@]}" generate --subscribers "$subs" --days "$days" --seed 42 \
  --kafka-brokers "$BROKERS" --topic "$backlog" --rate 0 --manifest "$work/manifest.json" 2>"$work/produce.log"
records=$(python3 -c "import json; print(json.load(open('$work/manifest.json'))['events_written'])")
say "$records records in $backlog"

run_service() {
  # run_service INPUT_TOPIC NAME GUARANTEE: fresh group and output topics.
  local port
  create_topic "eos-alerts-$2-$suffix" 1
  create_topic "eos-dead-$2-$suffix" 1
  port="$(free_port)"
  HTTP="127.0.0.1:$port"
  T_START=$(date +%s.%N)
  LINEWATCH_LOG="info,librdkafka=warn" "$bin" "${cfg_args[@]}" run --brokers "$BROKERS" \
    --group "eos-$2-$suffix" --input-topic "$1" --alert-topic "eos-alerts-$2-$suffix" \
    --dead-letter-topic "eos-dead-$2-$suffix" --http "$HTTP" --log-format json \
    --processing-guarantee "$3" --state-topic "eos-state-$suffix" \
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

for r in $(seq 1 "$rounds"); do
  for g in at_least_once exactly_once; do
    name="backlog-$g-$r"
    say "round $r: $g over the backlog"
    run_service "$backlog" "$name" "$g"
    python3 "$watch" wait "$HTTP" "$SVC_PID" "$records" "$T_START" "$phase_timeout" "$work/$name.json" ||
      die "$name did not finish (log: $work/service-$name.log)"
    stop_service "$name"
  done
done

for g in at_least_once exactly_once; do
  name="live-$g"
  live="eos-live-$g-$suffix"
  create_topic "$live" 1 "${append[@]}"
  run_service "$live" "$name" "$g"
  python3 "$watch" ready "$HTTP" 120 || die "$name never became ready"
  "$bin" generate --subscribers "$live_subs" --days "$live_days" --seed 7 --kafka-brokers "$BROKERS" \
    --topic "$live" --rate "$live_rate" --manifest "$work/manifest-$name.json" 2>"$work/produce-$name.log"
  n=$(python3 -c "import json; print(json.load(open('$work/manifest-$name.json'))['events_written'])")
  python3 "$watch" wait "$HTTP" "$SVC_PID" "$n" "$T_START" "$phase_timeout" "$work/$name.json" ||
    die "$name did not finish (log: $work/service-$name.log)"
  stop_service "$name"
done

python3 - "$work" "$records" "$rounds" "$live_rate" <<'PY'
import json, sys
d, records, rounds, live_rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def ms(x):
    return "n/a" if x is None else (x + " s" if isinstance(x, str) else f"{x * 1000:.0f} ms")
res = {"records": records, "rounds": [], "live": {}}
print(f"\nexactly_once against at_least_once, {records:,} records, 1 partition")
print(f"{'round':<6} {'at_least_once':>16} {'exactly_once':>16} {'share':>7}")
for r in range(1, rounds + 1):
    a = json.load(open(f"{d}/backlog-at_least_once-{r}.json"))
    e = json.load(open(f"{d}/backlog-exactly_once-{r}.json"))
    ra, re_ = records / a["seconds_from_start"], records / e["seconds_from_start"]
    res["rounds"].append({"at_least_once": a, "exactly_once": e, "share": re_ / ra})
    print(f"{r:<6} {ra:>12,.0f} r/s {re_:>12,.0f} r/s {re_ / ra * 100:>6.0f}%  (alerts {a['alerts']} / {e['alerts']})")
shares = sorted(x["share"] for x in res["rounds"])
print(f"median share: {shares[len(shares) // 2] * 100:.0f}%")
print(f"\nlive at {live_rate} records/s: record-to-alert p50 / p99")
for g in ("at_least_once", "exactly_once"):
    l = json.load(open(f"{d}/live-{g}.json"))
    res["live"][g] = l
    q = l["record_to_alert"]
    print(f"  {g:<14} {ms(q['p50'])} / {ms(q['p99'])}  ({q['count']} alerts)")
json.dump(res, open(f"{d}/results.json", "w"), indent=1)
PY
say "figures in $work/results.json"
