-- One listener nobody is trusted on: injection by any known user, the admin
-- API by `admin` only; mail to a real broker queue.
kumo.on('init', function()
  kumo.start_http_listener {
    listen = '127.0.0.1:0',
    trusted_hosts = {},
    admin_users = { 'admin' },
  }
end)

kumo.on('http_server_validate_auth_basic', function(user, password)
  local passwords = { inject = 'in-secret', admin = 'admin-secret' }
  return password ~= '' and passwords[user] == password
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.amqp' } },
  }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(message)
    local result = client:publish({ routing_key = '{{QUEUE}}', payload = message:get_data() }):wait()
    if result.status == 'Ack' then
      return '250 published'
    end
    kumo.reject(451, '4.0.0 ' .. result.status)
  end
  return sender
end)
