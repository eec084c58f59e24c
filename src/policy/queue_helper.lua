-- policy-extras.queue, behaving as KumoMTA's helper does: tenants and
-- campaigns from headers, queue configuration from TOML or JSON files,
-- resolved default < domain < tenant < domain.tenant < domain.tenant.campaign.
--
--   local queue_module = require 'policy-extras.queue'
--   local queue_helper = queue_module:setup { '/etc/amqp-relay/queue.toml' }
--   kumo.on('smtp_server_message_received', function(msg)
--     queue_helper:apply(msg)
--   end)
--
-- Differences, each refused when the policy loads rather than ignored:
-- scheduling_header (the relay has no scheduled sends) and egress_pool (it
-- does not deliver by SMTP). The files are read at setup, so a missing or
-- broken one fails the load, then again when a minute has passed, as
-- KumoMTA's memoized loader does.
local kumo = require 'kumo'
local mod = {}

local RELOAD_MS = 60 * 1000

local function merge_into(src, dest)
  for k, v in pairs(src) do
    if type(v) == 'table' and type(dest[k]) == 'table' then
      merge_into(v, dest[k])
    elseif type(v) == 'table' then
      local copy = {}
      merge_into(v, copy)
      dest[k] = copy
    else
      dest[k] = v
    end
  end
end

local function load_file(name)
  if name:match '%.json$' then
    return kumo.serde.json_load(name)
  end
  return kumo.serde.toml_load(name)
end

-- One file's top level: `tenant`, `queue`, and the options.
local function add_file(data, loaded)
  for k, v in pairs(loaded) do
    if k == 'tenant' then
      merge_into(v, data.tenants)
    elseif k == 'queue' then
      merge_into(v, data.queues)
    else
      data.options[k] = v
    end
  end
end

-- A queue configuration option: a value, or the protocol table; the other
-- tables are the more specific sections (and require_authz lists).
local function is_option(k, v)
  return k == 'protocol' or type(v) ~= 'table'
end

local function options_of(section, into)
  for k, v in pairs(section or {}) do
    if is_option(k, v) then
      into[k] = v
    end
  end
  return into
end

local function resolve(data, domain, tenant, campaign)
  local params = options_of(data.queues.default, {})
  local d = domain and data.by_domain[domain]
  options_of(d, params)
  options_of(tenant and data.tenants[tenant], params)
  local t = d and tenant and d[tenant]
  if type(t) == 'table' then
    options_of(t, params)
    local c = campaign and t[campaign]
    if type(c) == 'table' then
      options_of(c, params)
    end
  end
  if next(params) == nil then
    return nil
  end
  return params
end

-- Every section that contributes options, so each is checked at load.
local function sections(data)
  local out = {}
  for name, t in pairs(data.tenants) do
    table.insert(out, { string.format("[tenant.'%s']", name), t })
  end
  for domain, d in pairs(data.queues) do
    table.insert(out, { string.format("[queue.'%s']", domain), d })
    for tenant, t in pairs(d) do
      if not is_option(tenant, t) then
        table.insert(out, { string.format("[queue.'%s'.'%s']", domain, tenant), t })
        for campaign, c in pairs(t) do
          if not is_option(campaign, c) then
            table.insert(out, {
              string.format("[queue.'%s'.'%s'.'%s']", domain, tenant, campaign),
              c,
            })
          end
        end
      end
    end
  end
  return out
end

local function check(data, files)
  local where = table.concat(files, ', ')
  if data.options.scheduling_header then
    error(
      string.format(
        'policy-extras.queue (%s): scheduling_header is not provided by amqp-relay '
          .. '(no scheduled sends: a message is delivered when its queue can take it)',
        where
      ),
      0
    )
  end
  for _, s in ipairs(sections(data)) do
    local name, section = s[1], s[2]
    local params = options_of(section, {})
    if params.egress_pool ~= nil then
      error(
        string.format(
          'policy-extras.queue (%s) %s: egress_pool is for SMTP delivery, which amqp-relay '
            .. 'does not do; remove it (queues deliver through their protocol)',
          where,
          name
        ),
        0
      )
    end
    local ok, err = pcall(kumo.make_queue_config, params)
    if not ok then
      local why = tostring(err):gsub('^runtime error: ', '')
      error(string.format('policy-extras.queue (%s) %s: %s', where, name, why), 0)
    end
  end
end

local function load(files)
  local data = { options = {}, tenants = {}, queues = {} }
  for _, name in ipairs(files) do
    add_file(data, load_file(name))
  end
  check(data, files)
  -- Exact domains, then the nearest '*.parent' wildcard.
  data.by_domain = kumo.domain_map.new(data.queues)
  return data
end

function mod:setup(file_names)
  return self:setup_with_options {
    skip_queue_config_hook = false,
    file_names = file_names,
  }
end

function mod:setup_with_options(options)
  if type(options) ~= 'table' or type(options.file_names) ~= 'table' then
    error('policy-extras.queue: expected a list of file names', 2)
  end
  local files = options.file_names
  local cached = { data = load(files), at = kumo.time.epoch_millis() }
  local function data()
    if kumo.time.since_millis(cached.at) >= RELOAD_MS then
      cached = { data = load(files), at = kumo.time.epoch_millis() }
    end
    return cached.data
  end

  local helper = { file_names = files }

  function helper:resolve_config(domain, tenant, campaign)
    return resolve(data(), domain, tenant, campaign)
  end

  if not options.skip_queue_config_hook then
    kumo.on('get_queue_config', function(domain, tenant, campaign, _routing_domain)
      local params = resolve(data(), domain, tenant, campaign)
      if params then
        return kumo.make_queue_config(params)
      end
    end)
  end

  function helper:apply(msg)
    local d = data()
    local opts = d.options
    if opts.campaign_header then
      local campaign = msg:get_first_named_header_value(opts.campaign_header)
      if campaign then
        msg:set_meta('campaign', campaign)
        if opts.remove_campaign_header then
          msg:remove_all_named_headers(opts.campaign_header)
        end
      end
    end
    local tenant, source
    if opts.tenant_header then
      tenant = msg:get_first_named_header_value(opts.tenant_header)
      if tenant then
        source = string.format("'%s' header", opts.tenant_header)
        if opts.remove_tenant_header then
          msg:remove_all_named_headers(opts.tenant_header)
        end
      end
    end
    if not tenant and opts.default_tenant then
      tenant = opts.default_tenant
      source = 'default_tenant option'
    end
    if not tenant then
      return
    end
    local def = d.tenants[tenant]
    if not def then
      kumo.reject(
        500,
        string.format("tenant '%s' specified by %s is not defined in your queue config", tenant, source)
      )
    end
    if def.require_authz then
      local who = msg:get_meta 'authz_id'
      if not who then
        kumo.reject(500, string.format("tenant '%s' requires SMTP AUTH", tenant))
      end
      local allowed = false
      for _, name in ipairs(def.require_authz) do
        allowed = allowed or name == who
      end
      if not allowed then
        kumo.reject(
          500,
          string.format("authz_id '%s' is not authorized to send as tenant '%s'", who, tenant)
        )
      end
    end
    msg:set_meta('tenant', tenant)
  end

  return helper
end

return mod
