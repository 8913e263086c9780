#!/usr/bin/env bash
# End-to-end benchmark of `linewatch run` with `[streams]` (issue 11): records/s for 1 and
# 2 instances with the internal topics, against 1 instance without them (the in-process
# path), CPU-seconds per million records with and without the hop, and bytes written to
# the internal topics per input record.
#
#   benches/streams_e2e.sh [SUBSCRIBERS] [DAYS]     (default 20000 x 2: about 450,000 records)
#
# 1. Broker: LINEWATCH_TEST_BROKERS if set, else the local broker (deploy/local/kafka.sh).
# 2. The city is produced once (`generate --kafka --rate 0`) to a fresh topic of PARTITIONS
#    (6) partitions.
# 3. For each run (off: streams disabled, 1 instance; on-1; on-2) a fresh group reads the
#    whole backlog; timed from the first process start until every record is taken by the
#    ingests and (streams on) the stages have read every internal record written. CPU time
#    is utime + stime of every instance from /proc at the end.
# 4. The table (and target/bench-streams/<run>/results.txt); everything started is stopped.
#
# Each of the three runs is made under every guarantee of GUARANTEES (default
# "at_least_once exactly_once"); under exactly_once each instance has its own
# group.instance.id (so its own transactional ids), and "every internal record read"
# counts only what the stages read read_committed, i.e. what was committed.
#
# Knobs: PARTITIONS (6), INTERNAL_PARTITIONS (6), PHASE_TIMEOUT_S (1200), GUARANTEES.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init streams_e2e

subs="${1:-20000}"
days="${2:-2}"
partitions="${PARTITIONS:-6}"
internal="${INTERNAL_PARTITIONS:-6}"
phase_timeout="${PHASE_TIMEOUT_S:-1200}"
guarantees="${GUARANTEES:-at_least_once exactly_once}"
run_id="$(date +%Y%m%d-%H%M%S)-$$"
work="target/bench-streams/$run_id"
mkdir -p "$work"
need python3
need curl
bench_clean_env
bench_build
broker_up

suffix="$(rand_suffix)"
backlog="bench-streams-$suffix"
say "creating topics (*-$suffix, $partitions input partitions)"
input_topic "$backlog" "$partitions"
say "producing a $subs-subscriber, $days-day city"
CITY_TIMEOUT_S="$phase_timeout"
kafka_city "$backlog" 0 "$work/manifest.json" "$subs" "$days" 42 2>"$work/generate.log"
records="$(manifest_records "$work/manifest.json")"
say "$records records in the backlog"

# sum_metric SERIES ADDR...: the series summed over the instances.
sum_metric() {
  local series="$1" total=0 v a
  shift
  for a in "$@"; do
    v="$(metric "$a" "$series")"
    total="$(awk -v t="$total" -v v="${v:-0}" 'BEGIN { print t + v }')"
  done
  printf '%s\n' "$total"
}

taken() {
  local r total=0 v
  for r in valid malformed late duplicate; do
    v="$(sum_metric "linewatch_records_total{result=\"$r\"}" "$@")"
    total="$(awk -v t="$total" -v v="$v" 'BEGIN { print t + v }')"
  done
  printf '%s\n' "$total"
}

internal() {
  local what="$1" t total=0 v
  shift
  for t in by_line by_handset evidence; do
    v="$(sum_metric "linewatch_internal_${what}_total{topic=\"$t\"}" "$@")"
    total="$(awk -v t="$total" -v v="$v" 'BEGIN { print t + v }')"
  done
  printf '%s\n' "$total"
}

cpu_s() {
  local ticks
  ticks="$(getconf CLK_TCK)"
  awk -v hz="$ticks" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

# one_run NAME INSTANCES STREAMS(true|false) GUARANTEE
one_run() {
  local name="$1" n="$2" on="$3" g="$4" i addrs=() pids=() cfg="$work/$1.toml" t0 secs cpu=0
  cat >"$cfg" <<EOF
[service]
batch_max_wait_ms = 20
partition_idle_timeout_s = 5
processing_guarantee = "$g"
[streams]
enabled = $on
internal_partitions = $internal
EOF
  for t in alerts dead; do create_topic "bench-$t-$name-$suffix" 1; done
  t0="$(now)"
  for ((i = 0; i < n; i++)); do
    local icfg="$cfg"
    if [ "$g" = exactly_once ]; then
      # Instances on one host need their own transactional ids.
      icfg="$work/$name-$i.toml"
      { cat "$cfg"; printf '[kafka]\n"group.instance.id" = "bench-%s-%d"\n' "$name" "$i"; } >"$icfg"
    fi
    run_service "$work/$name-$i.log" --config "$icfg" run --brokers "$BROKERS" \
      --input-topic "$backlog" --alert-topic "bench-alerts-$name-$suffix" \
      --dead-letter-topic "bench-dead-$name-$suffix" --group "bench-$name-$suffix"
    addrs+=("$HTTP")
    pids+=("$SVC_PID")
    if [ "$on" = true ]; then
      bench_own_topic "bench-$name-$suffix-by-line"
      bench_own_topic "bench-$name-$suffix-by-handset"
      bench_own_topic "bench-$name-$suffix-evidence"
    fi
  done
  local deadline=$((SECONDS + phase_timeout))
  while :; do
    [ "$SECONDS" -lt "$deadline" ] || die "$name: not done within $phase_timeout s"
    sleep 0.5
    at_least "$(taken "${addrs[@]}")" "$records" || continue
    if [ "$on" = true ]; then
      local w r
      w="$(internal records_written "${addrs[@]}")"
      r="$(internal records_read "${addrs[@]}")"
      at_least "$r" "$w" || continue
    fi
    break
  done
  secs="$(since "$t0" 2)"
  for i in "${!pids[@]}"; do
    cpu="$(awk -v c="$cpu" -v d="$(cpu_s "${pids[$i]}")" 'BEGIN { print c + d }')"
  done
  local bytes=0 msgs=0
  if [ "$on" = true ]; then
    bytes="$(internal bytes_written "${addrs[@]}")"
    msgs="$(internal records_written "${addrs[@]}")"
  fi
  for i in "${!pids[@]}"; do stop_service "${pids[$i]}" "$work/$name-$i.log"; done
  awk -v n="$name" -v g="$g" -v k="$n" -v s="$secs" -v c="$cpu" -v r="$records" -v b="$bytes" -v m="$msgs" 'BEGIN {
    printf "| %-9s | %s | %d | %8.1f | %9.0f | %7.1f | %6.2f | %6.1f |\n", n, g, k, s, r / s, c / (r / 1e6), m / r, b / r
  }' | tee -a "$work/results.txt"
}

say "runs: off (1 instance, no hop), on-1, on-2; guarantees: $guarantees"
printf '| run   | guarantee | instances | seconds | records/s | CPU-s per 1M records | internal messages per record | internal bytes per record |\n|---|---|---|---|---|---|---|---|\n' |
  tee "$work/results.txt"
for g in $guarantees; do
  tag="${g%%_*}"
  one_run "off-$tag" 1 false "$g"
  one_run "on1-$tag" 1 true "$g"
  one_run "on2-$tag" 2 true "$g"
done
say "results in $work/results.txt"
