-- Mail for @amqp goes to {{MAIL_Q}}; the relay's own Reception and Delivery
-- records go to {{LOG_Q}} through a log hook; local logs are kept too.
local log_hooks = require 'policy-extras.log_hooks'

kumo.on('init', function()
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
  kumo.configure_local_logs {
    log_dir = '{{LOGS}}',
    max_file_size = 700,
    compression_level = {{LEVEL}},
    headers = { 'Subject' },
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain ~= 'amqp' then
    return nil
  end
  return kumo.make_queue_config {
    retry_interval = '1s',
    max_retry_interval = '2s',
    protocol = { custom_lua = { constructor = 'make.mail' } },
  }
end)

local connection = { host = '127.0.0.1', port = {{PORT}}, username = 'guest', password = 'guest' }

kumo.on('make.mail', function(domain, tenant, campaign)
  local sender = {}
  function sender:send(msg)
    kumo.amqp.basic_publish { routing_key = '{{MAIL_Q}}', payload = msg:get_data(), connection = connection }
    return '250 mail published'
  end
  return sender
end)

log_hooks:new {
  name = 'amqp_logs',
  log_parameters = {
    headers = { 'Subject' },
    meta = { 'reception_protocol' },
    -- Reception and Delivery records only.
    per_record = { Any = { enable = false }, Reception = {}, Delivery = {} },
  },
  queue_config = { retry_interval = '1s', max_retry_interval = '2s' },
  constructor = function(domain, tenant, campaign)
    local sender = {}
    function sender:send(msg)
      kumo.amqp.basic_publish {
        routing_key = '{{LOG_Q}}',
        payload = msg:get_data(),
        connection = connection,
        properties = { content_type = 'application/json' },
      }
      return '250 logged'
    end
    return sender
  end,
}
