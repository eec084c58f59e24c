-- policy-extras.log_hooks: KumoMTA's helper for delivering log records
-- through a custom_lua constructor.
--
--   local log_hooks = require 'policy-extras.log_hooks'
--   log_hooks:new {
--     name = 'amqp_logs',
--     constructor = function(domain, tenant, campaign) ... return sender end,
--     batch_size = 1,                 -- optional
--     queue_config = { ... },         -- optional, merged into make_queue_config
--     filter = function(log_record, msg) return true end, -- optional
--     log_parameters = { headers = { 'Subject' }, meta = { 'tenant' } }, -- optional
--   }
local kumo = require 'kumo'
local mod = {}

function mod:new(options)
  local name = assert(options.name, 'log_hooks:new: name is required')
  local constructor = assert(options.constructor, 'log_hooks:new: constructor is required')
  local event = 'make.' .. name

  kumo.on('pre_init', function()
    local params = { name = name }
    for k, v in pairs(options.log_parameters or {}) do
      params[k] = v
    end
    kumo.configure_log_hook(params)
  end)

  kumo.on('should_enqueue_log_record', function(msg, hook_name)
    if hook_name ~= name then
      return nil
    end
    local record = msg:get_meta 'log_record'
    if options.filter and not options.filter(record, msg) then
      return false
    end
    msg:set_meta('queue', name)
    return true
  end)

  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    if domain ~= name then
      return nil
    end
    local params = {}
    for k, v in pairs(options.queue_config or {}) do
      params[k] = v
    end
    params.protocol = {
      custom_lua = {
        constructor = event,
        batch_size = options.batch_size,
        min_batch_size = options.min_batch_size,
        max_batch_latency = options.max_batch_latency,
      },
    }
    return kumo.make_queue_config(params)
  end)

  kumo.on(event, constructor)
end

return mod
