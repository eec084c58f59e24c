-- Every message goes to {{QUEUE}} persistent, with its recipient as message id.
kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    retry_interval = '1s',
    max_retry_interval = '2s',
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
end)

-- A stalled broker must not hold a session long.
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { send_timeout = '3s' }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local r = client:publish({
      routing_key = '{{QUEUE}}',
      payload = msg:get_data(),
      properties = { delivery_mode = 2, message_id = tostring(msg:recipient()) },
    }):wait()
    if r.status ~= 'Ack' then
      kumo.reject(451, kumo.json_encode(r))
    end
    return '250 ok'
  end
  function sender:close()
    client:close()
  end
  return sender
end)
