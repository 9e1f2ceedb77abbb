#!/usr/bin/env bash
# Issue 13: what N route policies cost the data plane per request, in instructions: repeatable
# whatever else the machine does, where req/s on this 2-core VM moves by ±15 % between two
# 10 s runs (deploy/bench/policy-ab.sh measures req/s).
#
# The node of deploy/bench/candidate.sh runs under `valgrind --tool=callgrind`, once with no
# policy and once with POLICIES (one for the benchmarked host, so every decision reads one).
# After a warm-up, instructions are counted over REQUESTS requests per mode (h2load: HTTP/1.1
# plain, HTTP/1.1 over TLS, HTTP/2 over TLS, 64 / 64 / 8x8 connections and streams, the loads
# of ../shared/bench/http-peers.sh), and divided by the requests.
#
#   POLICIES=10000 REQUESTS=20000 deploy/bench/policy-callgrind.sh
#
# Needs valgrind, h2load and nginx (sudo ../shared/bench/install-peers.sh); binds 127.0.0.1.
set -uo pipefail
source "$(dirname "$0")/private-hosts.sh"
POLICIES=${POLICIES:-10000}; REQUESTS=${REQUESTS:-20000}
for tool in valgrind callgrind_control h2load nginx; do
  command -v "$tool" >/dev/null || { echo "ERROR: $tool missing: sudo $PEERS_DIR/install-peers.sh; apt-get install valgrind" >&2; exit 1; }
done
W=$(mktemp -d /tmp/policy-callgrind.XXXXXX); PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
private_hosts "$W"
GROUTER_BIN=${GROUTER:-$ROOT/target/release/grouter}
[ -x "$GROUTER_BIN" ] || (cd "$ROOT" && cargo build --release -p grouter) || exit 1
"$PEERS_DIR/backend/backend.sh" "$W/backend" 18080 >"$W/backend.log" 2>&1 & PIDS+=($!)
# The candidate's node, counted from the moment collection is switched on.
cat >"$W/grouter" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=\$CG_OUT "$GROUTER_BIN" "\$@"
EOF
chmod +x "$W/grouter"

ok() { [ "$(curl -sk --max-time 5 "$1")" = ok ]; }
# `totals:` (callgrind's `summary:` is wrong after a zeroing).
total_ir() { awk '/^totals:/ {print $2; exit}' "$1"; }
declare -A IR
for p in 0 "$POLICIES"; do
  dumps=0
  CG_OUT=$W/cg-$p.out GROUTER="$W/grouter" POLICIES=$p bash "$HERE/candidate.sh" >"$W/candidate-$p.log" 2>&1 & cand=$!
  for _ in $(seq 600); do ok "http://$HOSTN:19080/" && ok "https://$HOSTN:19443/" && break; sleep 0.5; done
  ok "http://$HOSTN:19080/" || { echo "ERROR: the node did not answer" >&2; tail "$W/candidate-$p.log" >&2; exit 1; }
  for mode in http https h2; do
    case $mode in
      http)  url=http://$HOSTN:19080/;  args=(--h1 -c64) ;;
      https) url=https://$HOSTN:19443/; args=(--h1 -c64) ;;
      h2)    url=https://$HOSTN:19443/; args=(-c8 -m8) ;;
    esac
    h2load -t1 "${args[@]}" -n 2000 "$url" >/dev/null 2>&1          # warm-up: connections, caches
    callgrind_control -i on >/dev/null; callgrind_control -z >/dev/null
    h2load -t1 "${args[@]}" -n "$REQUESTS" "$url" >"$W/h2load-$p-$mode.txt" 2>&1
    callgrind_control -i off >/dev/null; callgrind_control -d "$mode" >/dev/null
    grep -q "succeeded, 0 failed\|$REQUESTS succeeded" "$W/h2load-$p-$mode.txt" \
      || { echo "ERROR: requests failed:" >&2; grep -E '^requests' "$W/h2load-$p-$mode.txt" >&2; exit 1; }
    dumps=$((dumps + 1)); dump=$W/cg-$p.out.$dumps
    IR[$p,$mode]=$(total_ir "$dump")
    printf '%-6s policies=%-6s %12s instructions  %8.0f per request\n' "$mode" "$p" "${IR[$p,$mode]}" \
      "$(echo "${IR[$p,$mode]} / $REQUESTS" | bc -l)"
  done
  kill "$cand"; wait "$cand" 2>/dev/null
done
echo "# with $POLICIES policies / without, per request (user-space instructions of the node):"
for mode in http https h2; do
  printf '%-6s %.4f  (+%.0f instructions per request)\n' "$mode" \
    "$(echo "${IR[$POLICIES,$mode]} / ${IR[0,$mode]}" | bc -l)" \
    "$(echo "(${IR[$POLICIES,$mode]} - ${IR[0,$mode]}) / $REQUESTS" | bc -l)"
done
