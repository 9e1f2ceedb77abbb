#!/usr/bin/env bash
# Announce this node's anycast route while GRouter is healthy, withdraw it when it is not.
#
# Polls GRouter's `GET /healthz` (200 = can serve; 503 = no healthy local GoRouter, or
# draining after SIGTERM) every INTERVAL seconds. Any answer but 200, a refused connection or
# a timeout (2 s) is a failure. After FALL consecutive failures the route is withdrawn with
# `birdc disable BIRD_PROTOCOL`; after RISE consecutive successes it is announced with
# `birdc enable BIRD_PROTOCOL`. birdc runs only when the state changes; transitions are
# logged to stderr with a UTC timestamp. The state is unknown at start, so the first
# decision is always applied (bird.conf starts the protocol disabled).
#
# On SIGTERM/SIGINT the route is withdrawn before exiting: a node with no checker must not
# keep attracting traffic.
#
# Usage:
#   grouter-anycast-check.sh            run forever
#   grouter-anycast-check.sh --once     check once, print healthy|unhealthy, exit 0|1
#                                       (never runs birdc)
# Environment (defaults in brackets):
#   HEALTHZ_URL    [http://127.0.0.1:9090/healthz]
#   INTERVAL       seconds between checks [2]
#   RISE           consecutive successes before announcing [3]
#   FALL           consecutive failures before withdrawing [2]
#   BIRD_PROTOCOL  the static protocol holding the anycast route [grouter_anycast]
#   BIRDC          the birdc command, e.g. "birdc -s /run/bird/bird.ctl" [birdc]
set -euo pipefail

HEALTHZ_URL=${HEALTHZ_URL:-http://127.0.0.1:9090/healthz}
INTERVAL=${INTERVAL:-2}
RISE=${RISE:-3}
FALL=${FALL:-2}
BIRD_PROTOCOL=${BIRD_PROTOCOL:-grouter_anycast}
BIRDC=${BIRDC:-birdc}

log() {
	printf '%s grouter-anycast-check: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

die() {
	log "error: $*"
	exit 2
}

for var in INTERVAL RISE FALL; do
	[[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, got '${!var}'"
done
[[ $BIRD_PROTOCOL =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "BIRD_PROTOCOL: bad name '$BIRD_PROTOCOL'"
command -v curl >/dev/null || die "curl not found"

# The last HTTP status seen ("000" when there was no answer), for the log.
last_code=000

# One check: success only for a 200 within 2 s. No retries, no proxy.
check() {
	last_code=$(curl --silent --output /dev/null --write-out '%{http_code}' \
		--max-time 2 --noproxy '*' -- "$HEALTHZ_URL" 2>/dev/null) || last_code=000
	[[ $last_code == 200 ]]
}

if [[ $# -gt 0 ]]; then
	case $1 in
	--once)
		if check; then
			echo healthy
			exit 0
		fi
		echo unhealthy
		exit 1
		;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*) die "unknown argument '$1' (try --help)" ;;
	esac
fi

# birdc enable|disable; returns non-zero when birdc fails (BIRD not running, bad socket).
# The state is then left unchanged, so the next check tries again.
birdc_do() {
	local out
	# shellcheck disable=SC2086 # BIRDC may carry options, e.g. "-s SOCKET"
	if out=$($BIRDC "$1" "$BIRD_PROTOCOL" 2>&1); then
		log "birdc $1 $BIRD_PROTOCOL: $(tr '\n' ' ' <<<"$out")"
		return 0
	fi
	log "error: birdc $1 $BIRD_PROTOCOL failed: $(tr '\n' ' ' <<<"$out")"
	return 1
}

state=unknown # unknown | announced | withdrawn
ok=0
bad=0

sleep_pid=
on_exit() {
	trap - TERM INT
	if [[ -n $sleep_pid ]]; then kill "$sleep_pid" 2>/dev/null || true; fi
	if [[ $state != withdrawn ]]; then
		log "stopping: withdrawing the route"
		birdc_do disable || true
	fi
	exit 0
}
trap on_exit TERM INT

log "watching $HEALTHZ_URL every ${INTERVAL}s (rise $RISE, fall $FALL), protocol $BIRD_PROTOCOL"
while true; do
	if check; then
		ok=$((ok + 1))
		bad=0
		if [[ $state != announced && $ok -ge $RISE ]]; then
			log "healthy ($ok consecutive 200s), was $state: announcing"
			if birdc_do enable; then state=announced; fi
		fi
	else
		bad=$((bad + 1))
		ok=0
		if [[ $state != withdrawn && $bad -ge $FALL ]]; then
			log "unhealthy ($bad consecutive failures, last status $last_code), was $state: withdrawing"
			if birdc_do disable; then state=withdrawn; fi
		fi
	fi
	# In the background, so that SIGTERM is handled at once rather than after the sleep.
	sleep "$INTERVAL" &
	sleep_pid=$!
	wait "$sleep_pid" || true
	sleep_pid=
done
