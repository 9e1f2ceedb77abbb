#!/usr/bin/env bash
# Starts a 3-site GRouter mesh on loopback (lon, nyc, sgp: one nats-server, one GoRouter
# stand-in, one Cloud Controller stand-in and one grouter node per site) and prints the URLs
# and commands to try. Installs
# what is missing (nats-server, curl, pebble for the ACME example) first. Runs until Ctrl-C. Arguments go to
# `grouter demo`: --dir DIR (keep the files there), --base-port N (fixed ports), --check
# (run every example itself, print PASS/FAIL per case, exit 0 only when all pass).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=deploy/lib.sh
. deploy/lib.sh
ensure_packages nats-server:nats-server curl:curl pebble:pebble

cargo build --release -p grouter -p gcf -p grouter-standin -p grouter-cc-standin
exec target/release/grouter demo "$@"
