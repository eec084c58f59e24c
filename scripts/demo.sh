#!/usr/bin/env bash
# The relay's main job, end to end: a local RabbitMQ on 5672, the relay on
# the seed policy (policies/seed.lua, verbatim from KumoMTA's docs), one
# message injected over HTTP, and that message read back from the queue.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --locked --quiet

work=$(mktemp -d /tmp/amqp-relay-demo.XXXXXX)
node="demo$$@localhost"
export HOME="$work" RABBITMQ_CONF_ENV_FILE=/dev/null RABBITMQ_NODENAME="$node" \
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5672 RABBITMQ_DIST_PORT=25672 \
  RABBITMQ_MNESIA_BASE="$work/mnesia" RABBITMQ_LOG_BASE="$work/log" \
  RABBITMQ_CONFIG_FILE="$work/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$work/plugins" \
  RABBITMQ_PID_FILE="$work/pid"
printf 'listeners.tcp.default = 127.0.0.1:5672\nmanagement.tcp.port = 15672\nmanagement.tcp.ip = 127.0.0.1\nlog.console = false\n' >"$work/rabbitmq.conf"
echo '[rabbitmq_management].' >"$work/plugins"

relay_pid=""
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  [ -f "$work/pid" ] && kill -9 "$(cat "$work/pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting RabbitMQ on 127.0.0.1:5672"
/usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null 2>&1 &
/usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" wait "$work/pid" --timeout 90 >/dev/null
api() { curl -fsS -u guest:guest -H 'content-type: application/json' "$@"; }
until api http://127.0.0.1:15672/api/overview >/dev/null 2>&1; do sleep 0.5; done
api -X PUT http://127.0.0.1:15672/api/queues/%2f/logging -d '{"durable":true}'

echo "== starting the relay on policies/seed.lua"
target/debug/amqp-relay relay --policy policies/seed.lua --data-dir "$work/spool" \
  --http-listen 127.0.0.1:0 2>"$work/relay.log" &
relay_pid=$!
until addr=$(grep -o 'http listener on [0-9.:]*' "$work/relay.log" | awk '{print $4}') && [ -n "$addr" ]; do
  kill -0 "$relay_pid" || { cat "$work/relay.log"; exit 1; }
  sleep 0.2
done
echo "relay: http listener on $addr"

echo "== injecting a message for user@amqp"
curl -fsS "http://$addr/api/inject/v1" -H 'content-type: application/json' -d '{
  "envelope_sender": "demo@example.com",
  "recipients": [{"email": "user@amqp"}],
  "content": "Subject: hello from amqp-relay\r\n\r\nIt arrived.\r\n"
}'
echo

echo "== reading the queue 'logging'"
for _ in $(seq 1 100); do
  out=$(api -X POST http://127.0.0.1:15672/api/queues/%2f/logging/get \
    -d '{"count":1,"ackmode":"ack_requeue_false","encoding":"auto"}')
  if [ "$out" != "[]" ]; then
    echo "$out" | python3 -c 'import json,sys; m=json.load(sys.stdin)[0]; print("queue logging got:", repr(m["payload"]), "via routing key", m["routing_key"])'
    exit 0
  fi
  sleep 0.2
done
echo "the message did not arrive; relay log:" >&2
cat "$work/relay.log" >&2
exit 1
