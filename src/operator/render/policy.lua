-- Most specific route for a queue: tenant and campaign beat wildcards.
local function find(domain, tenant, campaign)
  local best, score = nil, -1
  for _, r in ipairs(ROUTES) do
    if r.domain == domain
      and (r.tenant == nil or r.tenant == tenant)
      and (r.campaign == nil or r.campaign == campaign) then
      local s = (r.tenant and 2 or 0) + (r.campaign and 1 or 0)
      if s > score then
        best, score = r, s
      end
    end
  end
  return best
end

local function parse_queue(name)
  local rest = name:match('^[^!]*')
  local campaign, after = rest:match('^([^:]*):(.*)$')
  if not campaign then
    after = rest
  end
  local tenant, domain = after:match('^(.*)@([^@]*)$')
  if not tenant then
    domain = after
  end
  if campaign == '' then campaign = nil end
  if tenant == '' then tenant = nil end
  return domain, tenant, campaign
end

-- Routes with logEvents take the relay's own log records through a log hook.
local HOOKS = {}
for _, r in ipairs(ROUTES) do
  if r.log_events then
    HOOKS[r.hook] = r
    local wanted = {}
    for _, t in ipairs(r.log_events.types) do
      wanted[t] = true
    end
    r.log_events.wanted = wanted
    kumo.on('pre_init', function()
      kumo.configure_log_hook { name = r.hook, headers = r.log_events.headers, meta = r.log_events.meta }
    end)
  end
end

-- A route's log hook takes the records of the queues it serves, and no
-- other tenant's, unless the install lets its namespace take all.
kumo.on('should_enqueue_log_record', function(msg, hook_name)
  local r = HOOKS[hook_name]
  if not r then
    return nil
  end
  local record = msg:get_meta 'log_record'
  if #r.log_events.types > 0 and not r.log_events.wanted[record.type] then
    return false
  end
  if not r.all_records and find(parse_queue(record.queue or '')) ~= r then
    return false
  end
  msg:set_meta('queue', r.queue_name)
  return true
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local r = find(domain, tenant, campaign)
  if not r then
    return nil
  end
  local q = {
    protocol = { custom_lua = { constructor = 'amqp-relay.route', batch_size = r.batch_size } },
  }
  for k, v in pairs(r.queue) do
    q[k] = v
  end
  return kumo.make_queue_config(q)
end)

kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  local r = find(parse_queue(site_name))
  if not r then
    return nil
  end
  return kumo.make_egress_path { connection_limit = r.connection_limit }
end)

-- The route's broker URLs, in order.
local function broker_urls(r)
  if r.urls then
    return r.urls
  end
  local out = {}
  for i, key in ipairs(r.url_keys) do
    local url = kumo.secret_load { key_path = SECRETS_DIR .. '/' .. key }
    out[i] = (url:gsub('%s+$', ''))
  end
  return out
end

-- A client of the first of urls[from..to] that connects, and its index.
local function connect(urls, tls, from, to)
  local errors = {}
  for i = from, to do
    local ok, client = pcall(kumo.amqp.build_client, urls[i], tls)
    if ok then
      return client, i
    end
    errors[#errors + 1] = tostring(client)
  end
  error(table.concat(errors, '; '), 0)
end

kumo.on('amqp-relay.route', function(domain, tenant, campaign)
  local r = find(domain, tenant, campaign)
  if not r then
    kumo.reject(451, '4.3.0 no AmqpRoute serves this queue now')
  end
  local urls = broker_urls(r)
  local tls = nil
  if r.ca_key then
    tls = { root_ca_cert = SECRETS_DIR .. '/' .. r.ca_key }
  end
  local client, current = connect(urls, tls, 1, #urls)
  local failback_at = os.time() + r.failback_seconds

  -- On a later URL, try the earlier ones again now and then, and move back
  -- to the first that answers.
  local function failback()
    if current == 1 or os.time() < failback_at then
      return
    end
    failback_at = os.time() + r.failback_seconds
    local ok, earlier, i = pcall(connect, urls, tls, 1, current - 1)
    if ok then
      client:close()
      client, current = earlier, i
    end
  end

  -- One argument table per connection, refilled per message: publish reads
  -- it before it returns, and building four tables per message fed the
  -- collector.
  local properties = {
    delivery_mode = r.persistent and 2 or 1,
    content_type = r.content_type,
    headers = r.headers,
  }
  local args = {
    exchange = r.exchange,
    routing_key = r.routing_key,
    options = { mandatory = r.mandatory },
    properties = properties,
  }
  local function publish(msg)
    properties.message_id = msg:id()
    args.payload = msg:get_data()
    local confirm = client:publish(args)
    args.payload = nil
    return confirm
  end

  -- nil when the broker took the message; else the reject code and text,
  -- and whether trying again at once may help (a nack the route retries: the
  -- broker refusing for now, as right after a failover; a returned message
  -- is a routing answer, not a moment's trouble).
  local function verdict(result)
    if result.status == 'Ack' and result.reply_code == nil then
      return nil
    end
    local how = r.on_nack
    if result.reply_code ~= nil then
      how = r.on_return
    end
    local code = 451
    if how == 'bounce' then
      code = 550
    end
    return code, kumo.json_encode(result), result.reply_code == nil and code == 451
  end

  -- A nack, or a connection lost mid-publish, is tried again promptly (on a
  -- fresh channel, or the next node that answers) after each of these
  -- pauses, well within the send timeout, before the message waits for its
  -- retry interval (KumoMTA's default: 20 minutes, meant for a broker that
  -- is down, not one that moved).
  local PROMPT = { 0.1, 0.25, 0.5, 1, 2, 4, 8 }

  local function reconnect()
    pcall(client.close, client)
    client, current = connect(urls, tls, 1, #urls)
    failback_at = os.time() + r.failback_seconds
  end

  -- Publishes msgs[i] for each i in todo, then waits for every confirm.
  -- Returns the indices to try again (nacked, or unconfirmed when the
  -- connection went), the worst final reject code and text, and the error
  -- that ended the round early, if one did.
  local function round(msgs, todo)
    local again, worst, worst_text = {}, nil, nil
    local settled = {}
    local ok, err = pcall(function()
      local confirms = {}
      for k, i in ipairs(todo) do
        confirms[k] = publish(msgs[i])
      end
      for k, c in ipairs(confirms) do
        local code, text, retry = verdict(c:wait())
        settled[k] = true
        if retry then
          again[#again + 1] = todo[k]
          worst_text = text
        elseif code and (worst == nil or code < worst) then
          worst, worst_text = code, text
        end
      end
    end)
    if not ok then
      -- What was not confirmed goes again (at-least-once).
      for k, i in ipairs(todo) do
        if not settled[k] then
          again[#again + 1] = i
        end
      end
    end
    return again, worst, worst_text, (not ok) and err or nil
  end

  -- One retry makes the batch retry (at-least-once); otherwise one bounce bounces it.
  local function deliver(msgs)
    failback()
    local todo = {}
    for i = 1, #msgs do
      todo[i] = i
    end
    local tries = 0
    while true do
      local again, worst, text, err = round(msgs, todo)
      if #again == 0 then
        if worst then
          kumo.reject(worst, text)
        end
        return
      end
      tries = tries + 1
      if tries > #PROMPT then
        if err then
          error(err, 0)
        end
        kumo.reject(451, text)
      end
      kumo.time.sleep(PROMPT[tries])
      if err then
        -- The next attempt says what is wrong if no node answers now.
        pcall(reconnect)
      end
      todo = again
    end
  end

  local sender = {}
  function sender:send(msg)
    deliver({ msg })
    return '250 Ack'
  end
  function sender:send_batch(msgs)
    deliver(msgs)
    return '250 Ack ' .. #msgs
  end
  function sender:close()
    client:close()
  end
  return sender
end)
