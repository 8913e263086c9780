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
# The broker: LINEWATCH_TEST_BROKERS, else the local broker (deploy/local/kafka.sh; started,
# and stopped at exit, if none runs).
# Figures go to target/bench-failover/<run>/results.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init failover

subs="${1:-20000}"
days="${2:-2}"
# shellcheck disable=SC2206
modes=(${MODES:-static:6000:1000 dynamic:6000:1000 static:10000:3000 dynamic:30000:3000})
work="target/bench-failover/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"
need kcat "deploy/local/setup.sh installs it"
bench_clean_env

bench_build
broker_up

ADDR_a="" ADDR_b="" PID_a=""
# start NAME GROUP MEMBERSHIP SESSION_MS HEARTBEAT_MS: one instance; sets ADDR_<NAME> and
# PID_<NAME>
start() {
  local name=$1 group=$2 membership=$3 session=$4 heartbeat=$5
  local cfg="$work/$group-$name.toml"
  {
    printf '[kafka]\n"consumer.session.timeout.ms" = "%s"\n' "$session"
    printf '"consumer.heartbeat.interval.ms" = "%s"\n' "$heartbeat"
    [ "$membership" = static ] && printf '"group.instance.id" = "%s-%s"\n' "$group" "$name"
  } >"$cfg"
  run_service "$work/$group-$name.log" --config "$cfg" run --brokers "$BROKERS" \
    --group "$group" --input-topic "$input" --alert-topic "$group-alerts" \
    --dead-letter-topic "$group-dead" --state-topic "$group-state" \
    --checkpoint-interval-s 5
  printf -v "PID_$name" '%s' "$SVC_PID"
  printf -v "ADDR_$name" '%s' "$HTTP"
}

s="$(rand_suffix)"
input="failover-$s"
input_topic "$input" 1
say "producing $subs subscribers x $days days to $input"
kafka_city "$input" 0 "$work/manifest.json" "$subs" "$days" 3 2>/dev/null
records=$(manifest_records "$work/manifest.json")
burst_ts=$((1791158400000 + days * 86400000 + 60000))

printf '%-8s %8s %8s %10s %12s %10s %10s %8s\n' membership session heartbeat records \
  kill_to_alert_s kill_to_assign_s load_s reread | tee "$work/results.txt"
for mode in "${modes[@]}"; do
  IFS=: read -r membership session heartbeat <<<"$mode"
  group="g-$s-$membership-$session-$heartbeat"
  for t in "$group-alerts" "$group-dead"; do create_topic "$t" 1; done
  bench_own_topic "$group-state"
  start a "$group" "$membership" "$session" "$heartbeat"
  python3 "$WATCH" wait "$ADDR_a" "$PID_a" "$records" "$(now)" 1800 "$work/$group-drain.json" >/dev/null ||
    die "the first instance did not finish the topic"
  start b "$group" "$membership" "$session" "$heartbeat"
  python3 "$WATCH" ready "$ADDR_b" 120 >/dev/null || die "b not ready"
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
  act_addr="ADDR_$active" act_pid="PID_$active" stb_addr="ADDR_$standby" stb_pid="PID_$standby"
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
  wait_checkpoints "${!act_addr}" 2
  base=$(metric "${!stb_addr}" linewatch_records_rebuilt_total)
  t_kill=$(now)
  kill_9 "${!act_pid}"
  line="burst-$s-$membership-$session"
  bulk_burst "$input" "$line" "$s" "$burst_ts"
  alert=$(wait_alert "$group-alerts" "$line" 300)
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
  kill_9 "${!stb_pid}"
done
say "figures in $work/results.txt"
