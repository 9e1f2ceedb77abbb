#!/usr/bin/env bash
# GRouter as the candidate of ../shared/bench/dns-peers.sh: three meshed nodes, one per site,
# each with its site's entry address (127.0.0.11, .12, .13) and, as its "GoRouter", the bench's
# health server on that address's port 18090 (.11 and .12 up, .13 down). So the queried node
# (site a, DNS on 127.0.0.1:15360, one worker thread) steers by live health exactly as in
# production: site c fails its GoRouter probes and drops out of the answers. The route
# app.example.test is learned the real way, from NATS. Stops everything on SIGTERM/SIGINT.
#
#   CANDIDATE_CMD=deploy/bench/dns-candidate.sh CANDIDATE_DNS=127.0.0.1:15360 \
#     ../shared/bench/dns-peers.sh
set -euo pipefail
NATS_PORT=${NATS_PORT:-14223}
source "$(dirname "$0")/common.sh"
bench_start grouter-dns-candidate "$NATS_PORT"
"$GROUTER" tls ca --out "$dir/ca" >/dev/null
echo bench-token > "$dir/admin.token"
i=0
for site in a b c; do
  i=$((i + 1))
  "$GROUTER" tls node --ca "$dir/ca" --node "$site-1" --site "$site" --out "$dir/$site" >/dev/null
  cat > "$dir/$site.toml" <<TOML
node_id = "$site-1"
site = "$site"
worker_threads = 1
[nats]
servers = ["nats://127.0.0.1:$NATS_PORT"]
stale_threshold_secs = 86400
[gorouters]
addresses = ["127.0.0.1$i:18090"]
health_url_path = "/"
[proxy]
http_listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:1941$i"
token_file = "admin.token"
[mesh]
listen = "127.0.0.1:1741$i"
seeds = ["127.0.0.1:17411"]
ca = "$site/ca.pem"
cert = "$site/node.pem"
key = "$site/node.key"
[dns]
listen = "127.0.0.1:1536$((i - 1))"
zones = ["example.test"]
ttl_secs = 30
site_addresses = ["127.0.0.1$i"]
[log]
access_log = false
TOML
  RUST_LOG=warn "$GROUTER" run --config "$dir/$site.toml" 2>"$dir/$site.log" &
  pids+=($!)
done

msg='{"host":"127.0.0.1","port":1,"uris":["app.example.test"],"app":"bench"}'
nats_open "$NATS_PORT"
for _ in $(seq 1 100); do
  printf 'PUB router.register %d\r\n%s\r\n' "${#msg}" "$msg" >&3
  n=0
  for i in 1 2 3; do
    curl -sf -H "Authorization: Bearer bench-token" "http://127.0.0.1:1941$i/v1/routes?host=app.example.test" \
      | grep -q '"site":"c"' && n=$((n + 1))
  done
  [ "$n" = 3 ] && break
  sleep 0.1
done
echo "candidate: 3 grouter nodes meshed; DNS of site a on 127.0.0.1:15360" >&2
wait "${pids[1]}"
