#!/usr/bin/env bash
# Installs the pinned checking tools of deploy/tools/requirements.txt into a virtualenv at
# deploy/.tools/venv and prints its bin directory as the last line. Idempotent: nothing is
# fetched when the venv already holds exactly these requirements (a stamp of the file's hash).
#
#   BIN=$(deploy/tools/install.sh | tail -1)
#
# Needs python3 with venv (deploy/local/setup.sh installs python3-venv) and PyPI.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/requirements.txt"
VENV="$(cd "$HERE/.." && pwd)/.tools/venv"
STAMP="$VENV/.requirements.sha256"

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "install.sh: deploy tools present" >&2
else
  echo "install.sh: installing deploy tools into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ" >&2
  echo "$want" >"$STAMP"
fi
cd "$VENV/bin" && pwd
