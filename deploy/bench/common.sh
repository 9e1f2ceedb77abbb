# Shared by the bench candidates (deploy/bench/*candidate.sh). Not executable on its own.
#
# bench_start NAME NATS_PORT: a private directory in $dir, the release binary in $GROUTER
# (built when missing), a nats-server on NATS_PORT, and everything started and recorded in
# $pids stopped (and $dir removed) on exit, SIGTERM or SIGINT.
# nats_open NATS_PORT: file descriptor 3 connected to that nats-server, CONNECT sent, so the
# caller can `printf 'PUB router.register ...' >&3` as a route emitter would.

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GROUTER=${GROUTER:-target/release/grouter}
pids=()
dir=

stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$dir" ] && rm -rf "$dir"
}

bench_start() {
  dir=$(mktemp -d "/tmp/$1.XXXXXX")
  trap 'stop; exit 0' TERM INT
  trap stop EXIT
  [ -x "$GROUTER" ] || cargo build --release -p grouter >&2
  local nats
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  "$nats" -a 127.0.0.1 -p "$2" >"$dir/nats.log" 2>&1 &
  pids+=($!)
}

nats_open() {
  for _ in $(seq 1 100); do
    if exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null; then break; fi
    sleep 0.1
  done
  printf 'CONNECT {"verbose":false}\r\n' >&3
}
