#!/usr/bin/env bash
# Failover to a standby after kill -9 of the active `linewatch run` (issue 8, item 5).
#
#   benches/failover.sh [SUBSCRIBERS] [DAYS]          (default 20000 2)
#   MODES="static:6000:1000 dynamic:6000:1000" benches/failover.sh ...
#
# A MODE is MEMBERSHIP:SESSION_TIMEOUT_MS:HEARTBEAT_INTERVAL_MS, MEMBERSHIP `static` (each
# instance its own `[kafka] "group.instance.id"`, as StatefulSet pods) or `dynamic`. The
# city is produced once to a one-partition topic. Then per mode, with a fresh group, alert
# topic and state topic (no state directory: the standby shares no disk with the active):
#   1. one instance (checkpoints every 5 s) consumes the whole topic;
#   2. a second joins the group; the group gives the one partition to one of them (either:
#      a takeover at this point restores the first one's checkpoint), the other stands by
#      (ready, no partitions); the active one is caught up and writes two more checkpoints;
#   3. kill -9 of the active one, then at once 40 texts of a new bulk sender;
#   4. timed: kill -9 to the `detected_at` of that burst's bulk_sms alert (the standby's
#      first new alert); from the standby's log, kill to its assignment, the checkpoint's
#      load time, and the records it re-read.
# The broker: LINEWATCH_TEST_BROKERS, else deploy/local/kafka.sh up (stopped at exit).
# Figures go to target/bench-failover/<run>/results.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

subs="${1:-20000}"
days="${2:-2}"
# shellcheck disable=SC2206
modes=(${MODES:-static:6000:1000 dynamic:6000:1000 static:10000:3000 dynamic:30000:3000})
watch=benches/kafka_e2e/watch.py
libs="${LINEWATCH_KAFKA_DIR:-deploy/local/.kafka}/libs"
bin=target/release/linewatch
work="target/bench-failover/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"
say() { printf 'failover: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
command -v kcat >/dev/null || die "needs kcat (deploy/local/setup.sh installs it)"
for v in $(compgen -e | grep '^LINEWATCH_' | grep -v '^LINEWATCH_TEST_BROKERS$' || true); do
  unset "$v"
done

STARTED_BROKER=0
PIDS=()
ADDR_a="" ADDR_b="" PID_a=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
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
metric() { # metric ADDR SERIES
  curl -s "http://$1/metrics" | awk -v s="$2" '$1 == s { print $2 }' | head -n1
}
now() { python3 -c 'import time; print(time.time())'; }
# start NAME GROUP MODE: one instance; sets ADDR_<NAME> and PID_<NAME>
start() {
  local name=$1 group=$2 membership=$3 session=$4 heartbeat=$5
  local cfg="$work/$group-$name.toml" http
  http="127.0.0.1:$(free_port)"
  {
    printf '[kafka]\n"consumer.session.timeout.ms" = "%s"\n' "$session"
    printf '"consumer.heartbeat.interval.ms" = "%s"\n' "$heartbeat"
    [ "$membership" = static ] && printf '"group.instance.id" = "%s-%s"\n' "$group" "$name"
  } >"$cfg"
  LINEWATCH_LOG="info,librdkafka=warn" "$bin" --config "$cfg" run --brokers "$BROKERS" \
    --group "$group" --input-topic "$input" --alert-topic "$group-alerts" \
    --dead-letter-topic "$group-dead" --state-topic "$group-state" \
    --checkpoint-interval-s 5 --http "$http" --log-format json \
    </dev/null >/dev/null 2>"$work/$group-$name.log" &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  printf -v "ADDR_$name" '%s' "$http"
}

s="$(printf '%04x%04x' $RANDOM $RANDOM)"
input="failover-$s"
create_topic "$input" --config message.timestamp.type=LogAppendTime
say "producing $subs subscribers x $days days to $input"
"$bin" generate --subscribers "$subs" --days "$days" --seed 3 --kafka-brokers "$BROKERS" \
  --topic "$input" --rate 0 --manifest "$work/manifest.json" 2>/dev/null
records=$(python3 -c "import json; print(json.load(open('$work/manifest.json'))['events_written'])")
burst_ts=$((1791158400000 + days * 86400000 + 60000))

printf '%-8s %8s %8s %10s %12s %10s %10s %8s\n' membership session heartbeat records \
  kill_to_alert_s kill_to_assign_s load_s reread | tee "$work/results.txt"
for mode in "${modes[@]}"; do
  IFS=: read -r membership session heartbeat <<<"$mode"
  group="g-$s-$membership-$session-$heartbeat"
  for t in "$group-alerts" "$group-dead"; do create_topic "$t"; done
  start a "$group" "$membership" "$session" "$heartbeat"
  python3 "$watch" wait "$ADDR_a" "$PID_a" "$records" "$(now)" 1800 "$work/$group-drain.json" >/dev/null ||
    die "the first instance did not finish the topic"
  start b "$group" "$membership" "$session" "$heartbeat"
  python3 "$watch" ready "$ADDR_b" 120 >/dev/null || die "b not ready"
  # Which one the group made active (b's join is a rebalance).
  active="" standby=""
  for _ in $(seq 1 600); do
    pa=$(metric "$ADDR_a" linewatch_assigned_partitions)
    pb=$(metric "$ADDR_b" linewatch_assigned_partitions)
    if [ "${pa:-0}" = 1 ] && [ "${pb:-0}" = 0 ]; then active=a standby=b; break; fi
    if [ "${pa:-0}" = 0 ] && [ "${pb:-0}" = 1 ]; then active=b standby=a; break; fi
    sleep 0.2
  done
  [ -n "$active" ] || die "no single active instance ($pa, $pb)"
  act_addr="ADDR_$active" act_pid="PID_$active" stb_addr="ADDR_$standby"
  say "$mode: $active active, $standby standing by"
  # Caught up: a member that took the partition over at the join re-reads it (without
  # publishing); done once its re-read count stands still for 2 s. Then two checkpoints.
  last=-1
  for _ in $(seq 1 600); do
    cur=$(metric "${!act_addr}" linewatch_records_rebuilt_total)
    [ "${cur:-0}" = "$last" ] && break
    last="${cur:-0}"
    sleep 2
  done
  n0=$(metric "${!act_addr}" linewatch_checkpoint_write_seconds_count)
  until python3 -c "import sys; sys.exit(0 if float('$(metric "${!act_addr}" linewatch_checkpoint_write_seconds_count)' or 0) >= float('$n0') + 2 else 1)"; do
    sleep 0.5
  done
  base=$(metric "${!stb_addr}" linewatch_records_rebuilt_total)
  kill -9 "${!act_pid}"
  t_kill=$(now)
  wait "${!act_pid}" 2>/dev/null || true
  line="burst-$s-$membership-$session"
  for i in $(seq 0 39); do
    printf '{"event_id":"%s-%d","ts":%d,"kind":"sms","from":"%s","to":"r-%s-%d"}\n' \
      "$line" "$i" $((burst_ts + i * 1000)) "$line" "$s" "$i"
  done | kcat -P -b "$BROKERS" -t "$input"
  alert=""
  for _ in $(seq 1 1500); do
    alert=$(kcat -C -b "$BROKERS" -t "$group-alerts" -o beginning -e -q 2>/dev/null | grep "\"subject\":\"$line\"" | head -n1 || true)
    [ -n "$alert" ] && break
    sleep 0.2
  done
  [ -n "$alert" ] || die "no alert for the burst after the failover ($mode)"
  reread=$(python3 -c "print(int(float('$(metric "${!stb_addr}" linewatch_records_rebuilt_total)' or 0) - float('${base:-0}' or 0)))")
  python3 - "$work/$group-$standby.log" "$t_kill" "$alert" "$membership" "$session" "$heartbeat" "$records" "${reread:-0}" <<'PY' | tee -a "$work/results.txt"
import datetime, json, sys
log, t_kill, alert, membership, session, heartbeat, records, reread = sys.argv[1:]
t_kill = float(t_kill)
detected = json.loads(alert)["detected_at"] / 1000
assign, load = None, None
for line in open(log):
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    ts = datetime.datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
    if ts < t_kill:
        continue
    if ev.get("message") == "partitions assigned" and ev.get("partitions", 0) > 0 and assign is None:
        assign = ts - t_kill
    if "restored from a checkpoint" in ev.get("message", "") and load is None:
        load = ev.get("load_seconds")
fmt = lambda x: "-" if x is None else f"{x:.1f}" if x >= 1 else f"{x:.2f}"
print(f"{membership:<8} {session:>8} {heartbeat:>8} {records:>10} {fmt(detected - t_kill):>12} "
      f"{fmt(assign):>10} {fmt(load):>10} {float(reread):>8.0f}")
PY
  for p in "${PIDS[@]}"; do
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
done
say "figures in $work/results.txt"
