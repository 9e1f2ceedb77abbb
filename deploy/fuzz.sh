#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each, one after the
# other, and prints each one's executions, rate and what it found. Exits non-zero when a
# target crashed: the input is in fuzz/artifacts/<target>/; fixed, it goes to
# fuzz/regressions/<target>/ (grouter/tests/fuzz_corpus.rs replays it on stable).
#
#   deploy/fuzz.sh [SECONDS] [TARGET...]     SECONDS defaults to 600; TARGET to all of them
#
# Installs cargo-fuzz when it is missing (idempotent); needs a nightly toolchain and fails
# naming it when there is none. Environment:
#   FUZZ_BUILD=release|dev   release (default): optimised, debug assertions and
#                            AddressSanitizer on, for long runs; dev: unoptimised, no
#                            sanitizer, quick to build (deploy/test.sh's few seconds).
#   FUZZ_TARGET_DIR=DIR      where the fuzz build goes (default ~/.cache/grouter/fuzz-target:
#                            outside the work tree, so a fresh clone reuses the compiled
#                            dependencies).
#   FUZZ_NICE=N              niceness of the runs (default 10: the machine is shared).
# libFuzzer adds what it learns to fuzz/work/<target>/ (not committed); the seeds in
# fuzz/corpus/<target>/ and the regressions are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
[ $# -gt 0 ] && shift
case $seconds in
  '' | *[!0-9]*) echo "usage: deploy/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
build=${FUZZ_BUILD:-release}
target_dir=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/grouter/fuzz-target}
niceness=${FUZZ_NICE:-10}

if ! nightly=$(cargo +nightly --version 2>/dev/null); then
  echo "deploy/fuzz.sh: cargo-fuzz needs a nightly Rust toolchain, and there is none." >&2
  echo "Install it with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

case $build in
  release) flags=() ;; # cargo-fuzz's default: optimised, debug assertions, AddressSanitizer
  dev) flags=(--dev --sanitizer none) ;;
  *) echo "FUZZ_BUILD must be release or dev, not $build" >&2; exit 2 ;;
esac

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
echo "fuzz: $nightly, $build build in $target_dir, ${seconds}s per target: ${targets[*]}" >&2
started=$SECONDS
cargo +nightly fuzz build "${flags[@]}" --target-dir "$target_dir" >&2
echo "fuzz: built in $((SECONDS - started))s" >&2

failed=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  log="work/$t.log"
  dirs=("work/$t" "corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  if nice -n "$niceness" cargo +nightly fuzz run "${flags[@]}" --target-dir "$target_dir" \
    "$t" "${dirs[@]}" -- -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
    >"$log" 2>&1; then
    verdict=ok
  else
    verdict="CRASHED (see fuzz/$log and fuzz/artifacts/$t/)"
    failed+=("$t")
  fi
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  runs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  printf '%-14s %12s executions  %8s exec/s  %5ss  %6s new units  %s\n' \
    "$t" "${runs:-?}" "${rate:-?}" "${took:-?}" "$(stat new_units_added)" "$verdict"
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: crashed: ${failed[*]}" >&2; exit 1; }
