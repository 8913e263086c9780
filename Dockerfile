# syntax=docker/dockerfile:1
#
# linewatch as a container image: built in a full Rust image, run from a slim Debian with only
# the shared libraries the binary links (ldd: libssl, zlib, fontconfig/freetype for `tune`'s
# plots), as a non-root user.
#
#   docker build -t linewatch .
#   docker run --rm linewatch demo
#   docker run -e LINEWATCH_BROKERS=kafka:9092 linewatch            # the service (default command)
#
# Configuration: /etc/linewatch/linewatch.toml holds the built-in defaults (config/linewatch.toml);
# mount your own file over it, or point LINEWATCH_CONFIG elsewhere; every `run` flag also has a
# LINEWATCH_* variable. Kafka secrets and the static-membership id are merged in by the entry
# point (deploy/docker/entrypoint.sh) so they never sit in a config map.
#
# No Docker engine runs on the project's build machines: scripts/test.sh lints this file with
# hadolint and runs the entry point and health check against a real broker, but the image
# itself is not built there (see README, Deploying).

# The toolchain the project is built and tested with (rustc 1.95), on the Debian release the
# runtime stage uses, so the linked libssl/zlib versions match.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# cmake builds librdkafka (with its own static libcurl); the -dev packages are what it and
# plotters link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        cmake pkg-config libssl-dev zlib1g-dev libsasl2-dev libfontconfig1-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cargo reads every target Cargo.toml names (benches too) before it builds one.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
# Symbols stay for readable backtraces; the debug info (most of the 80 MB) goes.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin linewatch \
    && install -m 0755 target/release/linewatch /usr/local/bin/linewatch

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libssl3 zlib1g libfontconfig1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 linewatch \
    && useradd --system --uid 10001 --gid linewatch --home-dir /nonexistent --shell /usr/sbin/nologin linewatch \
    && install -d -o 10001 -g 10001 /var/lib/linewatch-board
COPY --from=build /usr/local/bin/linewatch /usr/local/bin/linewatch
COPY deploy/docker/entrypoint.sh /usr/local/bin/linewatch-entrypoint
COPY deploy/docker/healthcheck.sh /usr/local/bin/linewatch-healthcheck
COPY config/linewatch.toml /etc/linewatch/linewatch.toml
# Listen on every interface inside the container (the file's default is loopback, right for a
# laptop, useless behind a port mapping); log JSON lines for the log shipper.
ENV LINEWATCH_CONFIG=/etc/linewatch/linewatch.toml \
    LINEWATCH_HTTP=0.0.0.0:9464 \
    LINEWATCH_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/linewatch-healthcheck"]
ENTRYPOINT ["/usr/local/bin/linewatch-entrypoint"]
CMD ["run"]
