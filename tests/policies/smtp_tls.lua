kumo.on('init', function()
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    tls_certificate = '{{CERT}}',
    tls_private_key = '{{KEY}}',
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.amqp' } } }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  return {
    send = function(self, msg)
      local r = client:publish({ routing_key = '{{QUEUE}}', payload = msg:get_data() }):wait()
      if r.status ~= 'Ack' then
        kumo.reject(500, kumo.json_encode(r))
      end
      return '250 ok'
    end,
  }
end)
