#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine: installs the system packages the
# tests need when they are missing (idempotent: apt-get only runs when a binary is absent),
# then `cargo test --workspace`, then every fuzz target for a few seconds (deploy/fuzz.sh,
# unoptimised build: a minute or two, most of it building; it needs a nightly toolchain and
# fails naming it when there is none). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=deploy/lib.sh
. deploy/lib.sh
ensure_packages nats-server:nats-server kdig:knot-dnsutils openssl:openssl curl:curl \
    unbound:unbound unbound-checkconf:unbound dnsviz:dnsviz ip:iproute2 unshare:util-linux \
    systemd-analyze:systemd promtool:prometheus ruby:ruby chromium:chromium pebble:pebble

cargo test --workspace "$@"
FUZZ_BUILD=dev deploy/fuzz.sh 5
