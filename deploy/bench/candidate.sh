#!/usr/bin/env bash
# GRouter as the candidate of ../shared/bench/http-peers.sh: one node, one worker thread (as
# every peer runs with one), routing Host app.example.test to the bench backend on
# 127.0.0.1:18080 as its local "GoRouter", on 127.0.0.1:19080 (HTTP) and :19443 (TLS, ALPN
# h2 and http/1.1). The route is learned the real way: registered on the node's own
# nats-server. Stops everything it started on SIGTERM/SIGINT.
#
#   CANDIDATE_CMD=deploy/bench/candidate.sh \
#   CANDIDATE_HTTP=http://app.example.test:19080/ CANDIDATE_HTTPS=https://app.example.test:19443/ \
#     ../shared/bench/http-peers.sh
#
# POLICIES=N (default 0) starts the node with N route policies already in force (written into
# its state_dir as earlier writes of its own), one of them for app.example.test itself, so
# every request's decision reads a policy: the issue-13 cost of policies on the data plane.
# HTTP_PORT, HTTPS_PORT, ADMIN_PORT and NATS_PORT move it, so that two can run side by side
# (deploy/bench/policy-ab.sh).
set -euo pipefail
POLICIES=${POLICIES:-0}
WORKERS=${WORKERS:-1}
NATS_PORT=${NATS_PORT:-14222}
HTTP_PORT=${HTTP_PORT:-19080}
HTTPS_PORT=${HTTPS_PORT:-19443}
ADMIN_PORT=${ADMIN_PORT:-19090}
source "$(dirname "$0")/common.sh"
bench_start grouter-candidate "$NATS_PORT"

mkdir -p "$dir/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=app.example.test -addext subjectAltName=DNS:app.example.test \
  -keyout "$dir/certs/app.example.test.key" -out "$dir/certs/app.example.test.pem" 2>/dev/null
cp "$dir/certs/app.example.test.pem" "$dir/default.pem"
cp "$dir/certs/app.example.test.key" "$dir/default.key"
echo bench-token > "$dir/admin.token"
cat > "$dir/bench.toml" <<TOML
node_id = "bench-1"
worker_threads = $WORKERS
site = "lon"
region = "eu"
[nats]
servers = ["nats://127.0.0.1:$NATS_PORT"]
stale_threshold_secs = 86400
[gorouters]
addresses = ["127.0.0.1:18080"]
[proxy]
http_listen = "127.0.0.1:$HTTP_PORT"
https_listen = "127.0.0.1:$HTTPS_PORT"
[tls]
cert_dir = "certs"
default_cert = "default.pem"
default_key = "default.key"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "admin.token"
[log]
access_log = false
TOML

if [ "$POLICIES" -gt 0 ]; then
  mkdir -p -m 0700 "$dir/state-bench-1"
  now_ms=$(($(date +%s) * 1000))
  {
    printf '{"key":"policy/route/app.example.test","hlc_ms":%d,"hlc_counter":0,"hlc_node":"bench-1","value":"{\\"regions\\":[\\"eu\\"],\\"weights\\":{\\"lon\\":1}}"}\n' "$now_ms"
    for i in $(seq 2 "$POLICIES"); do
      printf '{"key":"policy/route/pol-%d.example.test","hlc_ms":%d,"hlc_counter":0,"hlc_node":"bench-1","value":"{\\"regions\\":[\\"eu\\"],\\"mode\\":\\"redirect\\"}"}\n' "$i" "$now_ms"
    done
  } > "$dir/state-bench-1/config.jsonl"
fi
RUST_LOG=warn "$GROUTER" run --config "$dir/bench.toml" &
pids+=($!)

# Register the route as a route emitter would (NATS text protocol over /dev/tcp).
msg='{"host":"127.0.0.1","port":18080,"uris":["app.example.test"],"app":"bench"}'
nats_open "$NATS_PORT"
printf 'PUB router.register %d\r\n%s\r\nPING\r\n' "${#msg}" "$msg" >&3
for _ in $(seq 1 100); do
  if curl -sf -H "Authorization: Bearer bench-token" "http://127.0.0.1:$ADMIN_PORT/v1/routes?host=app.example.test" | grep -q app.example.test; then
    break
  fi
  printf 'PUB router.register %d\r\n%s\r\n' "${#msg}" "$msg" >&3
  sleep 0.1
done
echo "candidate: grouter serving app.example.test on 127.0.0.1:$HTTP_PORT/$HTTPS_PORT with $WORKERS worker thread(s)" >&2
wait "${pids[1]}"
