-- send misbehaves on a message's first attempt, in the way its X-Mode says.
kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    retry_interval = '1s',
    max_retry_interval = '1s',
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
end)

kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { send_timeout = '1s' }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local mode = msg:get_first_named_header_value('X-Mode')
    if msg:num_attempts() == 0 then
      if mode == 'throw' then
        error({ 'not', 'even', 'a', 'string' })
      elseif mode == 'spin' then
        while true do end
      elseif mode == 'stall' then
        -- An AMQP server that accepts the connection and never answers.
        kumo.amqp.basic_publish {
          routing_key = 'x', payload = 'x',
          connection = { host = '127.0.0.1', port = {{STALL_PORT}}, connect_timeout = '1h', publish_timeout = '1h' },
        }
      elseif mode == 'garbage' then
        return { status = 'this is not a response' }
      end
    end
    local r = client:publish({ routing_key = '{{QUEUE}}', payload = msg:get_data() }):wait()
    if r.status ~= 'Ack' then
      kumo.reject(451, kumo.json_encode(r))
    end
    return '250 ok'
  end
  return sender
end)
