#!/usr/bin/env bash
# The relay's main job, end to end: a local RabbitMQ on 5672, the relay on
# the seed policy (policies/seed.lua, verbatim from KumoMTA's docs), one
# message injected over HTTP, and that message read back from the queue.
# Then the operator's path with the files `helm install` + `kubectl apply`
# use: examples/seed-route.yaml rendered offline (`amqp-relay render`, as the
# operator would), laid out as a pod mounts it, the relay on the chart's base
# policy with authenticated injection, and the message read back again.
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

# Reads one message from 'logging' (or fails with the relay's log).
read_back() {
  for _ in $(seq 1 100); do
    out=$(api -X POST http://127.0.0.1:15672/api/queues/%2f/logging/get \
      -d '{"count":1,"ackmode":"ack_requeue_false","encoding":"auto"}')
    if [ "$out" != "[]" ]; then
      echo "$out" | python3 -c 'import json,sys; m=json.load(sys.stdin)[0]; print("queue logging got:", repr(m["payload"]), "via routing key", m["routing_key"])'
      return 0
    fi
    sleep 0.2
  done
  echo "the message did not arrive; relay log:" >&2
  cat "$1" >&2
  exit 1
}

# Waits for the relay writing log $1 to listen; prints its HTTP address.
listen_addr() {
  until addr=$(grep -o 'http listener on [0-9.:]*' "$1" | awk '{print $4}') && [ -n "$addr" ]; do
    kill -0 "$relay_pid" || { cat "$1" >&2; exit 1; }
    sleep 0.2
  done
  echo "$addr"
}

until api http://127.0.0.1:15672/api/overview >/dev/null 2>&1; do sleep 0.5; done
api -X PUT http://127.0.0.1:15672/api/queues/%2f/logging -d '{"durable":true}'

echo "== starting the relay on policies/seed.lua"
target/debug/amqp-relay relay --policy policies/seed.lua --data-dir "$work/spool" \
  --http-listen 127.0.0.1:0 2>"$work/relay.log" &
relay_pid=$!
addr=$(listen_addr "$work/relay.log")
echo "relay: http listener on $addr"

echo "== injecting a message for user@amqp"
curl -fsS "http://$addr/api/inject/v1" -H 'content-type: application/json' -d '{
  "envelope_sender": "demo@example.com",
  "recipients": [{"email": "user@amqp"}],
  "content": "Subject: hello from amqp-relay\r\n\r\nIt arrived.\r\n"
}'
echo

echo "== reading the queue 'logging'"
read_back "$work/relay.log"
kill "$relay_pid" && wait "$relay_pid" || true
relay_pid=""

echo
echo "== the operator's path: examples/seed-route.yaml rendered offline"
# As a user edits the example's Secret: the broker's URL with its credentials.
sed 's#^  url: .*#  url: amqp://guest:guest@127.0.0.1:5672/%2f#' examples/seed-route.yaml >"$work/seed-route.yaml"
target/debug/amqp-relay render -f "$work/seed-route.yaml" --namespace mail --relay mail-amqp-relay \
  --secrets-dir "$work/routes" >"$work/rendered.yaml"
# Lay the ConfigMap and Secret out as the kubelet mounts them.
python3 - "$work" <<'PY'
import base64, pathlib, sys, yaml
work = pathlib.Path(sys.argv[1])
cm, secret = [d for d in yaml.safe_load_all((work / "rendered.yaml").read_text()) if d]
for sub, items, decode in (("routes-policy", cm["data"], str.encode), ("routes", secret.get("data", {}), base64.b64decode)):
    (work / sub).mkdir()
    for k, v in items.items():
        (work / sub / k).write_bytes(decode(v))
        print(f"{cm['kind'] if sub == 'routes-policy' else secret['kind']} key {k} -> {sub}/{k}")
PY
mkdir -p "$work/auth/inject"
printf demo >"$work/auth/inject/username"
head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >"$work/auth/inject/password"

echo "== starting the relay on the chart's base policy (charts/amqp-relay/files/policy.lua)"
AMQP_RELAY_ROUTES_DIR="$work/routes-policy" AMQP_RELAY_AUTH_DIR="$work/auth" \
  AMQP_RELAY_SPOOL="$work/spool-chart" AMQP_RELAY_HTTP_LISTEN=127.0.0.1:0 AMQP_RELAY_TRUSTED_HOSTS= \
  target/debug/amqp-relay relay --policy charts/amqp-relay/files/policy.lua 2>"$work/relay-chart.log" &
relay_pid=$!
addr=$(listen_addr "$work/relay-chart.log")
echo "relay: http listener on $addr (injection needs the inject credentials)"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/api/inject/v1" -H 'content-type: application/json' -d '{}')
echo "without credentials: HTTP $code"
[ "$code" = 401 ]

echo "== injecting a message for user@amqp with the inject credentials"
curl -fsS -u "demo:$(cat "$work/auth/inject/password")" "http://$addr/api/inject/v1" \
  -H 'content-type: application/json' -d '{
  "envelope_sender": "demo@example.com",
  "recipients": [{"email": "user@amqp"}],
  "content": "Subject: hello through an AmqpRoute\r\n\r\nIt arrived.\r\n"
}'
echo
echo "== reading the queue 'logging'"
read_back "$work/relay-chart.log"
