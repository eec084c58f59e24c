#!/usr/bin/env bash
# The whole test suite:
#  1. Rust unit and end-to-end tests (`cargo test`); the end-to-end tests start
#     their own RabbitMQ nodes (one on 5672 for the seed policy's
#     amqp://localhost, others on free ports).
#  2. The release build the Dockerfile runs (`cargo build --release --locked`).
#  3. The Helm chart, CRD, examples and Dockerfile (pytest, in a venv with
#     helm-python-sdk, kubernetes-validate, jsonschema and cel-python (the
#     CRD's CEL rules evaluated) from PyPI), with
#     checkov (its own venv: it pins packages pytest needs newer) scanning
#     the rendered chart.
#  4. A short run of every cargo-fuzz target (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo test --locked "$@"
cargo build --release --locked --bin amqp-relay

venv=target/pyvenv
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import celpy' 2>/dev/null; then
  python3 -m venv "$venv" 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check \
    helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 'jsonschema>=4' 'pytest>=8' 'pyyaml>=6' cel-python==0.5.0
fi
checkov_venv=target/checkov-venv
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q --disable-pip-version-check checkov==3.3.30
fi
CHECKOV="$checkov_venv/bin/checkov" "$venv/bin/pytest" -q tests/chart
scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
