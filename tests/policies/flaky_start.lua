-- A constructor that fails exactly once, for whichever session removes the
-- 'fail-next' file first; every other session delivers.
kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    retry_interval = '1h',
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
end)

kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { connection_limit = 4, idle_timeout = '60s' }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  if os.remove('{{DIR}}/fail-next') then
    error('this session cannot connect')
  end
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local r = client:publish({ routing_key = '{{QUEUE}}', payload = msg:get_data() }):wait()
    if r.status ~= 'Ack' then
      error('not acked: ' .. kumo.json_encode(r))
    end
    return '250 ok'
  end
  function sender:close()
    client:close()
  end
  return sender
end)
