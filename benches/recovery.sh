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
# The broker: LINEWATCH_TEST_BROKERS, else the local broker (deploy/local/kafka.sh; started,
# and stopped at exit, if none runs).
# Figures go to target/bench-recovery/<run>/results.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init recovery

subs="${1:-20000}"
shift || true
days_list=("${@:-2 7}")
# shellcheck disable=SC2206
days_list=(${days_list[*]})
work="target/bench-recovery/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"
need kcat "deploy/local/setup.sh installs it"
bench_clean_env

bench_build
broker_up

start_service() {
  # start_service INPUT GROUP STATE_TOPIC INTERVAL LOG OUTPUT_PREFIX
  printf '[kafka]\n"group.instance.id" = "%s-0"\n' "$2" >"$work/$2.toml"
  run_service "$5" --config "$work/$2.toml" run --brokers "$BROKERS" --group "$2" \
    --input-topic "$1" --alert-topic "$6-alerts" --dead-letter-topic "$6-dead" \
    --state-topic "$3" --checkpoint-interval-s "$4"
}

start_ms=1791158400000
printf '%-5s %-12s %10s %12s %18s %7s %7s %14s\n' days checkpoints records first_run_s restart_to_alert_s bar_s load_s records_reread | tee "$work/results.txt"
for days in "${days_list[@]}"; do
  s="$(rand_suffix)"
  input="recovery-$days-$s"
  input_topic "$input" 1
  say "producing $subs subscribers x $days days to $input"
  kafka_city "$input" 0 "$work/manifest-$days.json" "$subs" "$days" 3 2>/dev/null
  records=$(manifest_records "$work/manifest-$days.json")
  burst_ts=$((start_ms + days * 86400000 + 60000))
  base=""
  for mode in off on; do
    interval=5
    [ "$mode" = off ] && interval=0
    for t in "$input-$mode-alerts" "$input-$mode-dead"; do create_topic "$t" 1; done
    group="g-$input-$mode"
    state="state-$input-$mode"
    [ "$mode" = on ] && bench_own_topic "$state"
    start_service "$input" "$group" "$state" "$interval" "$work/first-$days-$mode.log" "$input-$mode"
    python3 "$WATCH" wait "$HTTP" "$SVC_PID" "$records" "$T_START" 1800 "$work/first-$days-$mode.json" >/dev/null ||
      die "first run did not finish"
    first_s=$(python3 -c "import json; print(round(json.load(open('$work/first-$days-$mode.json'))['seconds_from_start'], 1))")
    [ "$mode" = on ] && wait_checkpoints "$HTTP" 2
    kill_9 "$SVC_PID"
    start_service "$input" "$group" "$state" "$interval" "$work/restart-$days-$mode.log" "$input-$mode"
    line="burst-$s-$mode"
    bulk_burst "$input" "$line" "$s" "$burst_ts"
    wait_alert "$input-$mode-alerts" "$line" 1800 >/dev/null
    alert_s=$(since "$T_START" 1)
    reread=$(metric "$HTTP" linewatch_records_rebuilt_total)
    load_s=$(python3 -c "
import json
for l in open('$work/restart-$days-$mode.log'):
    try: ev = json.loads(l)
    except ValueError: continue
    if 'restored from a checkpoint' in ev.get('message', ''):
        print(round(ev['load_seconds'], 2)); break
else: print('-')")
    kill_9 "$SVC_PID"
    [ -z "$base" ] && base="$first_s"
    bar=$(python3 -c "print(round(max(3.0, $base / 4), 1))")
    printf '%-5s %-12s %10s %12s %18s %7s %7s %14s\n' "$days" "$mode" "$records" "$first_s" "$alert_s" "$bar" "$load_s" "${reread:-0}" | tee -a "$work/results.txt"
  done
done
say "figures in $work/results.txt"
