#!/usr/bin/env bash
# Issue 13: the data plane with N route policies in force against the same build without any,
# in one run, on a machine whose speed drifts by more than the 3 % to be resolved.
#
# Two candidates (deploy/bench/candidate.sh): A with no policy, B with POLICIES (one of them
# for the benchmarked host, so every decision reads a policy), and HAProxy as the peer, all in
# front of ../shared/bench's backend, with ../shared/bench/http-peers.sh's loads and flags
# (wrk -t1 -c64 keep-alive for http and https, h2load -c8 -m8 for h2). Each round measures A
# and B back to back, in the order A B in odd rounds and B A in even ones (so a drift during a
# round favours neither), then HAProxy. B/A is taken per round and the median over rounds is
# the figure; the spread of the per-round ratios shows what the machine can resolve. Beside
# req/s, each run records the CPU time (user + system, from /proc) the measured process spent
# per request: its own cost, which moves far less than req/s on two shared cores.
#
#   POLICIES=10000 ROUNDS=8 DURATION=10 MODES="http https h2" deploy/bench/policy-ab.sh
#
# Needs wrk, h2load, haproxy and nginx (sudo ../shared/bench/install-peers.sh) and a release
# build (built when missing). Binds 127.0.0.1 only; every process started is stopped on exit.
set -uo pipefail
source "$(dirname "$0")/private-hosts.sh"
POLICIES=${POLICIES:-10000}; ROUNDS=${ROUNDS:-8}; DUR=${DURATION:-10}
MODES=${MODES:-http https h2}; CONNS=${CONNS:-64}; H2C=${H2_CLIENTS:-8}; H2M=${H2_STREAMS:-8}
for tool in wrk h2load haproxy nginx; do
  command -v "$tool" >/dev/null || { echo "ERROR: $tool missing: sudo $PEERS_DIR/install-peers.sh" >&2; exit 1; }
done
RES=${RESULTS:-$ROOT/target/bench/policy-ab-$(date +%Y%m%d-%H%M%S)}; mkdir -p "$RES"
W=$(mktemp -d /tmp/policy-ab.XXXXXX); PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
private_hosts "$W"
start() { local n=$1; shift; "$@" >"$W/$n.log" 2>&1 & PIDS+=($!); }

export GROUTER=${GROUTER:-$ROOT/target/release/grouter}
[ -x "$GROUTER" ] || (cd "$ROOT" && cargo build --release -p grouter) || exit 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$HOSTN" \
  -addext "subjectAltName=DNS:$HOSTN" -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat "$W/cert.pem" "$W/key.pem" >"$W/combined.pem"
start backend "$PEERS_DIR/backend/backend.sh" "$W/backend" 18080
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:18082
  bind 127.0.0.1:18445 ssl crt $W/combined.pem alpn h2,http/1.1
  default_backend be
backend be
  server s1 127.0.0.1:18080
EOF
start haproxy haproxy -db -f "$W/haproxy.cfg"
start without env POLICIES=0 bash "$HERE/candidate.sh"
start with env POLICIES="$POLICIES" NATS_PORT=14322 HTTP_PORT=19180 HTTPS_PORT=19543 ADMIN_PORT=19190 \
  bash "$HERE/candidate.sh"

declare -A U1 U2
U1[without]=http://$HOSTN:19080/; U2[without]=https://$HOSTN:19443/
U1[with]=http://$HOSTN:19180/;    U2[with]=https://$HOSTN:19543/
U1[haproxy]=http://$HOSTN:18082/; U2[haproxy]=https://$HOSTN:18445/
ok() { [ "$(curl -sk --max-time 2 "$1")" = ok ]; }
for p in without with haproxy; do for u in "${U1[$p]}" "${U2[$p]}"; do
  for _ in $(seq 100); do ok "$u" && break; sleep 0.2; done
  ok "$u" || { echo "ERROR: $p at $u does not answer 200 ok" >&2; tail -n5 "$W"/*.log >&2; exit 1; }
  timeout 10 wrk -t1 -c16 -d2s "$u" >/dev/null 2>&1
done; done

# The CPU time (user + system, clock ticks) of the process listening on a port: a node's own
# cost per request, which the co-scheduling of the load generator and the backend on two
# cores moves far less than req/s.
pid_of() { ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A PID
run() { # peer mode round -> "rps p99ms errors cpu_us_per_request"
  local f="$RES/$1-$2-$3.txt" u rps p99 err before after n
  u=${U2[$1]}; [ "$2" = http ] && u=${U1[$1]}
  before=$(ticks "${PID[$1]}")
  if [ "$2" = h2 ]; then
    timeout $((DUR + 20)) h2load -t1 -c"$H2C" -m"$H2M" -D "$DUR" --warm-up-time=1 --log-file="$W/h2.log" "$u" >"$f" 2>&1
    rps=$(awk '/^finished in/ {print $4}' "$f")
    err=$(awk '/^requests:/ {print $10+$12+$14}' "$f"); grep -q 'Application protocol: h2' "$f" || err=no-h2
    p99=$(cut -f3 "$W/h2.log" | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.3f", a[int(NR*.99)+1]/1000; else print 0}')
    rm -f "$W/h2.log"
    n=$(awk '/^requests:/ {print $8}' "$f")
  else
    timeout $((DUR + 20)) wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$u" >"$f" 2>&1
    rps=$(awk '/^Requests\/sec/ {print $2}' "$f")
    p99=$(awk '$1=="99%" {v=$2; if (v~/us$/) v=v/1000; else if (v~/ms$/) v=v+0; else if (v~/s$/) v=v*1000; printf "%.3f", v}' "$f")
    err=$(awk '/Non-2xx/ {e+=$NF} /Socket errors/ {gsub(",","");e+=$4+$6+$8+$10} END {print e+0}' "$f")
    n=$(awk '/requests in/ {print $1}' "$f")
  fi
  after=$(ticks "${PID[$1]}")
  echo "${rps:-0} ${p99:-0} ${err:-?} $(awk -v t=$((after - before)) -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", (n > 0 ? t * 1e6 / hz / n : 0)}')"
}
PID[without]=$(pid_of 19080); PID[with]=$(pid_of 19180); PID[haproxy]=$(pid_of 18082)

echo "# policy-ab $(date -u +%FT%TZ) $(nproc) cores; policies=$POLICIES rounds=$ROUNDS duration=${DUR}s; $(git -C "$ROOT" rev-parse --short HEAD)" | tee "$RES/runs.tsv"
for r in $(seq "$ROUNDS"); do for m in $MODES; do
  order="without with"; [ $((r % 2)) = 0 ] && order="with without"
  for p in $order haproxy; do
    printf '%s\t%s\t%s\t%s\n' "$p" "$m" "$r" "$(run "$p" "$m" "$r" | tr ' ' '\t')" | tee -a "$RES/runs.tsv"
  done
done; done

awk -F'\t' -v modes="$MODES" '
function med(s,  a,n,i,j,t) { n=split(s,a," "); for(i=2;i<=n;i++){t=a[i]; for(j=i-1;j>0&&a[j]+0>t+0;j--) a[j+1]=a[j]; a[j+1]=t}
  return n%2 ? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2 }
NF>=6 { v[$1,$2,$3]=$4; p[$1,$2]=p[$1,$2] " " $5; c[$1,$2,$3]=$7; if ($3>rounds) rounds=$3 }
END {
  printf "%-6s %12s %12s %12s %9s %9s  %s\n", "mode", "without/s", "with/s", "haproxy/s", "with/w-o", "w-o/hap", "with/without per round"
  nm=split(modes, M, " ")
  for (i=1; i<=nm; i++) { m=M[i]; a=""; b=""; h=""; rr=""; rh=""; list=""
    for (r=1; r<=rounds; r++) { if (!(("without",m,r) in v)) continue
      a=a " " v["without",m,r]; b=b " " v["with",m,r]; h=h " " v["haproxy",m,r]
      q=v["with",m,r]/v["without",m,r]; rr=rr " " q; rh=rh " " v["without",m,r]/v["haproxy",m,r]
      list=list sprintf(" %.3f", q) }
    printf "%-6s %12.0f %12.0f %12.0f %9.3f %9.3f %s\n", m, med(a), med(b), med(h), med(rr), med(rh), list }
  printf "%-6s %12s %12s %12s %9s  %s\n", "mode", "w-o cpu/req", "with cpu/req", "hap cpu/req", "with/w-o", "with/without CPU per request, per round"
  for (i=1; i<=nm; i++) { m=M[i]; a=""; b=""; h=""; rr=""; list=""
    for (r=1; r<=rounds; r++) { if (!(("without",m,r) in c) || c["without",m,r] <= 0) continue
      a=a " " c["without",m,r]; b=b " " c["with",m,r]; h=h " " c["haproxy",m,r]
      q=c["with",m,r]/c["without",m,r]; rr=rr " " q; list=list sprintf(" %.3f", q) }
    printf "%-6s %10.2fus %10.2fus %10.2fus %9.3f %s\n", m, med(a), med(b), med(h), med(rr), list }
  printf "p99 ms (median over rounds):"
  for (i=1; i<=nm; i++) printf "  %s without %.2f with %.2f haproxy %.2f", M[i], med(p["without",M[i]]), med(p["with",M[i]]), med(p["haproxy",M[i]])
  print "" }' "$RES/runs.tsv" | tee "$RES/summary.txt"
echo "raw outputs: $RES"
