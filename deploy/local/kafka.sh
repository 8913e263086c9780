#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) on
# loopback, run from the Maven Central jars: no Docker, no Kafka download.
#
#   deploy/local/kafka.sh up                      start (or reuse) the broker; the LAST
#                                                 line of stdout is 127.0.0.1:PORT
#   deploy/local/kafka.sh down                    stop it and delete its data (idempotent)
#   deploy/local/kafka.sh status                  print the address if it runs, else exit 1
#   deploy/local/kafka.sh topic NAME PARTITIONS [extra TopicCommand args]
#   deploy/local/kafka.sh logs                    tail the broker log
#
# Progress messages go to stderr. Everything lives under deploy/local/.kafka/
# (git-ignored): libs/ (the jars), run/ (config, data, log, pid), bootstrap (address).
#
# Environment knobs: KAFKA_START_TIMEOUT (seconds, default 90), KAFKA_HEAP (default 768m),
# LINEWATCH_KAFKA_DIR (default deploy/local/.kafka).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
KDIR="${LINEWATCH_KAFKA_DIR:-$HERE/.kafka}"
LIBS="$KDIR/libs"
RUN="$KDIR/run"
PIDFILE="$RUN/kafka.pid"
BOOTFILE="$KDIR/bootstrap"
BROKER_LOG="$RUN/broker.log"   # log4j output of the broker
BROKER_OUT="$RUN/broker.out"   # the JVM's own stdout/stderr (crashes, GC warnings)
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
HEAP="${KAFKA_HEAP:-768m}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Serialize concurrent invocations (two test runs starting at once). The lock fd is
# closed for every child we leave running (9>&-), or it would hold the lock forever.
take_lock() {
  mkdir -p "$KDIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$KDIR/.lock"
    flock -w 300 9 || die "could not lock $KDIR/.lock within 300 s"
  fi
}

ensure_tools() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (or run deploy/local/setup.sh as root)"
  log "installing ${missing[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

# Fetch the jars once; Maven caches them in ~/.m2, so a fresh checkout re-copies them
# in a few seconds without the network. Re-fetched when pom.xml changes.
fetch_libs() {
  local want have=""
  want="$(sha256sum "$POM" | cut -d' ' -f1)"
  [ -f "$LIBS/.pom.sha256" ] && have="$(cat "$LIBS/.pom.sha256")"
  [ "$want" = "$have" ] && return 0
  log "fetching Kafka jars with Maven into $LIBS ..."
  rm -rf "$LIBS.tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$LIBS.tmp" >"$KDIR/mvn.log" 2>&1 9>&-; then
    cat "$KDIR/mvn.log" >&2
    rm -rf "$LIBS.tmp"
    die "mvn dependency:copy-dependencies failed (output above, also in $KDIR/mvn.log)"
  fi
  echo "$want" >"$LIBS.tmp/.pom.sha256"
  rm -rf "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
}

kafka_version() {
  local jars j
  jars=("$LIBS"/kafka_2.13-*.jar)
  j="${jars[0]##*/kafka_2.13-}"
  echo "${j%.jar}"
}

# JVM for the command-line tools: quiet logging (warnings to stderr), small heap.
tool() {
  java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$RUN/log4j2-tools.properties" \
    -cp "$LIBS/*" "$@" 9>&-
}

# Pid of the broker we started, if it is alive (and really is our broker, not a
# recycled pid).
running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  is_our_broker "$pid" || return 1
  echo "$pid"
}

# True if the process runs kafka.Kafka with our server.properties (pattern matched in
# bash, so no helper process carries the pattern in its own command line).
is_our_broker() {
  local cmd
  # The redirection is inside the braces: a process that exits between the /proc scan and
  # this read would otherwise print "No such file or directory" from the shell itself.
  cmd="$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null)" || return 1
  [[ "$cmd" == *"kafka.Kafka $RUN/server.properties"* ]]
}

# Brokers of ours whose pid file is lost (e.g. run/ deleted by hand): matched by the
# exact path of their server.properties, never by a broad name.
orphan_pids() {
  local d
  for d in /proc/[0-9]*; do
    is_our_broker "${d#/proc/}" && echo "${d#/proc/}"
  done
  return 0
}

# Two distinct free loopback ports (the OS picks them; never 9092's range).
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    local ports=() p
    while [ ${#ports[@]} -lt 2 ]; do
      p=$((20000 + RANDOM % 20000))
      [ ${#ports[@]} -eq 1 ] && [ "$p" = "${ports[0]}" ] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ports+=("$p")
    done
    echo "${ports[*]}"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  local port="$1" cport="$2"
  mkdir -p "$RUN/data"
  cat >"$RUN/server.properties" <<EOF
# Written by deploy/local/kafka.sh: one combined KRaft node on loopback, for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$RUN/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$RUN/log4j2.properties" <<EOF
# Broker logging: to a file in the state dir, never to the terminal.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $BROKER_LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
  cat >"$RUN/log4j2-tools.properties" <<'EOF'
# Command-line tools: warnings only, to stderr.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

print_failure() {
  log "broker did not come up; last lines of $BROKER_LOG:"
  tail -n 40 "$BROKER_LOG" >&2 2>/dev/null || true
  if [ -s "$BROKER_OUT" ]; then
    log "last lines of $BROKER_OUT:"
    tail -n 20 "$BROKER_OUT" >&2 || true
  fi
}

# A metadata request that lists broker 1: it only does once the broker is unfenced
# and ready to serve produce/fetch.
metadata_ok() {
  local addr="$1" out
  if command -v kcat >/dev/null 2>&1; then
    out="$(timeout 20 kcat -b "$addr" -L -m 5 2>/dev/null)" || return 1
    [[ "$out" == *"broker 1 at"* ]]
  else
    out="$(timeout 30 java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$RUN/log4j2-tools.properties" -cp "$LIBS/*" \
      org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$addr" 2>/dev/null 9>&-)" ||
      return 1
    [[ "$out" == *"(id: 1 "* ]]
  fi
}

# One attempt to start: 0 = up, 1 = failed, 2 = failed on a port clash (retry).
start_once() {
  local port cport addr cluster_id pid deadline
  read -r port cport <<<"$(free_ports)"
  addr="127.0.0.1:$port"
  rm -rf "$RUN"
  write_config "$port" "$cport"

  cluster_id="$(tool kafka.tools.StorageTool random-uuid | tail -n1)"
  [ -n "$cluster_id" ] || die "StorageTool random-uuid printed nothing"
  tool kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN/server.properties" >&2 ||
    die "StorageTool format failed"

  log "starting Kafka $(kafka_version) on $addr (controller 127.0.0.1:$cport), log: $BROKER_LOG"
  nohup java "-Xmx$HEAP" "-Xms$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$RUN/server.properties" \
    </dev/null >"$BROKER_OUT" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"

  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      if grep -qs "Address already in use" "$BROKER_LOG" "$BROKER_OUT"; then
        log "port clash, retrying with other ports"
        return 2
      fi
      print_failure
      log "broker process $pid exited"
      return 1
    fi
    if port_open "$port" && metadata_ok "$addr"; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      print_failure
      log "broker not ready after ${START_TIMEOUT}s; stopping it"
      stop_pid "$pid"
      return 1
    fi
    sleep 0.5
  done
  echo "$addr" >"$RUN/bootstrap"
  echo "$addr" >"$BOOTFILE"
  return 0
}

stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  log "broker $pid did not stop within 20 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
}

cmd_up() {
  local pid t0 rc
  take_lock
  if pid="$(running_pid)" && [ -s "$RUN/bootstrap" ]; then
    log "already running (pid $pid)"
    cat "$RUN/bootstrap"
    return 0
  fi
  t0=$SECONDS
  ensure_tools
  fetch_libs
  # Leftovers of a broker that died or was killed: clear them.
  for pid in $(orphan_pids); do stop_pid "$pid"; done
  rm -rf "$RUN" "$BOOTFILE"
  for _ in 1 2 3; do
    rc=0
    start_once || rc=$?
    [ "$rc" -eq 2 ] && { stop_pid "$(cat "$PIDFILE" 2>/dev/null || echo 0)"; continue; }
    break
  done
  if [ "$rc" -ne 0 ]; then
    rm -f "$BOOTFILE"
    exit 1
  fi
  log "ready in $((SECONDS - t0)) s (pid $(cat "$PIDFILE"))"
  cat "$BOOTFILE"
}

cmd_down() {
  local pid
  take_lock
  if [ -f "$PIDFILE" ]; then
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [ -n "$pid" ] && running_pid >/dev/null; then
      log "stopping broker (pid $pid)"
      stop_pid "$pid"
    fi
  fi
  for pid in $(orphan_pids); do
    log "stopping leftover broker (pid $pid)"
    stop_pid "$pid"
  done
  rm -rf "$RUN" "$BOOTFILE"
}

cmd_status() {
  local pid
  if pid="$(running_pid)" && [ -s "$RUN/bootstrap" ]; then
    log "running (pid $pid, Kafka $(kafka_version))"
    cat "$RUN/bootstrap"
  else
    log "not running"
    return 1
  fi
}

cmd_topic() {
  [ $# -ge 2 ] || die "usage: kafka.sh topic NAME PARTITIONS [extra TopicCommand args]"
  local name="$1" partitions="$2" addr
  shift 2
  if ! running_pid >/dev/null || [ ! -s "$RUN/bootstrap" ]; then
    die "broker not running (run: $0 up)"
  fi
  addr="$(cat "$RUN/bootstrap")"
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$addr" --create \
    --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1 "$@"
}

cmd_logs() {
  [ -f "$BROKER_LOG" ] || die "no broker log at $BROKER_LOG"
  tail -n "${1:-100}" "$BROKER_LOG"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  topic) shift; cmd_topic "$@" ;;
  logs) shift; cmd_logs "$@" ;;
  *) usage ;;
esac
