-- Each session tags what it publishes with its own id and a running count,
-- so the test can see how sessions and batches were formed.
kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    retry_interval = '1s',
    protocol = {
      custom_lua = { constructor = 'make.amqp', batch_size = {{BATCH}}, max_batch_latency = '100ms' },
    },
  }
end)

kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { connection_limit = 2, max_deliveries_per_connection = {{MAX}} }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local sid = string.format('%s-%d', tostring({}), math.random(0, 1 << 30))
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = { n = 0 }
  local function publish(msg, batch)
    sender.n = sender.n + 1
    local r = client:publish({
      routing_key = '{{QUEUE}}',
      payload = msg:get_data(),
      properties = { headers = { session = sid, n = sender.n, batch = batch } },
    }):wait()
    if r.status ~= 'Ack' then
      error('not acked: ' .. kumo.json_encode(r))
    end
  end
  function sender:send(msg)
    publish(msg, 1)
    return '250 ok'
  end
  function sender:send_batch(msgs)
    for _, m in ipairs(msgs) do
      publish(m, #msgs)
    end
    return '250 batch of ' .. #msgs
  end
  function sender:close()
    client:close()
  end
  return sender
end)
