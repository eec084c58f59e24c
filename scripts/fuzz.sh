#!/usr/bin/env bash
# cargo-fuzz (libFuzzer) targets: SMTP command parser, DATA (line reader and
# end-of-data state machine), SMTP AUTH and HTTP Basic decoding, the inject
# JSON (templates and the builder included), queue names, and the AmqpRoute →
# Lua renderer. Each starts from its committed seeds (fuzz/seeds/TARGET) as
# well as the corpus it grew before.
# A target that does not build, a fuzzer that exits non-zero, one that ran no
# input, or any crash-/oom-/timeout-/leak- artifact fails the suite.
# RUSTC_BOOTSTRAP lets the one stable toolchain here build with sanitizers.
# Usage: scripts/fuzz.sh [seconds per target, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds=${1:-10}
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in smtp_command smtp_data smtp_auth http_basic inject_json queue_name render; do
  echo "== fuzz $t for ${seconds}s"
  corpus=(fuzz/corpus/"$t")
  mkdir -p "${corpus[0]}"
  [ -d "fuzz/seeds/$t" ] && corpus+=("fuzz/seeds/$t")
  if ! cargo fuzz run "$t" "${corpus[@]}" -- -max_total_time="$seconds" -seed=1 \
      -print_final_stats=0 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t failed (did not build, or found a failure)" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$log" || { tail -n 20 "$log" >&2; echo "fuzz target $t ran nothing" >&2; exit 1; }
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+')
  [ "$runs" -gt 0 ] || { echo "fuzz target $t ran no input" >&2; exit 1; }
  for kind in crash oom timeout leak; do
    if compgen -G "fuzz/artifacts/$t/$kind-*" >/dev/null; then
      echo "fuzz target $t left a $kind artifact: $(ls fuzz/artifacts/"$t"/"$kind"-*)" >&2
      exit 1
    fi
  done
done
