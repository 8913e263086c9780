#!/bin/sh
# Entry point of the linewatch container image.
#
#   linewatch-entrypoint [SUBCOMMAND [ARGS...]]     (default: run)
#   linewatch-entrypoint print-config               the configuration `run` would read
#
# Every subcommand but `run` and `board` goes straight to the binary. For `run`, two things
# that must not sit in a shared config file are merged into its [kafka] table (for `board`, the
# first only: it assigns itself its partitions and never joins a group as a member):
#
# - LINEWATCH_KAFKA_SECRETS_DIR: a directory of files, one librdkafka property each (file
#   name = property, content = value), e.g. `sasl.username` and `sasl.password`: exactly what
#   a mounted Kubernetes Secret or a compose secret looks like.
# - LINEWATCH_GROUP_INSTANCE_ID: `group.instance.id` (Kafka static membership). The
#   StatefulSet sets it to the pod name, so a restarted pod takes its partitions back without
#   a group rebalance.
#
# The source is LINEWATCH_CONFIG (the image's baked-in defaults unless overridden); the merged
# copy goes to LINEWATCH_RUNTIME_DIR (default /tmp/linewatch) and `run` reads that one. Live
# threshold changes keep working: every LINEWATCH_RESYNC_S seconds (default 5) the copy is
# rebuilt if the source or a secret changed, and the service's own file watch picks it up;
# SIGHUP rebuilds it at once and is passed on. SIGTERM/SIGINT are passed on and the
# service's exit status is returned.
#
# With neither variable set, nothing is merged and `run` is exec'd directly. `board` reads its
# configuration once, at start: it is exec'd on the merged copy, and a changed secret or
# setting takes a restart.
set -eu

BIN="${LINEWATCH_BIN:-/usr/local/bin/linewatch}"
SECRETS_DIR="${LINEWATCH_KAFKA_SECRETS_DIR:-}"
INSTANCE_ID="${LINEWATCH_GROUP_INSTANCE_ID:-}"
RUNTIME_DIR="${LINEWATCH_RUNTIME_DIR:-/tmp/linewatch}"
RESYNC_S="${LINEWATCH_RESYNC_S:-5}"

die() {
  printf 'linewatch-entrypoint: %s\n' "$*" >&2
  exit 2
}

# A TOML basic string holding the file's content: backslashes and quotes escaped, line breaks
# as \n (a PEM block stays one value), the trailing newline of `echo x > file` dropped.
toml_string_of_file() {
  printf '"'
  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' "$1" | awk 'NR > 1 { printf "%s", "\\n" } { printf "%s", $0 }'
  printf '"'
}

toml_string() {
  printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | awk '{ printf "\"%s\"", $0 }'
}

# The `"property" = "value"` lines to merge, one per line.
kafka_lines() {
  if [ -n "$SECRETS_DIR" ]; then
    [ -d "$SECRETS_DIR" ] || die "LINEWATCH_KAFKA_SECRETS_DIR=$SECRETS_DIR is not a directory"
    for f in "$SECRETS_DIR"/*; do
      [ -f "$f" ] || continue # an empty directory, or Kubernetes' ..data bookkeeping
      name="${f##*/}"
      case "$name" in
        .*) continue ;;
        *[!A-Za-z0-9._-]*) die "secret file '$name' is not a librdkafka property name" ;;
      esac
      [ -r "$f" ] || die "secret file '$name' is not readable by uid $(id -u)"
      printf '"%s" = %s\n' "$name" "$(toml_string_of_file "$f")"
    done
  fi
  if [ -n "$INSTANCE_ID" ]; then
    printf '"group.instance.id" = %s\n' "$(toml_string "$INSTANCE_ID")"
  fi
}

# The source file with the lines placed right under its [kafka] header, or in a [kafka]
# table appended at the end when it has none. A property set both in the file and here is a
# duplicate key: `run` refuses it with one line, rather than one silently winning.
merged_config() (
  src="$1"
  LINES="$(kafka_lines)" || exit $?
  export LINES
  # shellcheck disable=SC2016  # awk's own $0, not the shell's
  awk '
    { print }
    !done && $0 ~ /^[ \t]*\[kafka\][ \t]*(#.*)?$/ { print ENVIRON["LINES"]; done = 1 }
    END { if (!done) { print ""; print "[kafka]"; print ENVIRON["LINES"] } }
  ' "$src"
)

SRC="${LINEWATCH_CONFIG:-}"

# Writes the merged copy atomically (the service must never read half a file). $1 names the
# writer's own temporary file: the resync loop and the SIGHUP trap may run at once, and one
# must never rename the other's half-written file into place.
sync_config() {
  tmp="$OUT.${1:-sync}.tmp"
  merged_config "$SRC" >"$tmp" || return $?
  if ! cmp -s "$tmp" "$OUT" 2>/dev/null; then
    mv -f "$tmp" "$OUT"
  else
    rm -f "$tmp"
  fi
}

# A shell cannot trap a signal that was ignored when it started (POSIX; `nohup`, and some
# supervisors, start children so): SIGHUP would then never reach the service. Say so once.
hup_ignored() {
  mask="$(sed -n 's/^SigIgn:[[:space:]]*//p' "/proc/$$/status" 2>/dev/null)" || return 1
  case "$mask" in
    *[13579bdfBDF]) return 0 ;;
    *) return 1 ;;
  esac
}

cmd="${1:-run}"
[ $# -gt 0 ] && shift

case "$cmd" in
  run | print-config) ;;
  # group.instance.id is a group member's: the board is none (and sharing the service's
  # instance id would make the broker take one for the other).
  board) INSTANCE_ID="" ;;
  *) exec "$BIN" "$cmd" "$@" ;;
esac
if [ "$cmd" != print-config ] && [ -z "$SECRETS_DIR" ] && [ -z "$INSTANCE_ID" ]; then
  exec "$BIN" "$cmd" "$@"
fi

mkdir -p "$RUNTIME_DIR" || die "cannot create LINEWATCH_RUNTIME_DIR=$RUNTIME_DIR"
if [ -z "$SRC" ]; then
  # No file given: the built-in defaults, which an empty file means (every key is optional).
  SRC="$RUNTIME_DIR/empty.toml"
  : >"$SRC"
fi
[ -r "$SRC" ] || die "cannot read LINEWATCH_CONFIG=$SRC"

if [ "$cmd" = print-config ]; then
  merged_config "$SRC"
  exit $?
fi

OUT="$RUNTIME_DIR/linewatch.toml"
# The merged copy holds secrets: readable by this user only.
umask 077
sync_config

if [ "$cmd" = board ]; then
  LINEWATCH_CONFIG="$OUT" exec "$BIN" board "$@"
fi

LINEWATCH_CONFIG="$OUT" "$BIN" run "$@" &
child=$!

(
  while sleep "$RESYNC_S"; do
    # A failed rebuild (a secret being rewritten) keeps the last good copy; the next round retries.
    sync_config resync 2>/dev/null || true
  done
) &
resync=$!

trap 'kill -TERM "$child" 2>/dev/null || true' TERM
trap 'kill -INT "$child" 2>/dev/null || true' INT
trap 'sync_config hup || true; kill -HUP "$child" 2>/dev/null || true' HUP
if hup_ignored; then
  printf '%s\n' "linewatch-entrypoint: warning: SIGHUP was ignored when this started (e.g. under nohup), so it cannot be passed on; the configuration file is still watched" >&2
fi

# `wait` returns early when a trapped signal arrives; keep waiting until the service is gone.
status=0
while :; do
  if wait "$child"; then status=0; else status=$?; fi
  kill -0 "$child" 2>/dev/null || break
done
kill "$resync" 2>/dev/null || true
exit "$status"
