-- KumoMTA's helpers as its user guide sets them up: listener domains decide
-- who may relay (nobody here is in relay_hosts), the queue helper takes the
-- tenant and campaign from headers and configures the queues.
local listener_domains = require 'policy-extras.listener_domains'
local queue_module = require 'policy-extras.queue'

kumo.on('init', function()
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = { '192.0.2.0/24' } }
end)

kumo.on('get_listener_domain', listener_domains:setup { '{{DIR}}/listener_domains.toml' })

local queue_helper = queue_module:setup { '{{DIR}}/queue.toml' }

kumo.on('smtp_server_message_received', function(msg)
  queue_helper:apply(msg)
end)

kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client '{{URL}}'
  local sender = {}
  function sender:send(msg)
    local r = client:publish({
      routing_key = '{{QUEUE}}',
      payload = msg:get_data(),
      properties = { headers = { queue = msg:queue_name() } },
    }):wait()
    if r.status ~= 'Ack' then
      kumo.reject(500, kumo.json_encode(r))
    end
    return '250 ok'
  end
  return sender
end)
