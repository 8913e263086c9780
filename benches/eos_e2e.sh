#!/usr/bin/env bash
# The cost of exactly once (issue 8): `linewatch run` with processing_guarantee
# at_least_once and exactly_once over the same backlog, and fed live.
#
#   benches/eos_e2e.sh [SUBSCRIBERS] [DAYS]     (default 40000 x 4: about 1.8 million records)
#
# 1. Broker: LINEWATCH_TEST_BROKERS if set, else the local broker (deploy/local/kafka.sh;
#    started, and stopped at exit, if none runs).
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
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_init eos_e2e

subs="${1:-40000}"
days="${2:-4}"
rounds="${ROUNDS:-3}"
live_rate="${LIVE_RATE:-30000}"
live_subs="${LIVE_SUBSCRIBERS:-10000}"
live_days="${LIVE_DAYS:-2}"
phase_timeout="${PHASE_TIMEOUT_S:-1200}"
work="target/bench-eos/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$work"

need python3
bench_config "$work"
bench_clean_env

bench_build
broker_up

suffix="$(rand_suffix)"
backlog="eos-backlog-$suffix"
bench_own_topic "eos-state-$suffix"
input_topic "$backlog" 1
say "producing ${subs} subscribers x ${days} days to $backlog"
kafka_city "$backlog" 0 "$work/manifest.json" "$subs" "$days" 42 "${CFG_ARGS[@]}" 2>"$work/produce.log"
records=$(manifest_records "$work/manifest.json")
say "$records records in $backlog"

run_service_as() {
  # run_service_as INPUT_TOPIC NAME GUARANTEE: fresh group and output topics.
  create_topic "eos-alerts-$2-$suffix" 1
  create_topic "eos-dead-$2-$suffix" 1
  run_service "$work/service-$2.log" "${CFG_ARGS[@]}" run --brokers "$BROKERS" \
    --group "eos-$2-$suffix" --input-topic "$1" --alert-topic "eos-alerts-$2-$suffix" \
    --dead-letter-topic "eos-dead-$2-$suffix" \
    --processing-guarantee "$3" --state-topic "eos-state-$suffix"
}

for r in $(seq 1 "$rounds"); do
  for g in at_least_once exactly_once; do
    name="backlog-$g-$r"
    say "round $r: $g over the backlog"
    run_service_as "$backlog" "$name" "$g"
    python3 "$WATCH" wait "$HTTP" "$SVC_PID" "$records" "$T_START" "$phase_timeout" "$work/$name.json" ||
      die "$name did not finish (log: $work/service-$name.log)"
    stop_service "$SVC_PID" "$work/service-$name.log"
  done
done

for g in at_least_once exactly_once; do
  name="live-$g"
  live="eos-live-$g-$suffix"
  input_topic "$live" 1
  run_service_as "$live" "$name" "$g"
  python3 "$WATCH" ready "$HTTP" 120 || die "$name never became ready"
  kafka_city "$live" "$live_rate" "$work/manifest-$name.json" "$live_subs" "$live_days" 7 \
    2>"$work/produce-$name.log"
  n=$(manifest_records "$work/manifest-$name.json")
  python3 "$WATCH" wait "$HTTP" "$SVC_PID" "$n" "$T_START" "$phase_timeout" "$work/$name.json" ||
    die "$name did not finish (log: $work/service-$name.log)"
  stop_service "$SVC_PID" "$work/service-$name.log"
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
