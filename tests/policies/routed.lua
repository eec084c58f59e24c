-- Routes domain 'amqp' only when ROUTED is true; every other queue (and
-- 'amqp' when not routed) gets KumoMTA's default, SMTP, which this relay
-- does not deliver: such mail is refused at reception and held in the spool.
local ROUTED = {{ROUTED}}

kumo.on('get_queue_config', function(domain, tenant, campaign)
  if ROUTED and domain == 'amqp' then
    return kumo.make_queue_config {
      retry_interval = '{{RETRY}}',
      max_retry_interval = '{{MAX_RETRY}}',
      protocol = { custom_lua = { constructor = 'make.amqp', batch_size = {{BATCH}} } },
    }
  end
  return kumo.make_queue_config {}
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client(os.getenv('BROKER_URL') or '{{URL}}')
  local sender = {}
  local function publish(msg)
    return client:publish { routing_key = '{{QUEUE}}', payload = msg:get_data() }
  end
  local function check(r)
    if r.status ~= 'Ack' or r.reply_code then
      kumo.reject(451, kumo.json_encode(r))
    end
  end
  function sender:send(msg)
    check(publish(msg):wait())
    return '250 ok'
  end
  function sender:send_batch(msgs)
    local confirms = {}
    for _, msg in ipairs(msgs) do
      table.insert(confirms, publish(msg))
    end
    for _, c in ipairs(confirms) do
      check(c:wait())
    end
    return '250 ok'
  end
  function sender:close()
    client:close()
  end
  return sender
end)
