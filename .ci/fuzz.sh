#!/usr/bin/env bash
# Coverage-guided fuzzing of what a hostile client feeds the server
# (fuzz/fuzz_targets: `handshake`, `requests`), for a bounded time.
#
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   targets to run (default: "handshake requests")
#
# Installs what it needs (the nightly toolchain, cargo-fuzz from crates.io),
# builds the targets with AddressSanitizer, debug assertions and overflow
# checks, and runs each from its committed seed corpus (fuzz/seeds/TARGET)
# plus a scratch corpus. A crash, a sanitizer report, a leak, a timeout
# (an input that takes more than 10 s: a hang) or running out of memory
# stops the run: the input is saved under fuzz/artifacts/TARGET/, printed
# in hex, and the script exits non-zero. Reproduce with
#   cargo +nightly fuzz run -O -a TARGET fuzz/artifacts/TARGET/<file>
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-handshake requests}
cargo_fuzz_version=0.13.2

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
start=$(date +%s)

step "toolchain: nightly and cargo-fuzz ${cargo_fuzz_version}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
rustup run nightly rustc --version
if ! cargo fuzz --version 2>/dev/null | grep -q " ${cargo_fuzz_version}\$"; then
  cargo install cargo-fuzz --locked --version "${cargo_fuzz_version}"
fi
cargo fuzz --version

step "build (release, debug assertions, AddressSanitizer)"
cargo +nightly fuzz build -O -a

scratch=$(mktemp -d /tmp/cradle-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
status=0
for t in $targets; do
  step "fuzz ${t} for ${seconds} s"
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  log="$scratch/$t.log"
  touch "$scratch/$t.start"
  # libFuzzer: the first corpus directory receives new inputs, the seed
  # directory is only read. -timeout: one input taking 10 s is a hang.
  set +e
  cargo +nightly fuzz run -O -a "$t" "$scratch/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done|stat::|==[0-9]+==|SUMMARY|Test unit written)' "$log" || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  echo "${t}: ${execs:-0} executions, ${rate:-0} per second (libFuzzer's figures)"
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "error: fuzz target ${t} failed (exit ${rc}); its output:" >&2
    tail -n 60 "$log" >&2
    find "fuzz/artifacts/$t" -type f -newer "$scratch/$t.start" | while read -r f; do
      echo "reproducer $f ($(wc -c <"$f") bytes):" >&2
      od -An -tx1 -v "$f" | head -n 64 >&2
    done
  fi
done

step "done in $(($(date +%s) - start)) s"
exit "$status"
