-- policy-extras.log_hooks, behaving as KumoMTA's helper does: log records
-- of the hook NAME are queued to the domain NAME.log_hook and delivered by
-- the user's constructor, registered as the event make.NAME.log_hook.
--
--   local log_hooks = require 'policy-extras.log_hooks'
--   log_hooks:new {
--     name = 'amqp_logs',
--     -- Passed on to kumo.configure_log_hook with the name (headers, meta,
--     -- per_record = { Any = { enable = false }, Delivery = {} }, ...).
--     log_parameters = { headers = { 'Subject' } },
--     -- Merged into the queue's config (defaults: retry 1m, max 20m).
--     queue_config = { retry_interval = '1m' },
--     -- Batched delivery (KumoMTA 2024.11.08): the sender then needs
--     -- send_batch(messages) instead of send(message).
--     batch_size = 100, min_batch_size = 10, max_batch_latency = '5s',
--     constructor = function(domain, tenant, campaign) ... return sender end,
--   }
local kumo = require 'kumo'
local mod = { CONFIGURED = {} }

local OPTIONS = {
  name = 'string',
  log_parameters = 'table',
  queue_config = 'table',
  constructor = 'function',
  batch_size = 'number',
  min_batch_size = 'number',
  max_batch_latency = 'string',
}

-- Options of KumoMTA's helper that this relay lacks: refused by name so a
-- policy never loads with a setting it would silently not honour.
local LACKING = {
  filter = 'amqp-relay has no log_hooks filter; return false from your own '
    .. "should_enqueue_log_record handler, or choose record types with log_parameters.per_record",
}

-- Anything else is a mistake worth saying at load, not a setting ignored.
local function check(options, call)
  if type(options) ~= 'table' then
    error(call .. ': expected a table of options', 3)
  end
  for k, v in pairs(options) do
    local want = OPTIONS[k]
    if LACKING[k] then
      error(string.format("%s: option '%s' is not supported: %s", call, tostring(k), LACKING[k]), 3)
    end
    if not want then
      error(
        string.format(
          "%s: unknown option '%s' (it takes name, log_parameters, queue_config, constructor, "
            .. 'batch_size, min_batch_size and max_batch_latency)',
          call,
          tostring(k)
        ),
        3
      )
    end
    if type(v) ~= want then
      error(string.format("%s: '%s' must be a %s, not %s", call, k, want, type(v)), 3)
    end
  end
  for _, required in ipairs { 'name', 'constructor' } do
    if options[required] == nil then
      error(string.format("%s: '%s' is required", call, required), 3)
    end
  end
end

local function merged(defaults, overrides)
  local out = {}
  for k, v in pairs(defaults) do
    out[k] = v
  end
  for k, v in pairs(overrides or {}) do
    out[k] = v
  end
  return out
end

function mod:new(options)
  check(options, 'log_hooks:new')
  local name = options.name
  if mod.CONFIGURED[name] then
    error(string.format("log_hook with name '%s' has already been configured", name), 2)
  end
  mod.CONFIGURED[name] = options

  kumo.on('pre_init', function()
    kumo.configure_log_hook(merged({ name = name }, options.log_parameters))
  end)

  -- A "TLD" no real domain has, so the hook's queue never meets mail's.
  local domain = name .. '.log_hook'
  local constructor_event = 'make.' .. domain

  kumo.on('should_enqueue_log_record', function(msg, hook_name)
    if hook_name ~= name then
      return nil
    end
    -- Records about records would log forever.
    if msg:get_meta('log_record').reception_protocol == 'LogRecord' then
      return false
    end
    msg:set_meta('queue', domain)
    return true
  end)

  local queue_config = merged({ retry_interval = '1m', max_retry_interval = '20m' }, options.queue_config)
  -- Batching is the custom_lua protocol's: the engine then calls send_batch.
  queue_config.protocol = {
    custom_lua = {
      constructor = constructor_event,
      batch_size = options.batch_size,
      min_batch_size = options.min_batch_size,
      max_batch_latency = options.max_batch_latency,
    },
  }
  -- Built once now so a bad value (min_batch_size > batch_size, '5 parsecs')
  -- fails the load, not the first record.
  local ok, err = pcall(kumo.make_queue_config, queue_config)
  if not ok then
    error('log_hooks:new: ' .. tostring(err):gsub('^runtime error: ', ''), 2)
  end

  kumo.on('get_queue_config', function(d, tenant, campaign, routing_domain)
    if d ~= domain then
      return nil
    end
    return kumo.make_queue_config(queue_config)
  end)

  kumo.on(constructor_event, options.constructor)
end

-- KumoMTA's new_json POSTs each record to a URL with kumo.http, which this
-- relay does not have: say so when the policy loads.
function mod:new_json(options)
  error(
    'log_hooks:new_json posts records over HTTP (kumo.http), which amqp-relay does not provide; '
      .. 'use log_hooks:new with a constructor that publishes with kumo.amqp',
    2
  )
end

return mod
