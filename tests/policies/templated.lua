-- Injected mail for any domain is published to {{QUEUE}}; the recipient's
-- inject `metadata` (meta `extra`) becomes a header, to show it arrived.
kumo.on('http_message_generated', function(msg)
  local extra = msg:get_meta 'extra'
  if extra then
    msg:prepend_header('X-Cid', tostring(extra.cid))
  end
  -- What KumoMTA records of where an injected message came from.
  if msg:get_first_named_header_value 'X-Want-Origin' then
    msg:prepend_header(
      'X-Origin',
      string.format(
        '%s %s %s',
        msg:get_meta 'reception_protocol',
        msg:get_meta 'received_from',
        msg:get_meta 'http_auth'
      )
    )
  end
end)

kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local r = client:publish({ routing_key = '{{QUEUE}}', payload = msg:get_data() }):wait()
    if r.status ~= 'Ack' or r.reply_code then
      kumo.reject(451, kumo.json_encode(r))
    end
    return '250 ok'
  end
  function sender:close()
    client:close()
  end
  return sender
end)
