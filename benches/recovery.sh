#!/usr/bin/env bash
# Recovery after kill -9 of `linewatch run`, with and without checkpoints (issue 8).
#
#   benches/recovery.sh [SUBSCRIBERS] [DAYS...]      (default 20000, days 2 and 7)
#
# For each history length: the city is produced once to a fresh topic (LogAppendTime, so
# `service.rebuild_state_s` covers all of it). Then for each mode (checkpoints every 5 s to
# a fresh state topic; checkpoints off):
#   1. a fresh group consumes the whole topic (timed: the first run's consume time);
#   2. with checkpoints, it waits until two checkpoints were written after that;
#   3. kill -9; a new process starts with the same group and the same static member id
#      (`[kafka] "group.instance.id"`, as a StatefulSet pod keeps its name), so it takes its
#      partition straight back instead of waiting out the session timeout; 40 texts of a
#      new line (a bulk send, after the city's end) are produced at once;
#   4. timed: restart to the burst's bulk_sms alert on the alert topic, and the records the
#      restart re-read (`linewatch_records_rebuilt_total`), and the checkpoint's load time.
# Checkpoints off runs first: its first run is the plain consume time of the history, and
# the issue's bar for the restart with checkpoints is max(3 s, a quarter of it) (`bar_s`).
# The broker: LINEWATCH_TEST_BROKERS, else deploy/local/kafka.sh up (stopped at exit).
# Figures go to target/bench-recovery/<run>/results.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

subs="${1:-20000}"
shift || true
days_list=("${@:-2 7}")
# shellcheck disable=SC2206
days_list=(${days_list[*]})
watch=benches/kafka_e2e/watch.py
libs="${LINEWATCH_KAFKA_DIR:-deploy/local/.kafka}/libs"
bin=target/release/linewatch
work="target/bench-recovery/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"
say() { printf 'recovery: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
command -v kcat >/dev/null || die "needs kcat (deploy/local/setup.sh installs it)"
for v in $(compgen -e | grep '^LINEWATCH_' | grep -v '^LINEWATCH_TEST_BROKERS$' || true); do
  unset "$v"
done

STARTED_BROKER=0
SVC_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  [ -n "$SVC_PID" ] && kill -9 "$SVC_PID" 2>/dev/null
  [ "$STARTED_BROKER" = 1 ] && deploy/local/kafka.sh down
}
trap cleanup EXIT

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
  timeout 120 java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$libs/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create \
    --topic "$1" --partitions 1 --replication-factor 1 "${@:2}" >/dev/null ||
    die "could not create topic $1"
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
metric() {
  curl -s "http://$HTTP/metrics" | awk -v s="$1" '$1 == s { print $2 }' | head -n1
}
start_service() {
  # start_service INPUT GROUP STATE_TOPIC INTERVAL LOG OUTPUT_PREFIX
  HTTP="127.0.0.1:$(free_port)"
  T_START=$(date +%s.%N)
  printf '[kafka]\n"group.instance.id" = "%s-0"\n' "$2" >"$work/$2.toml"
  LINEWATCH_LOG="info,librdkafka=warn" "$bin" --config "$work/$2.toml" run --brokers "$BROKERS" --group "$2" \
    --input-topic "$1" --alert-topic "$6-alerts" --dead-letter-topic "$6-dead" \
    --state-topic "$3" --checkpoint-interval-s "$4" --http "$HTTP" --log-format json \
    </dev/null >/dev/null 2>"$5" &
  SVC_PID=$!
}

start_ms=1791158400000
printf '%-5s %-12s %10s %12s %18s %7s %7s %14s\n' days checkpoints records first_run_s restart_to_alert_s bar_s load_s records_reread | tee "$work/results.txt"
for days in "${days_list[@]}"; do
  s="$(printf '%04x%04x' $RANDOM $RANDOM)"
  input="recovery-$days-$s"
  create_topic "$input" --config message.timestamp.type=LogAppendTime
  say "producing $subs subscribers x $days days to $input"
  "$bin" generate --subscribers "$subs" --days "$days" --seed 3 --kafka-brokers "$BROKERS" \
    --topic "$input" --rate 0 --manifest "$work/manifest-$days.json" 2>/dev/null
  records=$(python3 -c "import json; print(json.load(open('$work/manifest-$days.json'))['events_written'])")
  burst_ts=$((start_ms + days * 86400000 + 60000))
  base=""
  for mode in off on; do
    interval=5
    [ "$mode" = off ] && interval=0
    for t in "$input-$mode-alerts" "$input-$mode-dead"; do create_topic "$t"; done
    group="g-$input-$mode"
    state="state-$input-$mode"
    start_service "$input" "$group" "$state" "$interval" "$work/first-$days-$mode.log" "$input-$mode"
    python3 "$watch" wait "$HTTP" "$SVC_PID" "$records" "$T_START" 1800 "$work/first-$days-$mode.json" >/dev/null ||
      die "first run did not finish"
    first_s=$(python3 -c "import json; print(round(json.load(open('$work/first-$days-$mode.json'))['seconds_from_start'], 1))")
    if [ "$mode" = on ]; then
      n0=$(metric linewatch_checkpoint_write_seconds_count)
      until [ "$(python3 -c "print(int(float('${n:-0}') >= float('$n0') + 2))")" = 1 ]; do
        sleep 0.5
        n=$(metric linewatch_checkpoint_write_seconds_count)
      done
      n=""
    fi
    kill -9 "$SVC_PID"
    wait "$SVC_PID" 2>/dev/null || true
    start_service "$input" "$group" "$state" "$interval" "$work/restart-$days-$mode.log" "$input-$mode"
    line="burst-$s-$mode"
    for i in $(seq 0 39); do
      printf '{"event_id":"%s-%d","ts":%d,"kind":"sms","from":"%s","to":"r-%s-%d"}\n' \
        "$line" "$i" $((burst_ts + i * 1000)) "$line" "$s" "$i"
    done | kcat -P -b "$BROKERS" -t "$input"
    until kcat -C -b "$BROKERS" -t "$input-$mode-alerts" -o beginning -e -q 2>/dev/null | grep -q "\"subject\":\"$line\""; do
      sleep 0.2
    done
    alert_s=$(python3 -c "import time; print(round(time.time() - $T_START, 1))")
    reread=$(metric linewatch_records_rebuilt_total)
    load_s=$(python3 -c "
import json
for l in open('$work/restart-$days-$mode.log'):
    try: ev = json.loads(l)
    except ValueError: continue
    if 'restored from a checkpoint' in ev.get('message', ''):
        print(round(ev['load_seconds'], 2)); break
else: print('-')")
    kill -9 "$SVC_PID"
    wait "$SVC_PID" 2>/dev/null || true
    SVC_PID=""
    [ -z "$base" ] && base="$first_s"
    bar=$(python3 -c "print(round(max(3.0, $base / 4), 1))")
    printf '%-5s %-12s %10s %12s %18s %7s %7s %14s\n' "$days" "$mode" "$records" "$first_s" "$alert_s" "$bar" "$load_s" "${reread:-0}" | tee -a "$work/results.txt"
  done
done
say "figures in $work/results.txt"
