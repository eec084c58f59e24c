-- The X-Mode header of each test message picks how delivery behaves.
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1s',
    max_retry_interval = '2s',
    max_age = '{{MAX_AGE}}',
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client(os.getenv('BROKER_URL') or '{{URL}}')
  local sender = {}
  function sender:send(message)
    local mode = message:get_first_named_header_value('X-Mode')
    if mode == 'reject-once' and message:num_attempts() == 0 then
      kumo.reject(451, '4.0.0 not yet')
    end
    if mode == 'error-once' and message:num_attempts() == 0 then
      error('boom on the first try')
    end
    if mode == 'always-reject' then
      kumo.reject(421, '4.0.0 never')
    end
    local publish = {
      routing_key = '{{QUEUE}}',
      payload = message:get_data(),
      properties = { delivery_mode = 2 },
    }
    if mode == 'unroutable' then
      publish.exchange = 'amq.direct'
      publish.routing_key = 'nowhere'
      publish.options = { mandatory = true }
    end
    local result
    if mode == 'with-timeout' then
      -- KumoMTA's publish_with_timeout answers the result table itself.
      result = client:publish_with_timeout(publish, 10000)
    else
      result = client:publish(publish):wait()
    end
    if result.status == 'Ack' and not result.reply_code then
      return '250 ' .. kumo.json_encode(result)
    end
    kumo.reject(550, kumo.json_encode(result))
  end
  function sender:close()
    client:close()
  end
  return sender
end)
