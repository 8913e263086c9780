#!/usr/bin/env bash
# Installs the system packages that building and testing linewatch needs on a fresh
# Debian 12 machine. Idempotent: apt is only touched when a package is missing.
#
#   deploy/local/setup.sh        (as root, or with sudo available)
#
# - C toolchain and headers for the native crates (librdkafka via rdkafka-sys, which
#   builds its own static libcurl so `cargo run` needs no libcurl-dev:
#   cmake, libssl, zlib, libsasl2; fontconfig for chart rendering)
# - python3 (free-port picking in kafka.sh), kcat (a real Kafka client for poking
#   at the broker and for raw-throughput baselines)
# - Java 17 and Maven, which fetch and run the real Kafka broker (deploy/local/kafka.sh)
# - cargo itself comes from rustup (~/.cargo/bin); it is checked, not installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config libssl-dev zlib1g-dev libsasl2-dev
  python3 kcat openjdk-17-jre-headless maven
  fonts-dejavu-core libfontconfig1-dev
)

# --- deploy/ checks (deploy/check.sh) ----------------------------------------------------
# promtool (Debian's prometheus package) checks and unit-tests the alert rules;
# docker-compose validates deploy/compose.yaml offline; python3-venv lets
# deploy/tools/install.sh set up its pinned pip tools (hadolint, kubernetes-validate);
# ShellCheck checks every shell script of the repository (a directive-looking comment
# starting "shellcheck" would stop it parsing this file).
# nginx (the light build) runs deploy/board/nginx.conf, the compose board's sign-in proxy,
# in front of a real board.
PACKAGES+=(prometheus docker-compose python3-venv shellcheck nginx-light)
# --- end of deploy/ checks ---------------------------------------------------------------

# The board's browser tests (tests/board.rs) drive Debian's own Chromium through its
# chromedriver; no browser is ever downloaded. fonts-dejavu-core above renders its pages.
PACKAGES+=(chromium chromium-driver)

log() { printf 'setup.sh: %s\n' "$*" >&2; }

installed() {
  # "ii" = wanted and installed (dpkg -s alone also accepts removed-but-configured).
  [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | cut -c1-2)" = "ii" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      log "error: missing ${missing[*]} and not root (no sudo)"
      exit 1
    }
    SUDO=(sudo)
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update >&2
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
else
  log "system packages: all present"
fi

# cargo is installed by rustup; make sure it is reachable.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x /root/.cargo/bin/cargo ]; then
  export PATH="/root/.cargo/bin:$PATH"
fi
if command -v cargo >/dev/null 2>&1; then
  log "$(cargo --version)"
  cargo fmt --version >/dev/null 2>&1 || log "warning: rustfmt missing (rustup component add rustfmt)"
  cargo clippy --version >/dev/null 2>&1 || log "warning: clippy missing (rustup component add clippy)"
else
  log "error: cargo not found (install Rust with rustup; expected in ~/.cargo/bin)"
  exit 1
fi
