//! AmqpRoutes (and the Secrets they name) → one Lua policy plus one Secret of
//! credentials, as pure functions. Bad routes are left out with a reason;
//! two routes for one queue: the older wins. Output is sorted and stable.

use super::crd::{AmqpRoute, Disposition};
use super::lua_literal::{lua_str, lua_value};
use super::ownership::Ownership;
use crate::model::config::{Rate, parse_duration};
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;
use std::fmt::Write;

pub use crate::policy::overlay::DEFAULT_SECRETS_DIR;
pub const POLICY_KEY: &str = "routes.lua";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
pub struct Rendered {
    pub policy: String,
    /// Secret key → value (broker URLs with credentials).
    pub secret: BTreeMap<String, Vec<u8>>,
    /// Content hash of policy and secret together.
    pub hash: String,
    pub accepted: Vec<RouteId>,
    pub rejected: Vec<(RouteId, Rejected)>,
    /// Each accepted route's version: a digest of its ROUTES entry and of
    /// the source Secrets' versions, also written into the policy's header.
    pub digests: BTreeMap<RouteId, String>,
    /// The keys of `secret` each accepted route reads.
    pub route_keys: BTreeMap<RouteId, Vec<String>>,
}

/// The policy's header line that lists its routes' digests (JSON).
pub const DIGESTS_PREFIX: &str = "-- amqprelay.io/route-digests: ";

/// The route digests a rendered policy lists, by `namespace/name`.
pub fn route_digests(policy: &str) -> BTreeMap<String, String> {
    policy
        .lines()
        .take(4)
        .find_map(|l| l.strip_prefix(DIGESTS_PREFIX))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// Why a route was left out: `reason` is a CamelCase word for the condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejected {
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn route_id(r: &AmqpRoute) -> RouteId {
    RouteId {
        namespace: r
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: r.metadata.name.clone().unwrap_or_default(),
    }
}

/// A route that passed validation, ready to render.
struct Valid<'a> {
    id: RouteId,
    route: &'a AmqpRoute,
    domain: String,
    url: Url,
    /// CA certificate (PEM) for an amqps:// broker, with its key in the rendered Secret.
    ca: Option<(String, Vec<u8>)>,
}

enum Url {
    Plain(String),
    /// Key in the rendered Secret, and the value to put there.
    Secret(String, Vec<u8>),
}

/// The label a Secret carries for the operator to read it; no other Secret
/// is ever listed or cached.
pub const CREDENTIALS_LABEL: &str = "amqprelay.io/credentials";

fn find_secret<'a>(secrets: &'a [Secret], ns: &str, name: &str) -> Option<&'a Secret> {
    secrets.iter().find(|s| {
        s.metadata.name.as_deref() == Some(name)
            && s.metadata.namespace.as_deref().unwrap_or("default") == ns
    })
}

fn secret_value(s: &Secret, key: &str) -> Option<Vec<u8>> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.clone().into_bytes())
        })
}

fn check_name(what: &str, v: &str, forbidden: &[char]) -> Result<(), String> {
    if v.is_empty() || v.len() > 253 {
        return Err(format!("{what} must be 1 to 253 characters"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| forbidden.contains(c) || c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{what} {v:?} contains {c:?}, which a queue name cannot hold"
        ));
    }
    Ok(())
}

fn validate<'a>(r: &'a AmqpRoute, secrets: &[Secret]) -> Result<Valid<'a>, String> {
    let id = route_id(r);
    let spec = &r.spec;
    let m = &spec.route_match;
    check_name("match.domain", &m.domain, &['@', ':', '!'])?;
    if let Some(t) = &m.tenant {
        check_name("match.tenant", t, &['@', ':', '!'])?;
    }
    if let Some(c) = &m.campaign {
        check_name("match.campaign", c, &[':', '!'])?;
    }
    let p = &spec.publish;
    if p.routing_key.len() > 255 {
        return Err(format!(
            "publish.routingKey is {} bytes; AMQP allows 255",
            p.routing_key.len()
        ));
    }
    if p.exchange.len() > 255 {
        return Err("publish.exchange is longer than 255 bytes".into());
    }
    if let Some(ct) = &p.content_type
        && (ct.is_empty() || ct.len() > 255)
    {
        return Err("publish.contentType must be 1 to 255 bytes".into());
    }
    for k in p.headers.keys() {
        if k.is_empty() || k.len() > 255 {
            return Err(format!(
                "publish.headers: name {k:?} must be 1 to 255 bytes"
            ));
        }
    }
    let d = &spec.delivery;
    for (key, v) in [
        ("retryInterval", &d.retry_interval),
        ("maxRetryInterval", &d.max_retry_interval),
        ("maxAge", &d.max_age),
    ] {
        if let Some(v) = v {
            let dur = parse_duration(v).map_err(|e| format!("delivery.{key}: {e}"))?;
            if key == "retryInterval" && dur.is_zero() {
                return Err("delivery.retryInterval must be more than 0".into());
            }
        }
    }
    if let Some(rate) = &d.max_message_rate {
        Rate::parse(rate).map_err(|e| format!("delivery.maxMessageRate: {e}"))?;
    }
    if let Some(n) = d.connection_limit
        && !(1..=1024).contains(&n)
    {
        return Err("delivery.connectionLimit must be 1 to 1024".into());
    }
    if let Some(n) = d.batch_size
        && !(1..=1000).contains(&n)
    {
        return Err("delivery.batchSize must be 1 to 1000".into());
    }
    if let Some(le) = &spec.log_events {
        const TYPES: &[&str] = &[
            "Reception",
            "Delivery",
            "TransientFailure",
            "Bounce",
            "Expiration",
            "AdminBounce",
        ];
        if let Some(t) = le.types.iter().find(|t| !TYPES.contains(&t.as_str())) {
            return Err(format!(
                "logEvents.types: unknown record type {t:?} (expected one of {})",
                TYPES.join(", ")
            ));
        }
    }
    let url = match (&spec.broker.url, &spec.broker.url_secret_ref) {
        (Some(_), Some(_)) | (None, None) => {
            return Err("broker: set exactly one of url and urlSecretRef".into());
        }
        (Some(u), None) => {
            check_url(u)?;
            let authority = u
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("");
            if authority.contains('@') {
                return Err(
                    "broker.url must not hold credentials; put the URL in a Secret and use urlSecretRef".into(),
                );
            }
            Url::Plain(u.clone())
        }
        (None, Some(sr)) => {
            let s = find_secret(secrets, &id.namespace, &sr.name).ok_or_else(|| {
                format!(
                    "broker.urlSecretRef: Secret {}/{} not found (the operator reads only Secrets labeled {CREDENTIALS_LABEL}=true)",
                    id.namespace, sr.name
                )
            })?;
            let v = secret_value(s, &sr.key).ok_or_else(|| {
                format!(
                    "broker.urlSecretRef: Secret {}/{} has no key {:?}",
                    id.namespace, sr.name, sr.key
                )
            })?;
            let text = std::str::from_utf8(&v)
                .map_err(|_| "broker.urlSecretRef: the value is not UTF-8 text".to_string())?;
            // Say what is wrong without echoing the value: it may hold a password.
            check_url(text.trim()).map_err(|_| {
                format!(
                    "broker.urlSecretRef: Secret {}/{} key {:?} does not hold an amqp:// URL",
                    id.namespace, sr.name, sr.key
                )
            })?;
            Url::Secret(
                format!("{}.{}.url", id.namespace, id.name),
                text.trim().as_bytes().to_vec(),
            )
        }
    };
    let tls_url = match &url {
        Url::Plain(u) => u.starts_with("amqps://"),
        Url::Secret(_, v) => v.starts_with(b"amqps://"),
    };
    let ca = match &spec.broker.tls {
        None => None,
        Some(_) if !tls_url => {
            return Err("broker.tls needs an amqps:// URL".into());
        }
        Some(tls) => {
            let sr = &tls.ca_secret_ref;
            let s = find_secret(secrets, &id.namespace, &sr.name).ok_or_else(|| {
                format!(
                    "broker.tls.caSecretRef: Secret {}/{} not found (the operator reads only Secrets labeled {CREDENTIALS_LABEL}=true)",
                    id.namespace, sr.name
                )
            })?;
            let pem = secret_value(s, &sr.key).ok_or_else(|| {
                format!(
                    "broker.tls.caSecretRef: Secret {}/{} has no key {:?}",
                    id.namespace, sr.name, sr.key
                )
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "broker.tls.caSecretRef: Secret {}/{} key {:?} holds no PEM certificate",
                    id.namespace, sr.name, sr.key
                ));
            }
            Some((format!("{}.{}.ca", id.namespace, id.name), pem))
        }
    };
    Ok(Valid {
        domain: m.domain.to_ascii_lowercase(),
        id,
        route: r,
        url,
        ca,
    })
}

fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("amqp://")
        .or_else(|| u.strip_prefix("amqps://"))
        .unwrap_or("");
    if rest.is_empty() {
        return Err(format!(
            "broker.url {u:?} must start with amqp:// or amqps://"
        ));
    }
    if u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("broker.url must not contain spaces or control characters".into());
    }
    Ok(())
}

fn created(r: &AmqpRoute) -> Option<&k8s_openapi::jiff::Timestamp> {
    r.metadata.creation_timestamp.as_ref().map(|t| &t.0)
}

/// Renders the policy for every route given (the set one relay serves).
pub fn render(routes: &[AmqpRoute], secrets: &[Secret], secrets_dir: &str) -> Rendered {
    render_owned(routes, secrets, secrets_dir, &Ownership::default())
}

/// As `render`, with domain ownership rules: a route whose namespace may not
/// claim its domain is refused (`DomainNotAllowed`) before any conflict.
pub fn render_owned(
    routes: &[AmqpRoute],
    secrets: &[Secret],
    secrets_dir: &str,
    ownership: &Ownership,
) -> Rendered {
    let mut rejected = Vec::new();
    let mut valid = Vec::new();
    for r in routes {
        let id = route_id(r);
        if let Err(rule) = ownership.allows(&id.namespace, &r.spec.route_match.domain) {
            rejected.push((
                id,
                Rejected {
                    reason: "DomainNotAllowed",
                    message: rule,
                },
            ));
            continue;
        }
        match validate(r, secrets) {
            Ok(v) => valid.push(v),
            Err(message) => rejected.push((
                route_id(r),
                Rejected {
                    reason: "Invalid",
                    message,
                },
            )),
        }
    }
    // Older first (then by name), so the first route for a queue wins.
    valid.sort_by(|a, b| {
        created(a.route)
            .cmp(&created(b.route))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut by_queue: BTreeMap<(String, Option<String>, Option<String>), Valid> = BTreeMap::new();
    for v in valid {
        let m = &v.route.spec.route_match;
        let key = (v.domain.clone(), m.tenant.clone(), m.campaign.clone());
        if let Some(winner) = by_queue.get(&key) {
            rejected.push((
                v.id.clone(),
                Rejected {
                    reason: "Conflict",
                    message: format!(
                        "route {} already serves this queue (the older route wins)",
                        winner.id
                    ),
                },
            ));
        } else {
            by_queue.insert(key, v);
        }
    }
    rejected.sort();

    let mut secret = BTreeMap::new();
    let mut routes_lua = String::new();
    let mut accepted = Vec::new();
    let mut digests = BTreeMap::new();
    let mut route_keys = BTreeMap::new();
    for v in by_queue.values() {
        accepted.push(v.id.clone());
        let start = routes_lua.len();
        render_route(&mut routes_lua, v, &mut secret);
        let mut versioned = routes_lua.as_bytes()[start..].to_vec();
        for source in secret_sources(v, secrets) {
            versioned.push(0);
            versioned.extend_from_slice(source.as_bytes());
        }
        let digest = crate::policy::content_hash(&versioned)[..16].to_owned();
        digests.insert(v.id.clone(), digest);
        let keys = match &v.url {
            Url::Secret(k, _) => vec![k.clone()],
            Url::Plain(_) => vec![],
        };
        let keys = keys.into_iter().chain(v.ca.iter().map(|(k, _)| k.clone()));
        route_keys.insert(v.id.clone(), keys.collect());
    }
    accepted.sort();
    let listed: BTreeMap<String, &String> =
        digests.iter().map(|(id, d)| (id.to_string(), d)).collect();
    let mut lua = String::new();
    let _ = writeln!(
        lua,
        "-- Generated by amqp-relay from {} AmqpRoute(s). Do not edit.",
        by_queue.len()
    );
    let _ = writeln!(
        lua,
        "{DIGESTS_PREFIX}{}",
        serde_json::to_string(&listed).expect("strings serialise")
    );
    let _ = writeln!(lua, "local kumo = require 'kumo'");
    let _ = writeln!(lua, "local SECRETS_DIR = {}", lua_str(secrets_dir));
    let _ = writeln!(lua, "local ROUTES = {{");
    lua.push_str(&routes_lua);
    let _ = writeln!(lua, "}}");
    lua.push_str(POLICY_BODY);
    let hash = published_hash(&lua, &secret, &by_queue, secrets);
    Rendered {
        policy: lua,
        secret,
        hash,
        accepted,
        rejected,
        digests,
        route_keys,
    }
}

/// The Secrets a route's credentials come from, by uid and resourceVersion:
/// their versions, never their values.
fn secret_sources(v: &Valid, secrets: &[Secret]) -> Vec<String> {
    let b = &v.route.spec.broker;
    let refs = b
        .url_secret_ref
        .iter()
        .chain(b.tls.iter().map(|t| &t.ca_secret_ref));
    refs.filter_map(|r| {
        let s = find_secret(secrets, &v.id.namespace, &r.name)?;
        Some(format!(
            "{}/{}/{}@{}/{}",
            v.id.namespace,
            r.name,
            r.key,
            s.metadata.uid.as_deref().unwrap_or(""),
            s.metadata.resource_version.as_deref().unwrap_or("")
        ))
    })
    .collect()
}

/// Changes whenever the policy or a credential it uses changes, and reveals
/// nothing about the credentials (status and annotations show it to every
/// tenant): it covers the policy, the rendered Secret's keys, and the uid and
/// resourceVersion of each source Secret, never a value.
fn published_hash(
    policy: &str,
    rendered: &BTreeMap<String, Vec<u8>>,
    routes: &BTreeMap<(String, Option<String>, Option<String>), Valid>,
    secrets: &[Secret],
) -> String {
    let sources: std::collections::BTreeSet<String> = routes
        .values()
        .flat_map(|v| secret_sources(v, secrets))
        .collect();
    let mut all = policy.as_bytes().to_vec();
    for k in rendered.keys().chain(sources.iter()) {
        all.push(0);
        all.extend_from_slice(k.as_bytes());
    }
    crate::policy::content_hash(&all)
}

/// One route as the rendered policy's ROUTES table holds it: plain data,
/// written out through `lua_value`, so no value is ever Lua code.
#[derive(serde::Serialize)]
struct LuaRoute<'a> {
    id: String,
    generation: i64,
    domain: &'a str,
    tenant: Option<&'a str>,
    campaign: Option<&'a str>,
    /// The broker URL, when it holds no credentials.
    url: Option<&'a str>,
    /// Else the key of the rendered Secret that holds it.
    url_key: Option<&'a str>,
    ca_key: Option<&'a str>,
    exchange: &'a str,
    routing_key: &'a str,
    persistent: bool,
    mandatory: bool,
    content_type: Option<&'a str>,
    headers: &'a BTreeMap<String, String>,
    on_nack: &'static str,
    on_return: &'static str,
    hook: Option<String>,
    queue_name: Option<String>,
    log_events: Option<LuaLogEvents<'a>>,
    batch_size: u32,
    connection_limit: u32,
    /// make_queue_config keys, as the route's delivery section sets them.
    queue: BTreeMap<&'static str, &'a str>,
}

#[derive(serde::Serialize)]
struct LuaLogEvents<'a> {
    types: &'a [String],
    headers: &'a [String],
    meta: &'a [String],
}

fn disposition(x: Disposition) -> &'static str {
    match x {
        Disposition::Retry => "retry",
        Disposition::Bounce => "bounce",
    }
}

fn lua_route<'a>(v: &'a Valid) -> LuaRoute<'a> {
    let spec = &v.route.spec;
    let (p, d, m) = (&spec.publish, &spec.delivery, &spec.route_match);
    let (url, url_key) = match &v.url {
        Url::Plain(u) => (Some(u.as_str()), None),
        Url::Secret(key, _) => (None, Some(key.as_str())),
    };
    let queue = [
        ("retry_interval", &d.retry_interval),
        ("max_retry_interval", &d.max_retry_interval),
        ("max_age", &d.max_age),
        ("max_message_rate", &d.max_message_rate),
    ]
    .into_iter()
    .filter_map(|(k, val)| val.as_deref().map(|val| (k, val)))
    .collect();
    let log = spec.log_events.as_ref();
    LuaRoute {
        id: v.id.to_string(),
        generation: v.route.metadata.generation.unwrap_or(0),
        domain: &v.domain,
        tenant: m.tenant.as_deref(),
        campaign: m.campaign.as_deref(),
        url,
        url_key,
        ca_key: v.ca.as_ref().map(|(k, _)| k.as_str()),
        exchange: &p.exchange,
        routing_key: &p.routing_key,
        persistent: p.persistent,
        mandatory: p.mandatory,
        content_type: p.content_type.as_deref(),
        headers: &p.headers,
        on_nack: disposition(p.on_nack),
        on_return: disposition(p.on_return),
        hook: log.map(|_| format!("route.{}.{}", v.id.namespace, v.id.name)),
        queue_name: log.map(|_| {
            crate::model::queue_name::QueueName::new(
                &v.domain,
                m.tenant.as_deref(),
                m.campaign.as_deref(),
                None,
            )
            .to_string()
        }),
        log_events: log.map(|le| LuaLogEvents {
            types: &le.types,
            headers: &le.headers,
            meta: &le.meta,
        }),
        batch_size: d.batch_size.unwrap_or(1),
        connection_limit: d.connection_limit.unwrap_or(32),
        queue,
    }
}

/// Appends the route's ROUTES entry and puts its credentials in `secret`.
fn render_route(lua: &mut String, v: &Valid, secret: &mut BTreeMap<String, Vec<u8>>) {
    if let Url::Secret(key, value) = &v.url {
        secret.insert(key.clone(), value.clone());
    }
    if let Some((key, pem)) = &v.ca {
        secret.insert(key.clone(), pem.clone());
    }
    let value = serde_json::to_value(lua_route(v)).expect("a route serialises to JSON");
    lua.push_str("  ");
    lua.push_str(&lua_value(&value, "  "));
    lua.push_str(",\n");
}

/// The fixed part of every rendered policy: it reads ROUTES as data.
const POLICY_BODY: &str = r#"
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

kumo.on('should_enqueue_log_record', function(msg, hook_name)
  local r = HOOKS[hook_name]
  if not r then
    return nil
  end
  local record = msg:get_meta 'log_record'
  if #r.log_events.types > 0 and not r.log_events.wanted[record.type] then
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

kumo.on('amqp-relay.route', function(domain, tenant, campaign)
  local r = find(domain, tenant, campaign)
  if not r then
    kumo.reject(451, '4.3.0 no AmqpRoute serves this queue now')
  end
  local url = r.url
  if not url then
    url = kumo.secret_load { key_path = SECRETS_DIR .. '/' .. r.url_key }
    url = url:gsub('%s+$', '')
  end
  local tls = nil
  if r.ca_key then
    tls = { root_ca_cert = SECRETS_DIR .. '/' .. r.ca_key }
  end
  local client = kumo.amqp.build_client(url, tls)

  local function publish(msg)
    local headers = {}
    for k, v in pairs(r.headers) do
      headers[k] = v
    end
    return client:publish {
      exchange = r.exchange,
      routing_key = r.routing_key,
      payload = msg:get_data(),
      options = { mandatory = r.mandatory },
      properties = {
        delivery_mode = r.persistent and 2 or 1,
        content_type = r.content_type,
        message_id = msg:id(),
        headers = headers,
      },
    }
  end

  -- nil when the broker took the message; else the reject code and text.
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
    return code, kumo.json_encode(result)
  end

  local sender = {}
  function sender:send(msg)
    local code, text = verdict(publish(msg):wait())
    if code then
      kumo.reject(code, text)
    end
    return '250 Ack'
  end
  -- Publish the whole batch, then wait for every confirm. One retry makes the
  -- batch retry (at-least-once); otherwise one bounce bounces it.
  function sender:send_batch(msgs)
    local confirms = {}
    for i, msg in ipairs(msgs) do
      confirms[i] = publish(msg)
    end
    local worst, worst_text = nil, nil
    for _, c in ipairs(confirms) do
      local code, text = verdict(c:wait())
      if code and (worst == nil or code < worst) then
        worst, worst_text = code, text
      end
    end
    if worst then
      kumo.reject(worst, worst_text)
    end
    return '250 Ack ' .. #msgs
  end
  function sender:close()
    client:close()
  end
  return sender
end)
"#;

#[cfg(test)]
mod tests;
