#!/usr/bin/env bash
# THE test command of linewatch (what the README and CI run):
#
#   scripts/test.sh [extra args for cargo test]
#
# 1. deploy/local/setup.sh installs missing system packages (idempotent, fast when done).
# 2. Starts a real single-node Kafka broker (deploy/local/kafka.sh up) on a free loopback
#    port and exports LINEWATCH_TEST_BROKERS=127.0.0.1:PORT for the tests; it is stopped
#    again on exit, also on failure or Ctrl-C.
#    - If LINEWATCH_TEST_BROKERS is already set, that broker is used and none is started.
#    - If a broker from `deploy/local/kafka.sh up` is already running, it is reused and
#      left running afterwards (it is yours, not this script's).
# 3. cargo fmt --check, cargo clippy -D warnings, cargo test --all-targets, cargo test
#    --doc, cargo doc with warnings denied (with --locked when Cargo.lock exists).
# 4. The README's first command (`cargo run --release -- demo`), checked for its
#    precision/recall table, and deploy/check.sh (container, compose, Kubernetes, alert
#    rules; no Docker engine or cluster needed).
# All steps run; the exit status is that of the first step that failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

say() { printf '\n==> test.sh: %s\n' "$*" >&2; }

say "setup"
deploy/local/setup.sh || exit $?

STARTED_BROKER=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ "$STARTED_BROKER" = 1 ]; then
    say "stopping the Kafka broker"
    deploy/local/kafka.sh down || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${LINEWATCH_TEST_BROKERS:-}" ]; then
  say "using LINEWATCH_TEST_BROKERS=$LINEWATCH_TEST_BROKERS from the environment"
else
  if addr="$(deploy/local/kafka.sh status 2>/dev/null)"; then
    say "reusing the running local broker (left running afterwards)"
  else
    say "starting a Kafka broker"
    STARTED_BROKER=1
    addr="$(deploy/local/kafka.sh up)" || {
      echo "test.sh: could not start the Kafka broker" >&2
      exit 1
    }
  fi
  addr="$(printf '%s\n' "$addr" | tail -n1)"
  [ -n "$addr" ] || { echo "test.sh: kafka.sh printed no address" >&2; exit 1; }
  export LINEWATCH_TEST_BROKERS="$addr"
  say "LINEWATCH_TEST_BROKERS=$LINEWATCH_TEST_BROKERS"
fi

LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)

STATUS=0
SUMMARY=()
step() {
  local name="$1" rc
  shift
  say "$name: $*"
  "$@"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$name ok")
  else
    SUMMARY+=("$name FAILED (exit $rc)")
    [ "$STATUS" -eq 0 ] && STATUS=$rc
  fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy "${LOCKED[@]}" --all-targets -- -D warnings
step test cargo test "${LOCKED[@]}" --all-targets "$@"

# Doc tests: `cargo test --all-targets` does not run them. Skipped when the package
# has no library (cargo refuses --doc then) or when the extra args select targets
# (cargo refuses to mix --doc with them).
has_lib() {
  cargo metadata "${LOCKED[@]}" --no-deps --format-version 1 2>/dev/null |
    grep -Eq '"kind":\[[^]]*"(lib|rlib|dylib|proc-macro)"'
}
selects_targets() {
  local a
  for a in "$@"; do
    [ "$a" = "--" ] && return 1
    case "$a" in
      --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | \
        --bench=* | --examples | --example | --example=* | --all-targets) return 0 ;;
    esac
  done
  return 1
}
if ! has_lib; then
  SUMMARY+=("doc skipped (no library target)")
elif selects_targets "$@"; then
  SUMMARY+=("doc skipped (target selection in args)")
else
  step doc cargo test "${LOCKED[@]}" --doc "$@"
  # The API docs build without a warning (a broken or private intra-doc link is one).
  step rustdoc env RUSTDOCFLAGS="-D warnings" cargo doc "${LOCKED[@]}" --no-deps --lib
fi

# --- The main command and deploy/ (issue 12) ---------------------------------------------
# The README's first command, as a new user runs it: it must build, exit 0 and print the
# precision/recall table with a row per detector. Then deploy/check.sh: the Dockerfile,
# compose file, alert rules (promtool check + unit tests), Kubernetes manifests and the
# image's entry point, all without a Docker engine or a cluster.
main_command() {
  local out d
  out="$(cargo run --release "${LOCKED[@]}" -- demo)" || return $?
  printf '%s\n' "$out"
  printf '%s\n' "$out" | grep -Eq '^detector +alerts +flagged +tp +fp +fn +precision +recall' || {
    echo "test.sh: demo printed no precision/recall table" >&2
    return 1
  }
  for d in bulk_sms customer_fan_in handset_churn line_handover deal_line; do
    printf '%s\n' "$out" | grep -Eq "^$d +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ +[01]\.[0-9]{3} +[01]\.[0-9]{3} " || {
      echo "test.sh: demo's precision/recall table has no row for $d" >&2
      return 1
    }
  done
}
step demo main_command
step deploy env LINEWATCH_BIN="$ROOT/target/release/linewatch" deploy/check.sh
# --- end of the main command and deploy/ -------------------------------------------------

joined="$(printf '%s, ' "${SUMMARY[@]}")"
say "summary: ${joined%, }"
exit "$STATUS"
