-- Nobody is trusted on the first two listeners: credentials are checked here.
kumo.on('init', function()
  kumo.start_http_listener {
    listen = '127.0.0.1:0',
    trusted_hosts = {},
    admin_users = { 'admin' },
    max_recipients_per_request = 5,
    request_body_limit = '64KiB',
    header_timeout = '1s',
    max_connections = 1200,
  }
  kumo.start_http_listener {
    listen = '127.0.0.1:0',
    trusted_hosts = {},
    max_connections = 20,
    header_timeout = '2s',
  }
  kumo.start_http_listener {
    listen = '127.0.0.1:0',
    use_tls = true,
    tls_certificate = '{{CERT}}',
    tls_private_key = '{{KEY}}',
  }
end)

kumo.on('http_server_validate_auth_basic', function(user, password)
  if user == 'boom' then
    error('the password database is down')
  end
  local passwords = { inject = 'in-secret', admin = 'admin-secret' }
  return password ~= '' and passwords[user] == password
end)

kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.sink' } },
  }
end)

kumo.on('make.sink', function()
  return { send = function(self, msg) return '250 ok' end }
end)
