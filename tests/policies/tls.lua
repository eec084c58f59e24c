-- amqps:// to a broker whose certificate a private CA signed: build_client
-- for domain 'client', basic_publish for domain 'basic'.
kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    retry_interval = '1s',
    protocol = { custom_lua = { constructor = 'make.' .. domain } },
  }
end)

kumo.on('make.client', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client('amqps://guest:guest@localhost:{{TLS_PORT}}/%2f', { root_ca_cert = '{{CA}}' })
  local sender = {}
  function sender:send(msg)
    local r = client:publish({ routing_key = '{{QUEUE}}', payload = msg:get_data() }):wait()
    if r.status ~= 'Ack' then
      kumo.reject(500, kumo.json_encode(r))
    end
    return '250 ok'
  end
  return sender
end)

kumo.on('make.basic', function(domain, tenant, campaign)
  local sender = {}
  function sender:send(msg)
    kumo.amqp.basic_publish {
      routing_key = '{{QUEUE}}',
      payload = msg:get_data(),
      connection = {
        host = 'localhost', port = {{TLS_PORT}}, enable_tls = true, root_ca_cert = '{{CA}}',
        username = 'guest', password = 'guest',
      },
    }
    return '250 ok'
  end
  return sender
end)

-- The same broker without its CA: the certificate must not be trusted.
kumo.on('make.untrusted', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client 'amqps://guest:guest@localhost:{{TLS_PORT}}/%2f'
  return { send = function(self, msg) return '250 never' end }
end)
