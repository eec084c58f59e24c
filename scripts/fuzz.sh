#!/usr/bin/env bash
# cargo-fuzz (libFuzzer) targets: SMTP command parser, the DATA/command line
# reader, SMTP AUTH and HTTP Basic decoding, the inject JSON, queue names, and
# the AmqpRoute → Lua renderer.
# RUSTC_BOOTSTRAP lets the one stable toolchain here build with sanitizers.
# Usage: scripts/fuzz.sh [seconds per target, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds=${1:-10}
export RUSTC_BOOTSTRAP=1
for t in smtp_command smtp_data smtp_auth http_basic inject_json queue_name render; do
  echo "== fuzz $t for ${seconds}s"
  cargo fuzz run "$t" -- -max_total_time="$seconds" -seed=1 -print_final_stats=0 2>&1 \
    | grep -E '^(Done|==[0-9]+== ERROR|SUMMARY)|panicked' || true
  # libFuzzer leaves a crash-* file behind when it finds a failure.
  if ls "fuzz/artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $t found a failure: fuzz/artifacts/$t" >&2
    exit 1
  fi
done
