#!/usr/bin/env bash
# Checks everything under deploy/ that can be checked without a Docker engine or a Kubernetes
# cluster (neither runs on the project's machines). scripts/test.sh runs it as one step.
#
#   deploy/check.sh            (LINEWATCH_BIN=path/to/linewatch to use a built binary;
#                               default: `cargo build --release` and target/release/linewatch)
#
# - Dockerfile: hadolint (and shellcheck on every shell script of the repository), and cargo loads the package from just the files its build stage
#   copies.  compose.yaml: `docker-compose config` (Debian's docker-compose), with each
#   profile; deploy/board/board.toml through `linewatch check-config`.
# - Prometheus: `promtool check config` (with the rules) and `promtool test rules`.
# - Kubernetes: kubernetes-validate --strict against the 1.37 schemas; the ConfigMap's
#   linewatch.toml through `linewatch check-config`.
# - The image's entry point and health check, run here against the real binary: Kafka
#   secrets and group.instance.id merged into [kafka] (escaping round-trips, duplicates
#   refused), a live threshold change reaching the service through the merged copy, SIGHUP
#   and SIGTERM passed on, /healthz answered, /readyz not before partitions are assigned;
#   a one-line warning when SIGHUP was ignored at start (under nohup) and cannot be trapped;
#   `board` with the secrets merged but not the instance id.
# - The compose board's sign-in proxy: deploy/board/nginx.conf in a real nginx in front of a
#   real board (who gets in, under which name).
# The tools come from deploy/local/setup.sh (promtool, docker-compose, shellcheck, nginx) and
# deploy/tools/install.sh (pinned pip packages). All checks run; the exit status is that of
# the first that failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

say() { printf '\n==> deploy/check.sh: %s\n' "$*" >&2; }

TOOLS="$(deploy/tools/install.sh | tail -n1)" || {
  echo "deploy/check.sh: could not install the deploy tools (deploy/tools/install.sh)" >&2
  exit 1
}

if [ -n "${LINEWATCH_BIN:-}" ]; then
  BIN="$LINEWATCH_BIN"
else
  cargo build --quiet --release --locked --bin linewatch || exit 1
  BIN="$ROOT/target/release/linewatch"
fi

WORK="$(mktemp -d)"
PIDS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

STATUS=0
SUMMARY=()
check() {
  local name="$1" rc
  shift
  say "$name"
  "$@"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$name ok")
  else
    SUMMARY+=("$name FAILED (exit $rc)")
    [ "$STATUS" -eq 0 ] && STATUS=$rc
  fi
}

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  else
    docker-compose "$@"
  fi
}

check_compose() {
  compose -f deploy/compose.yaml config -q &&
    compose -f deploy/compose.yaml --profile demo config -q &&
    compose -f deploy/compose.yaml --profile board config -q &&
    "$BIN" check-config deploy/board/board.toml
}

# The toml embedded in the ConfigMap, as the pod sees it.
configmap_toml() {
  "$TOOLS/python" -c '
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
sys.stdout.write(doc["data"]["linewatch.toml"])
' deploy/kubernetes/configmap.yaml
}

check_configmap() {
  configmap_toml >"$WORK/configmap.toml" || return 1
  "$BIN" check-config "$WORK/configmap.toml"
}

fail() {
  echo "deploy/check.sh: $*" >&2
  return 1
}

entrypoint() {
  LINEWATCH_BIN="$BIN" LINEWATCH_RUNTIME_DIR="$WORK/runtime" sh deploy/docker/entrypoint.sh "$@"
}

check_entrypoint_merge() {
  local sec="$WORK/secrets" merged="$WORK/merged.toml"
  mkdir -p "$sec/..data"
  # What a mounted Secret looks like: one file per key, a trailing newline, and hard values.
  printf 'linewatch\n' >"$sec/sasl.username"
  printf 'p"a\\ss w0rd\n' >"$sec/sasl.password"
  configmap_toml >"$WORK/source.toml" || return 1
  LINEWATCH_CONFIG="$WORK/source.toml" LINEWATCH_KAFKA_SECRETS_DIR="$sec" \
    LINEWATCH_GROUP_INSTANCE_ID=linewatch-0 entrypoint print-config >"$merged" || return 1
  "$BIN" check-config "$merged" || return 1
  "$TOOLS/python" - "$merged" <<'PY' || return 1
import sys, tomllib
kafka = tomllib.load(open(sys.argv[1], "rb"))["kafka"]
want = {"sasl.username": "linewatch", "sasl.password": 'p"a\\ss w0rd',
        "group.instance.id": "linewatch-0", "security.protocol": "SASL_SSL"}
bad = {k: kafka.get(k) for k, v in want.items() if kafka.get(k) != v}
if bad:
    sys.exit(f"merged [kafka] differs: {sorted(bad)}")
PY
  # A property both in the file and in the Secret must be refused, not silently resolved.
  printf 'PLAIN\n' >"$sec/sasl.mechanism"
  LINEWATCH_CONFIG="$WORK/source.toml" LINEWATCH_KAFKA_SECRETS_DIR="$sec" \
    entrypoint print-config >"$merged" || return 1
  if "$BIN" check-config "$merged" >/dev/null 2>&1; then
    fail "a property set in both the file and the Secret was accepted"
    return 1
  fi
  rm -f "$sec/sasl.mechanism"
  # A file name that is no property name stops the start with one line and exit 2.
  printf 'x\n' >"$sec/sasl password"
  local rc=0
  LINEWATCH_KAFKA_SECRETS_DIR="$sec" entrypoint print-config >/dev/null 2>"$WORK/err" || rc=$?
  rm -f "$sec/sasl password"
  if [ "$rc" -ne 2 ] || ! grep -q "not a librdkafka property name" "$WORK/err"; then
    fail "a bad secret file name gave exit $rc: $(cat "$WORK/err")"
  fi
}

free_port() {
  "$TOOLS/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

metrics() {
  "$TOOLS/python" -c '
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
' "http://127.0.0.1:$1/metrics" 2>/dev/null
}

# Polls until `metrics` output matches the pattern, at most $3 seconds.
wait_metric() {
  local port="$1" pattern="$2" deadline=$((SECONDS + $3))
  until metrics "$port" | grep -Eq "$pattern"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# stopped_cleanly PID LOG SECONDS WHAT: SIGTERM to PID, which must exit 0 within SECONDS
# (LOG's tail shown when it does not).
stopped_cleanly() {
  local pid="$1" log="$2" limit="$3" what="$4" rc deadline
  kill -TERM "$pid"
  deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$what still running $limit s after SIGTERM"
    return 1
  fi
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || { tail -n 20 "$log" >&2; fail "$what SIGTERM: exit $rc, want 0"; }
}

check_entrypoint_run() {
  local port src="$WORK/live.toml" log="$WORK/run.log" pid
  port="$(free_port)" || return 1
  printf '[bulk_sms]\nmin_recipients = 30\n\n[service]\nhttp_addr = "127.0.0.1:%s"\nconfig_poll_interval_s = 1\n' \
    "$port" >"$src"
  # No broker at 127.0.0.1:1: the service serves /healthz and waits, not ready. SIGHUP at
  # its default, as a container's first process has it: a check started under `nohup`
  # would otherwise hand the entry point an ignored SIGHUP, which no shell can trap.
  LINEWATCH_CONFIG="$src" LINEWATCH_GROUP_INSTANCE_ID=linewatch-0 LINEWATCH_RESYNC_S=1 \
    LINEWATCH_BIN="$BIN" LINEWATCH_RUNTIME_DIR="$WORK/live" \
    env --default-signal=HUP sh deploy/docker/entrypoint.sh run --brokers 127.0.0.1:1 >"$log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_metric "$port" '^linewatch_ready 0' 30 || { tail -n 20 "$log" >&2; fail "service did not come up"; return 1; }
  LINEWATCH_HTTP="0.0.0.0:$port" deploy/docker/healthcheck.sh ||
    { fail "healthcheck failed on a serving /healthz"; return 1; }
  if LINEWATCH_HTTP="0.0.0.0:$port" deploy/docker/healthcheck.sh /readyz; then
    fail "/readyz passed without partitions"
    return 1
  fi
  grep -q '"group.instance.id" = "linewatch-0"' "$WORK/live/linewatch.toml" ||
    { fail "merged copy lacks group.instance.id"; return 1; }
  # A threshold edited in the source file reaches the running service through the copy.
  sed -i 's/min_recipients = 30/min_recipients = 35/' "$src"
  wait_metric "$port" '^linewatch_config_reloads_total\{result="applied"\} [1-9]' 60 ||
    { tail -n 20 "$log" >&2; fail "a changed source file was not applied"; return 1; }
  # SIGHUP to the entry point reaches the service (nothing changed: "unchanged").
  kill -HUP "$pid"
  wait_metric "$port" '^linewatch_config_reloads_total\{result="unchanged"\} [1-9]' 60 ||
    { tail -n 20 "$log" >&2; fail "SIGHUP was not passed on"; return 1; }
  stopped_cleanly "$pid" "$log" 40 "entry point"
}

# `board` through the entry point: the Secret's credentials merged into the copy it reads
# (the instance id not: the board is no group member), the board serving /healthz on the
# port the image's health check asks, and SIGTERM ending it.
check_entrypoint_board() {
  local port sec="$WORK/board-secrets" log="$WORK/board.log" pid deadline
  port="$(free_port)" || return 1
  mkdir -p "$sec"
  printf 'linewatch\n' >"$sec/sasl.username"
  printf 'secret\n' >"$sec/sasl.password"
  # The pod's file, less the CA file it mounts (the board makes its Kafka client at start,
  # and librdkafka refuses a CA location that does not exist).
  configmap_toml | grep -v '"ssl.ca.location"' >"$WORK/board-source.toml" || return 1
  LINEWATCH_CONFIG="$WORK/board-source.toml" LINEWATCH_KAFKA_SECRETS_DIR="$sec" \
    LINEWATCH_GROUP_INSTANCE_ID=linewatch-0 LINEWATCH_BIN="$BIN" \
    LINEWATCH_RUNTIME_DIR="$WORK/board-runtime" \
    sh deploy/docker/entrypoint.sh board --brokers 127.0.0.1:1 --http "127.0.0.1:$port" \
    --db "$WORK/board.db" --audit-log "$WORK/board-audit.jsonl" >"$log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  deadline=$((SECONDS + 30))
  until LINEWATCH_HTTP="0.0.0.0:$port" deploy/docker/healthcheck.sh; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      fail "the board did not come up through the entry point"
      return 1
    fi
    sleep 0.5
  done
  grep -q '"sasl.username" = "linewatch"' "$WORK/board-runtime/linewatch.toml" ||
    { fail "the board's copy lacks the Secret's credentials"; return 1; }
  if grep -q '^"group.instance.id"' "$WORK/board-runtime/linewatch.toml"; then
    fail "the board's copy has run's group.instance.id"
    return 1
  fi
  stopped_cleanly "$pid" "$log" 30 board
}

# deploy/board/nginx.conf run by a real nginx in front of a real board, as the compose file
# runs them (only the upstream and listen addresses changed, for loopback ports): no
# sign-in is refused by the proxy, a user signed in reaches the board as themselves even
# when the request carries another name in X-Forwarded-User, and a user the proxy knows but
# [board.users] does not is refused by the board.
check_board_proxy() {
  local bport pport dir="$WORK/proxy" pid code
  bport="$(free_port)" && pport="$(free_port)" || return 1
  mkdir -p "$dir/logs"
  {
    sed -n '/^\[board\]/,$p' deploy/board/board.toml |
      sed -e "s|^http_addr = .*|http_addr = \"127.0.0.1:$bport\"|" \
        -e "s|^db_path = .*|db_path = \"$dir/board.db\"|" \
        -e "s|^audit_log = .*|audit_log = \"$dir/audit.jsonl\"|"
    printf 'alice = "analyst"\n'
  } >"$dir/board.toml"
  LINEWATCH_CONFIG="$dir/board.toml" "$BIN" board --brokers 127.0.0.1:1 >"$dir/board.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  printf 'alice:%s\nbob:%s\n' "$(openssl passwd -6 pw-a)" "$(openssl passwd -6 pw-b)" >"$dir/htpasswd"
  {
    # Workers as this user (as root, nginx would switch them to one that cannot read $WORK).
    printf 'user %s;\npid %s/nginx.pid;\nerror_log %s/logs/error.log;\nevents {}\nhttp {\naccess_log off;\n' \
      "$(id -un)" "$dir" "$dir"
    sed -e "s|listen 8080;|listen 127.0.0.1:$pport;|" \
      -e "s|http://board:9470|http://127.0.0.1:$bport|" \
      -e "s|/etc/nginx/htpasswd|$dir/htpasswd|" deploy/board/nginx.conf
    printf '}\n'
  } >"$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>"$dir/nginx.err" &
  PIDS+=("$!")
  local deadline=$((SECONDS + 30))
  until LINEWATCH_HTTP="0.0.0.0:$bport" deploy/docker/healthcheck.sh &&
    curl -s -o /dev/null "http://127.0.0.1:$pport/"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      cat "$dir/board.log" "$dir/nginx.err" >&2
      fail "the board or its proxy did not come up"
      return 1
    fi
    sleep 0.5
  done
  # status URL [CURL ARGS...]: the HTTP status the proxy answers.
  status() { curl -s -o /dev/null -w '%{http_code}' "${@:2}" "http://127.0.0.1:$pport$1"; }
  code="$(status /)"
  [ "$code" = 401 ] || { fail "no sign-in: $code, want the proxy's 401"; return 1; }
  code="$(status / -u alice:wrong)"
  [ "$code" = 401 ] || { fail "a wrong password: $code, want 401"; return 1; }
  code="$(status / -u alice:pw-a)"
  [ "$code" = 200 ] || { fail "alice signed in: $code, want the queue (200)"; return 1; }
  code="$(status / -u alice:pw-a -H 'X-Forwarded-User: mallory')"
  [ "$code" = 200 ] || { fail "a client-sent X-Forwarded-User reached the board: $code"; return 1; }
  code="$(status / -u bob:pw-b)"
  [ "$code" = 403 ] || { fail "bob, not in [board.users]: $code, want the board's 403"; return 1; }
  # The board's audit trail names who the proxy signed in, and never the name a client sent.
  grep -Eq '"user": ?"bob".*refused_unknown_user|refused_unknown_user.*"user": ?"bob"' "$dir/audit.jsonl" ||
    { cat "$dir/audit.jsonl" >&2; fail "the board's audit log does not name bob's refusal"; return 1; }
  if grep -q 'mallory' "$dir/audit.jsonl"; then
    fail "the audit log names the client-sent user"
    return 1
  fi
}

# A supervisor that starts the entry point with SIGHUP ignored (nohup does) makes its trap
# a no-op: the entry point says so in one line, and says nothing when SIGHUP can be trapped.
check_entrypoint_hup_ignored() {
  local out
  out="$( (trap '' HUP
    LINEWATCH_BIN=true LINEWATCH_GROUP_INSTANCE_ID=linewatch-0 LINEWATCH_RUNTIME_DIR="$WORK/hup" \
      exec sh deploy/docker/entrypoint.sh run) 2>&1)" ||
    { printf '%s\n' "$out" >&2; fail "entry point failed with SIGHUP ignored"; return 1; }
  grep -q "SIGHUP was ignored when this started" <<<"$out" ||
    { printf '%s\n' "$out" >&2; fail "no warning with SIGHUP ignored"; return 1; }
  out="$(LINEWATCH_BIN=true LINEWATCH_GROUP_INSTANCE_ID=linewatch-0 LINEWATCH_RUNTIME_DIR="$WORK/hup" \
    env --default-signal=HUP sh deploy/docker/entrypoint.sh run 2>&1)" ||
    { printf '%s\n' "$out" >&2; fail "entry point failed"; return 1; }
  if grep -q "SIGHUP" <<<"$out"; then
    printf '%s\n' "$out" >&2
    fail "a warning about SIGHUP when it can be trapped"
    return 1
  fi
}

# The build stage copies only some of the tree (see its COPY lines): cargo must still find
# every target the manifest names there, or the image build fails at its first step.
check_image_context() {
  local ctx="$WORK/context" f
  mkdir -p "$ctx"
  for f in $(sed -n 's/^COPY \([^-].*\) [^ ]*$/\1/p' Dockerfile | tr ' ' '\n' | grep -v '^deploy/\|^config/'); do
    cp -r "$f" "$ctx/" || return 1
  done
  # Cargo checks that every target named in the manifest exists when it loads the package
  # for a build, before it resolves the --bin; asking for a bin that does not exist stops it
  # right there, so no compile is needed to see whether loading succeeded.
  local out
  out="$(cd "$ctx" && cargo build --locked --offline --bin no-such-bin 2>&1)"
  if ! grep -q "no bin target named" <<<"$out"; then
    printf '%s\n' "$out" >&2
    fail "the Dockerfile's build stage lacks files the manifest needs"
    return 1
  fi
}

check hadolint "$TOOLS/hadolint" --config deploy/docker/hadolint.yaml Dockerfile
# Every shell script of the repository. SC2317: functions reached through `check` and traps
# look unreachable to it. -x follows `. benches/lib.sh` (paths from the repository root).
check shellcheck shellcheck -x -e SC2317 deploy/*.sh deploy/*/*.sh benches/*.sh scripts/*.sh
check image-context check_image_context
check compose check_compose
check promtool-config promtool check config deploy/prometheus/prometheus.yml
check promtool-test promtool test rules deploy/prometheus/tests/linewatch.test.yml
check kubernetes "$TOOLS/kubernetes-validate" --strict --quiet \
  deploy/kubernetes/*.yaml deploy/kubernetes/examples/*.yaml deploy/kubernetes/optional/board.yaml
check configmap check_configmap
check entrypoint-merge check_entrypoint_merge
check entrypoint-run check_entrypoint_run
check entrypoint-hup-ignored check_entrypoint_hup_ignored
check entrypoint-board check_entrypoint_board
check board-proxy check_board_proxy

joined="$(printf '%s, ' "${SUMMARY[@]}")"
say "summary: ${joined%, }"
exit "$STATUS"
