-- A policy written against KumoMTA's current AMQP docs: kumo.amqp.basic_publish.
local kumo = require 'kumo'

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'amqp' then
    return kumo.make_queue_config {
      retry_interval = '1s',
      max_retry_interval = '2s',
      protocol = { custom_lua = { constructor = 'make.amqp' } },
    }
  end
  return kumo.make_queue_config {}
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local sender = {}
  function sender:send(message)
    kumo.amqp.basic_publish {
      routing_key = '{{QUEUE}}',
      payload = message:get_data(),
      connection = {
        host = '127.0.0.1',
        port = {{PORT}},
        username = 'guest',
        password = 'guest',
      },
      properties = { delivery_mode = 2, message_id = message:id() },
    }
    return '250 published'
  end
  return sender
end)
