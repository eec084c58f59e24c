-- Version {{VERSION}} of a policy that changes under load: every message is
-- published with this version in a header; domain 'extra' is routed only in
-- even versions.
local VERSION = {{VERSION}}

kumo.on('get_queue_config', function(domain, tenant, campaign)
  if domain == 'amqp' or (domain == 'extra' and VERSION % 2 == 0) then
    return kumo.make_queue_config {
      retry_interval = '1s',
      protocol = { custom_lua = { constructor = 'make.v' .. VERSION } },
    }
  end
  return nil
end)

kumo.on('make.v' .. VERSION, function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local r = client:publish({
      exchange = 'reload-x',
      routing_key = 'rk-' .. (VERSION % 3),
      payload = msg:get_data(),
      properties = { headers = { version = VERSION } },
    }):wait()
    if r.status ~= 'Ack' or r.reply_code then
      kumo.reject(451, kumo.json_encode(r))
    end
    return '250 v' .. VERSION
  end
  function sender:close()
    client:close()
  end
  return sender
end)
