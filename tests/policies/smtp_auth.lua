-- Listener 0: TLS, nobody may relay without AUTH, STARTTLS required.
-- Listener 1: loopback relays, a small memory bound for bodies, a short timeout.
-- Listener 2: loopback relays, bare line endings fixed to CRLF instead of refused.
kumo.on('init', function()
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    tls_certificate = '{{CERT}}',
    tls_private_key = '{{KEY}}',
    relay_hosts = {},
    require_starttls = true,
  }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    relay_hosts = { '127.0.0.1' },
    max_data_memory = 4096,
    client_timeout = '1s',
  }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    relay_hosts = { '127.0.0.1' },
    invalid_line_endings = 'Fix',
  }
end)

kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
  if authc == 'boom' then
    error('the password database is down')
  end
  return authz == authc and authc == 'daniel' and password == 'tiger' and conn_meta.tls == 'true'
end)

kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', msg:get_meta('authn_id') or 'anonymous')
end)

kumo.on('get_queue_config', function(domain, tenant, campaign)
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.amqp' } } }
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  return {
    send = function(self, msg)
      local r = client:publish({
        routing_key = '{{QUEUE}}',
        payload = msg:get_data(),
        properties = { headers = { queue = msg:queue_name(), sender = tostring(msg:sender()) } },
      }):wait()
      if r.status ~= 'Ack' then
        kumo.reject(500, kumo.json_encode(r))
      end
      return '250 ok'
    end,
  }
end)
