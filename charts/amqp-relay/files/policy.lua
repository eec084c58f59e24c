-- Base policy of an amqp-relay pod (from the Helm chart). Settings arrive as
-- environment variables, so no chart value is ever spliced into Lua code.
-- Routes come from the operator's ConfigMap, mounted as a directory.
local kumo = require 'kumo'

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == '' then
    return default
  end
  return v
end

local function list(name)
  local out = {}
  for item in string.gmatch(env(name, ''), '[^,%s]+') do
    table.insert(out, item)
  end
  return out
end

-- Credentials live in mounted Secrets (username, password files), read at
-- each check so a rotated Secret takes effect without a restart.
local AUTH_DIR = env('AMQP_RELAY_AUTH_DIR', nil)

local function credential(which)
  if not AUTH_DIR then
    return nil
  end
  local ok_user, user = pcall(kumo.secret_load, { key_path = AUTH_DIR .. '/' .. which .. '/username' })
  local ok_pass, pass = pcall(kumo.secret_load, { key_path = AUTH_DIR .. '/' .. which .. '/password' })
  if not (ok_user and ok_pass) then
    return nil
  end
  return (string.gsub(user, '%s+$', '')), pass
end

-- Compared as digests: the time a comparison takes says nothing of how
-- much of the password was right.
local function same(a, b)
  return kumo.digest.sha256(a).hex == kumo.digest.sha256(b).hex
end

local function matches(which, user, password)
  local want_user, want_password = credential(which)
  return want_user ~= nil and password ~= '' and user == want_user and same(password, want_password)
end

-- A user name is either the admin's or the injector's, never both: each
-- password unlocks only its own role.
kumo.on('http_server_validate_auth_basic', function(user, password)
  local admin_user = credential 'admin'
  if user == admin_user then
    return matches('admin', user, password)
  end
  return matches('inject', user, password)
end)

kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
  return authz == authc and matches('inject', authc, password)
end)

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = env('AMQP_RELAY_SPOOL', '/var/spool/amqp-relay') }
  local admin_user = credential 'admin'
  local inject_user = credential 'inject'
  if admin_user ~= nil and admin_user == inject_user then
    error('the inject and admin credentials have the same user name (' .. admin_user
      .. '): give them different names, or the inject password would administer', 0)
  end
  kumo.start_http_listener {
    listen = env('AMQP_RELAY_HTTP_LISTEN', '0.0.0.0:8000'),
    trusted_hosts = list 'AMQP_RELAY_TRUSTED_HOSTS',
    admin_users = { admin_user },
  }
  local smtp = env('AMQP_RELAY_SMTP_LISTEN', nil)
  if smtp then
    local listener = {
      listen = smtp,
      hostname = env('AMQP_RELAY_SMTP_HOSTNAME', env('HOSTNAME', 'amqp-relay')),
      relay_hosts = list 'AMQP_RELAY_SMTP_RELAY_HOSTS',
      max_message_size = tonumber(env('AMQP_RELAY_SMTP_MAX_MESSAGE_SIZE', '20971520')),
      max_connections = tonumber(env('AMQP_RELAY_SMTP_MAX_CONNECTIONS', '1024')),
      max_data_memory = env('AMQP_RELAY_SMTP_MAX_DATA_MEMORY', '64MiB'),
      allow_auth_without_tls = env('AMQP_RELAY_SMTP_AUTH_WITHOUT_TLS', 'false') == 'true',
    }
    local cert = env('AMQP_RELAY_SMTP_TLS_CERT', nil)
    if cert then
      listener.tls_certificate = cert
      listener.tls_private_key = env('AMQP_RELAY_SMTP_TLS_KEY', nil)
    end
    kumo.start_esmtp_listener(listener)
  end
  local logs = env('AMQP_RELAY_LOCAL_LOGS', nil)
  if logs then
    kumo.configure_local_logs { log_dir = logs, max_segment_duration = '5m', compression_level = 3 }
  end
end)

-- The operator's rendered routes. Until the first AmqpRoute is applied the
-- ConfigMap is absent: the relay runs, and refuses mail it cannot route.
package.path = env('AMQP_RELAY_ROUTES_DIR', '/etc/amqp-relay/routes-policy') .. '/?.lua;' .. package.path
local ok, err = pcall(require, 'routes')
if not ok and not string.find(tostring(err), "module 'routes' not found", 1, true) then
  error(err, 0)
end
