# Shared by deploy/bench/policy-*.sh (sourced, not run): app.example.test must resolve to
# 127.0.0.1 for real SNI and :authority, without touching the system's /etc/hosts, as
# ../shared/bench/http-peers.sh does it. Sourcing re-runs the caller in a private mount
# namespace (as root); `private_hosts DIR` then bind-mounts a copy of /etc/hosts with the
# name added, and fails when the name still does not resolve.
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/bench}
HOSTN=app.example.test
resolves() { getent ahostsv4 "$HOSTN" 2>/dev/null | grep -q '^127\.0\.0\.1'; }
if ! resolves && [ -z "${BENCH_NS:-}" ] && [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
  exec unshare -m --propagation private env BENCH_NS=1 bash "$HERE/${0##*/}" "$@"
fi
private_hosts() {
  if [ -n "${BENCH_NS:-}" ]; then
    { cat /etc/hosts; echo "127.0.0.1 $HOSTN"; } >"$1/hosts"
    mount --bind "$1/hosts" /etc/hosts
  fi
  resolves || { echo "ERROR: $HOSTN does not resolve to 127.0.0.1 (run as root for a private /etc/hosts)" >&2; exit 1; }
}
