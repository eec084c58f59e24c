#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests against RabbitMQ
# nodes the tests start themselves (one on 5672 for the seed policy's
# amqp://localhost, others on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo test --locked "$@"
