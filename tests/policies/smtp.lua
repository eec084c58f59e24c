-- Two ESMTP listeners: one that lets loopback relay (with small limits), one
-- that lets nobody here relay.
kumo.on('init', function()
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    hostname = 'relay.test',
    max_message_size = 4096,
    max_recipients_per_message = 3,
    client_timeout = '2s',
    relay_hosts = { '127.0.0.1' },
    line_length_hard_limit = 1000,
  }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = { '192.0.2.0/24' } }
end)

kumo.on('smtp_server_message_received', function(msg)
  if msg:get_first_named_header_value('X-Reject') then
    kumo.reject(550, '5.7.1 rejected by policy')
  end
  msg:set_meta('tenant', 'smtp')
end)

kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    retry_interval = '1s',
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
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
      kumo.reject(500, kumo.json_encode(r))
    end
    return '250 ok'
  end
  return sender
end)
