-- Routing decided in smtp_server_message_received, KumoMTA's documented way:
-- only the 'billing' tenant of domain 'amqp' is routed.
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', msg:get_first_named_header_value('X-Tenant'))
end)

kumo.on('get_queue_config', function(domain, tenant, campaign)
  if domain == 'amqp' and tenant == 'billing' then
    return kumo.make_queue_config {
      protocol = { custom_lua = { constructor = 'make.amqp' } },
    }
  end
  return kumo.make_queue_config {}
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local r = client:publish({
      routing_key = '{{QUEUE}}',
      payload = msg:get_data(),
      properties = { headers = { queue = msg:queue_name() } },
    }):wait()
    if r.status ~= 'Ack' then
      kumo.reject(451, kumo.json_encode(r))
    end
    return '250 ok'
  end
  return sender
end)
