# shellcheck shell=bash
# What the benchmark scripts share (benches/*.sh source it): messages, the release build,
# the broker (LINEWATCH_TEST_BROKERS, else deploy/local/kafka.sh's, started and stopped if
# it does not run),
# topics, the service as a child process, metrics, a generated city, timing, and the exit
# trap that stops everything the script started.
#
#   cd "$(dirname "${BASH_SOURCE[0]}")/.."   # the scripts run from the repository root
#   . benches/lib.sh
#   bench_init NAME                          # message prefix, PATH, exit trap
#
# Sourcing it only defines functions and variables; nothing runs before bench_init.

BIN=target/release/linewatch
# shellcheck disable=SC2034  # read by the scripts that source this file
WATCH=benches/kafka_e2e/watch.py
# The Kafka command-line tools (topic admin) that deploy/local/kafka.sh fetched.
KAFKA_LIBS="${LINEWATCH_KAFKA_DIR:-deploy/local/.kafka}/libs"
# Their admin commands' JVM, small and quick to start (an array, not a function: `timeout`
# runs it).
KAFKA_TOOL=(java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$KAFKA_LIBS/*")
BROKERS=""
STARTED_BROKER=0
# Processes the exit trap stops (bench_track); topics it deletes from a broker the script
# did not start (create_topic, bench_own_topic).
BENCH_PIDS=()
BENCH_TOPICS=()
BENCH_NAME=bench

say() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# need COMMAND [HINT]: stop at once when a tool is missing, not halfway through a run.
need() {
  command -v "$1" >/dev/null || die "needs $1${2:+ ($2)}"
}

# bench_init NAME: the message prefix, cargo on PATH, and the exit trap.
bench_init() {
  BENCH_NAME="$1"
  export PATH="${HOME:-/root}/.cargo/bin:$PATH"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# bench_clean_env: the developer's own LINEWATCH_* settings must not change what is
# measured. Kept: the broker, the Kafka tools' folder (kafka.sh's) and the benchmark's own
# config file (the scripts read it; the service reads none of the three).
bench_clean_env() {
  local v
  for v in $(compgen -e | grep '^LINEWATCH_' || true); do
    case "$v" in
      LINEWATCH_TEST_BROKERS | LINEWATCH_KAFKA_DIR | LINEWATCH_BENCH_CONFIG) ;;
      *) unset "$v" ;;
    esac
  done
}

# bench_config WORK: CFG_ARGS (`--config FILE`, or nothing) from LINEWATCH_BENCH_CONFIG, a
# config file for the service and the producer; a copy goes to WORK with the figures.
# shellcheck disable=SC2034  # CFG_ARGS is read by the scripts that source this file
bench_config() {
  CFG_ARGS=()
  if [ -n "${LINEWATCH_BENCH_CONFIG:-}" ]; then
    CFG_ARGS=(--config "$LINEWATCH_BENCH_CONFIG")
    cp "$LINEWATCH_BENCH_CONFIG" "$1/config.toml"
  fi
}

# A random suffix for topic and group names, so runs never see each other's data.
rand_suffix() {
  printf '%04x%04x' $RANDOM $RANDOM
}

# bench_build: the release binary, always rebuilt (a no-op when it is up to date), so a
# stale binary is never measured.
bench_build() {
  say "building (release)"
  cargo build --release --quiet
}

# bench_city SUBSCRIBERS DAYS: sets DATA to the folder of the seed-3 city of that size and
# its cell map (events.jsonl, cells.csv) under target/bench-data, generating them with the
# release binary (bench_build first) when either is missing.
bench_city() {
  DATA="target/bench-data/city-${1}x${2}-s3"
  mkdir -p "$DATA"
  if [ ! -s "$DATA/events.jsonl" ] || [ ! -s "$DATA/cells.csv" ]; then
    say "generating ${1} subscribers x ${2} days ..."
    "$BIN" generate --subscribers "$1" --days "$2" --seed 3 \
      --output "$DATA/events.jsonl" --cells "$DATA/cells.csv"
  fi
}

# broker_up: sets BROKERS to LINEWATCH_TEST_BROKERS, else to the local broker of
# deploy/local/kafka.sh if one runs (left running, as scripts/test.sh does), else starts
# one that the exit trap stops again. Topic admin needs the Kafka tools either way.
broker_up() {
  local running
  if [ -n "${LINEWATCH_TEST_BROKERS:-}" ]; then
    BROKERS="$LINEWATCH_TEST_BROKERS"
    say "using the broker at $BROKERS (LINEWATCH_TEST_BROKERS)"
  elif running="$(deploy/local/kafka.sh status 2>/dev/null)" && [ -n "$running" ]; then
    BROKERS="$(printf '%s\n' "$running" | tail -n1)"
    say "using the running local broker at $BROKERS (left running afterwards)"
  else
    STARTED_BROKER=1
    BROKERS="$(deploy/local/kafka.sh up | tail -n1)"
    [ -n "$BROKERS" ] || die "kafka.sh up printed no address"
  fi
  [ -d "$KAFKA_LIBS" ] || die "no Kafka tools in $KAFKA_LIBS: run deploy/local/kafka.sh up once (it fetches them)"
}


# create_topic NAME PARTITIONS [TopicCommand options...]: through the broker's own admin
# tool (kafka.sh topic needs a broker kafka.sh started; LINEWATCH_TEST_BROKERS may be
# someone else's). Deleted again at exit from a broker the script did not start.
create_topic() {
  local name="$1" parts="$2"
  shift 2
  BENCH_TOPICS+=("$name")
  timeout 120 "${KAFKA_TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" \
    --create --topic "$name" --partitions "$parts" --replication-factor 1 "$@" >/dev/null ||
    die "could not create topic $name"
}

# input_topic NAME PARTITIONS: an input topic with message.timestamp.type=LogAppendTime, so
# a record's Kafka timestamp is the moment the broker made it available.
input_topic() {
  create_topic "$1" "$2" --config message.timestamp.type=LogAppendTime
}

# bench_own_topic NAME: a topic the service creates (a state topic), deleted like the rest.
bench_own_topic() {
  BENCH_TOPICS+=("$1")
}

# On a broker the script did not start, its topics (gigabytes for a large city) go again:
# in one call (a JVM start each would add seconds a topic), as a regular expression that
# matches exactly those names.
delete_topics() {
  local pattern
  [ ${#BENCH_TOPICS[@]} -gt 0 ] || return 0
  if [ ! -d "$KAFKA_LIBS" ]; then
    say "left topics behind (no Kafka tools in $KAFKA_LIBS to delete them): ${BENCH_TOPICS[*]}"
    return 0
  fi
  pattern="$(printf '%s\n' "${BENCH_TOPICS[@]}" | sed 's/[.]/\\./g' | paste -sd'|')"
  timeout 120 "${KAFKA_TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" \
    --delete --if-exists --topic "$pattern" >/dev/null 2>&1 ||
    say "could not delete topics: ${BENCH_TOPICS[*]}"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The epoch time in seconds with a fraction, and the seconds since such a time.
now() { date +%s.%N; }
# since T0 [DIGITS]: rounded to DIGITS decimals when given.
since() {
  python3 -c "import sys, time; d = time.time() - float(sys.argv[1]); print(round(d, int(sys.argv[2])) if len(sys.argv) > 2 else d)" "$@"
}

# at_least A B: true when the number A >= B (either empty counts as 0).
at_least() {
  awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { exit !(a + 0 >= b + 0) }'
}

# metric ADDR SERIES: the value of one series (name and labels exactly as exposed) on
# http://ADDR/metrics; empty when it is absent or the service does not answer.
metric() {
  curl -s "http://$1/metrics" | awk -v s="$2" '$1 == s { print $2 }' | head -n1
}

# wait_metric_at_least ADDR SERIES WANT TIMEOUT_S
wait_metric_at_least() {
  local deadline=$((SECONDS + $4))
  until at_least "$(metric "$1" "$2")" "$3"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$2 at $1 did not reach $3 within $4 s"
    sleep 0.5
  done
}

# wait_checkpoints ADDR N: until N more checkpoints than now were written.
wait_checkpoints() {
  local series=linewatch_checkpoint_write_seconds_count n0
  n0="$(metric "$1" "$series")"
  wait_metric_at_least "$1" "$series" "$(awk -v n="${n0:-0}" -v k="$2" 'BEGIN { print n + k }')" 600
}

# bench_track PID: stopped by the exit trap unless bench_reap reaped it first.
bench_track() {
  BENCH_PIDS+=("$1")
}

# bench_reap PID: waits for an exited (or killed) child and forgets it, so the trap never
# signals a pid the system has handed to another process since.
bench_reap() {
  local rc=0
  wait "$1" 2>/dev/null || rc=$?
  bench_forget "$1"
  return "$rc"
}

# bench_forget PID: no longer stopped by the exit trap.
bench_forget() {
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do
    [ "$p" = "$1" ] || keep+=("$p")
  done
  BENCH_PIDS=("${keep[@]}")
}

# kill_9 PID: SIGKILL, as a crash; returns once it is gone. Disowned first: bash reports a
# job killed by a signal ("Killed ...") on stderr, at a moment of its choosing, unless it
# is no job of the shell's (the shell still reaps it).
kill_9() {
  disown "$1" 2>/dev/null || true
  kill -9 "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
  bench_forget "$1"
}

# stop_service PID LOG: SIGTERM, as an orchestrator stops a pod; the service must exit 0.
stop_service() {
  local rc=0
  kill -TERM "$1"
  bench_reap "$1" || rc=$?
  [ "$rc" -eq 0 ] || die "service exited $rc on SIGTERM (log: $2)"
}

# run_service LOG [linewatch options...] run [run options...]: `linewatch` in the
# background with its JSON log to LOG, admin HTTP on a free port (HTTP), started at
# T_START, pid in SVC_PID (tracked).
run_service() {
  local log="$1"
  shift
  HTTP="127.0.0.1:$(free_port)"
  # shellcheck disable=SC2034  # read by the scripts that source this file
  T_START="$(now)"
  LINEWATCH_LOG="info,librdkafka=warn" "$BIN" "$@" --http "$HTTP" --log-format json \
    </dev/null >/dev/null 2>"$log" &
  SVC_PID=$!
  bench_track "$SVC_PID"
}

# kafka_city TOPIC RATE MANIFEST SUBSCRIBERS DAYS SEED [linewatch options...]: a generated
# city to TOPIC at RATE records/s (0: as fast as the producer goes), bounded by
# CITY_TIMEOUT_S when set. Its progress goes to stderr.
kafka_city() {
  local topic="$1" rate="$2" manifest="$3" subs="$4" days="$5" seed="$6" bound=()
  shift 6
  [ -n "${CITY_TIMEOUT_S:-}" ] && bound=(timeout "$CITY_TIMEOUT_S")
  "${bound[@]}" "$BIN" "$@" generate --subscribers "$subs" --days "$days" --seed "$seed" \
    --kafka-brokers "$BROKERS" --topic "$topic" --rate "$rate" --manifest "$manifest"
}

# manifest_records MANIFEST: how many records `generate` wrote.
manifest_records() {
  python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['events_written'])" "$1"
}

# bulk_burst TOPIC LINE TAG TS_MS: 40 texts from LINE to 40 new numbers, a second apart
# from TS_MS: past bulk_sms's default threshold, so LINE alerts once they are read.
bulk_burst() {
  local i
  for i in $(seq 0 39); do
    printf '{"event_id":"%s-%d","ts":%d,"kind":"sms","from":"%s","to":"r-%s-%d"}\n' \
      "$2" "$i" $(($4 + i * 1000)) "$2" "$3" "$i"
  done | kcat -P -b "$BROKERS" -t "$1"
}

# wait_alert TOPIC SUBJECT TIMEOUT_S: prints the first alert on TOPIC about SUBJECT.
wait_alert() {
  local alert="" deadline=$((SECONDS + $3))
  while :; do
    alert="$(kcat -C -b "$BROKERS" -t "$1" -o beginning -e -q 2>/dev/null | grep "\"subject\":\"$2\"" | head -n1 || true)"
    [ -n "$alert" ] && break
    [ "$SECONDS" -lt "$deadline" ] || die "no alert about $2 on $1 within $3 s"
    sleep 0.2
  done
  printf '%s\n' "$alert"
}

# The exit trap: every tracked process stopped (SIGTERM, SIGKILL after 10 s), then the
# broker stopped if the script started it, else the script's topics deleted.
# shellcheck disable=SC2317  # invoked by the EXIT trap
bench_cleanup() {
  local p i
  set +e
  for p in "${BENCH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${BENCH_PIDS[@]}"; do
    for ((i = 0; i < 20; i++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  BENCH_PIDS=()
  if [ "$STARTED_BROKER" = 1 ]; then
    say "stopping the broker this script started"
    deploy/local/kafka.sh down
  elif [ -n "$BROKERS" ]; then
    delete_topics
  fi
}
