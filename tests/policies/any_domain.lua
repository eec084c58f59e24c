-- Every domain under '.q' is its own queue, all published to one broker
-- queue; sessions end soon after their queue runs dry.
kumo.on('get_queue_config', function(domain, tenant, campaign)
  if domain:sub(-2) == '.q' then
    return kumo.make_queue_config {
      protocol = { custom_lua = { constructor = 'make.amqp' } },
    }
  end
end)

kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { idle_timeout = '50ms' }
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
