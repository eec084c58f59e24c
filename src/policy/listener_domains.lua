-- policy-extras.listener_domains, behaving as KumoMTA's helper does: which
-- domains SMTP clients outside relay_hosts may relay to or from, read from
-- TOML or JSON files.
--
--   local listener_domains = require 'policy-extras.listener_domains'
--   kumo.on('get_listener_domain',
--     listener_domains:setup { '/etc/amqp-relay/listener_domains.toml' })
--
-- A file's top-level keys are domains ('*.example.com' matches any
-- subdomain, '*' any domain); [listener."ADDR"."DOMAIN"] applies to one
-- listener. Each entry is what kumo.make_listener_domain takes, plus
-- relay_from_authz (AUTH identities that may relay from the domain).
-- Entries are checked when the policy loads (log_oob and log_arf are not
-- provided and fail it there); the files are read again every 5 minutes.
local kumo = require 'kumo'
local mod = {}

local RELOAD_MS = 5 * 60 * 1000

local function load_file(name)
  if name:match '%.json$' then
    return kumo.serde.json_load(name)
  end
  return kumo.serde.toml_load(name)
end

local function check_entry(where, entry)
  if type(entry) ~= 'table' then
    error(string.format('policy-extras.listener_domains %s: expected a table of options', where), 0)
  end
  local params = {}
  for k, v in pairs(entry) do
    if k ~= 'relay_from_authz' then
      params[k] = v
    end
  end
  local authz = entry.relay_from_authz
  if authz ~= nil then
    local ok = type(authz) == 'table'
    for _, v in pairs(ok and authz or {}) do
      ok = ok and type(v) == 'string'
    end
    if not ok then
      error(
        string.format('policy-extras.listener_domains %s: relay_from_authz must be a list of names', where),
        0
      )
    end
  end
  local ok, err = pcall(kumo.make_listener_domain, params)
  if not ok then
    local why = tostring(err):gsub('^runtime error: ', '')
    error(string.format('policy-extras.listener_domains %s: %s', where, why), 0)
  end
end

local function add(by_listener, listener, domain, entry, file)
  check_entry(string.format("(%s) ['%s'] on listener '%s'", file, domain, listener), entry)
  by_listener[listener] = by_listener[listener] or {}
  local target = by_listener[listener][domain] or {}
  for k, v in pairs(entry) do
    target[k] = v
  end
  by_listener[listener][domain] = target
end

local function load(files)
  local by_listener = {}
  for _, file in ipairs(files) do
    local data = load_file(file)
    for listener, domains in pairs(data.listener or {}) do
      for domain, entry in pairs(domains) do
        add(by_listener, listener, domain, entry, file)
      end
    end
    for domain, entry in pairs(data) do
      if domain ~= 'listener' then
        add(by_listener, '*', domain, entry, file)
      end
    end
  end
  -- Exact domains, then the nearest '*.parent' wildcard.
  local compiled = {}
  for listener, domains in pairs(by_listener) do
    compiled[listener] = kumo.domain_map.new(domains)
  end
  return compiled
end

local function peer_ip(received_from)
  local v6 = received_from:match '^%[(.*)%]:%d+$'
  return v6 or received_from:match '^(.*):%d+$' or received_from
end

local function make(entry, conn_meta)
  local params = {}
  for k, v in pairs(entry) do
    if k ~= 'relay_from_authz' then
      params[k] = v
    end
  end
  local authz = conn_meta:get_meta 'authz_id'
  for _, name in ipairs(entry.relay_from_authz or {}) do
    if authz and name == authz then
      params.relay_from = { peer_ip(conn_meta:get_meta 'received_from') }
    end
  end
  return kumo.make_listener_domain(params)
end

function mod:setup(data_files)
  if mod.CONFIGURED then
    error('listener_domains module has already been configured', 2)
  end
  if type(data_files) ~= 'table' then
    error('policy-extras.listener_domains: expected a list of file names', 2)
  end
  local cached = { data = load(data_files), at = kumo.time.epoch_millis() }
  mod.CONFIGURED = { data_files = data_files }
  return function(domain, listener, conn_meta)
    if kumo.time.since_millis(cached.at) >= RELOAD_MS then
      cached = { data = load(data_files), at = kumo.time.epoch_millis() }
    end
    local by_listener = cached.data
    local mine, any = by_listener[listener], by_listener['*']
    local entry = (mine and mine[domain]) or (any and (any[domain] or any['*']))
    if entry then
      return make(entry, conn_meta)
    end
  end
end

return mod
