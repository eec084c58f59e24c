//! AmqpRoutes (and the Secrets they name) → one Lua policy plus one Secret of
//! credentials, as pure functions. Bad routes are left out with a reason;
//! two routes for one queue: the older wins. Output is sorted and stable.

mod broker;
pub mod cluster;
mod store;
mod validate;

use super::crd::{AmqpRoute, Disposition};
use super::lua_literal::{lua_str, lua_value};
use super::ownership::Ownership;
use broker::Urls;
use cluster::Clusters;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;
use std::fmt::Write;
use store::Store;
use validate::{Valid, validate};

pub use broker::CREDENTIALS_LABEL;
pub use store::OBJECT_LIMIT;

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

fn created(r: &AmqpRoute) -> Option<&k8s_openapi::jiff::Timestamp> {
    r.metadata.creation_timestamp.as_ref().map(|t| &t.0)
}

/// Renders the policy for every route given (the set one relay serves).
pub fn render(routes: &[AmqpRoute], secrets: &[Secret], secrets_dir: &str) -> Rendered {
    render_owned(
        routes,
        secrets,
        &Clusters::default(),
        secrets_dir,
        &Ownership::default(),
    )
}

fn reject(id: RouteId, reason: &'static str, message: String) -> (RouteId, Rejected) {
    (id, Rejected { reason, message })
}

/// The routes that may serve their queues: valid, allowed their domain, and
/// the oldest for their queue. Older first (then by name).
fn admit<'a>(
    routes: &'a [AmqpRoute],
    secrets: &[Secret],
    clusters: &Clusters,
    ownership: &Ownership,
    rejected: &mut Vec<(RouteId, Rejected)>,
) -> Vec<Valid<'a>> {
    let mut valid = Vec::new();
    for r in routes {
        let id = route_id(r);
        if let Err(rule) = ownership.allows(&id.namespace, &r.spec.route_match.domain) {
            rejected.push(reject(id, "DomainNotAllowed", rule));
            continue;
        }
        match validate(r, secrets, clusters) {
            Ok(v) => valid.push(v),
            Err(message) => rejected.push(reject(id, "Invalid", message)),
        }
    }
    valid.sort_by(|a, b| {
        created(a.route)
            .cmp(&created(b.route))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut winners: BTreeMap<(String, Option<String>, Option<String>), RouteId> = BTreeMap::new();
    valid.retain(|v| {
        let m = &v.route.spec.route_match;
        let key = (v.domain.clone(), m.tenant.clone(), m.campaign.clone());
        match winners.get(&key) {
            Some(winner) => {
                rejected.push(reject(
                    v.id.clone(),
                    "Conflict",
                    format!("route {winner} already serves this queue (the older route wins)"),
                ));
                false
            }
            None => {
                winners.insert(key, v.id.clone());
                true
            }
        }
    });
    valid
}

/// One route's part of the output.
struct Entry {
    id: RouteId,
    lua: String,
    digest: String,
    keys: Vec<String>,
    /// The versions of the Secrets it reads (`broker::sources`).
    sources: Vec<String>,
}

/// As `render`, with domain ownership rules: a route whose namespace may not
/// claim its domain is refused (`DomainNotAllowed`) before any conflict.
/// Routes are added oldest first while the ConfigMap and the Secret stay
/// within the API's 1 MiB; the younger ones that do not fit are `TooLarge`.
pub fn render_owned(
    routes: &[AmqpRoute],
    secrets: &[Secret],
    clusters: &Clusters,
    secrets_dir: &str,
    ownership: &Ownership,
) -> Rendered {
    let inputs = Inputs {
        secrets,
        clusters,
        secrets_dir,
        ownership,
    };
    render_within(routes, &inputs, OBJECT_LIMIT)
}

/// What routes are rendered with.
struct Inputs<'a> {
    secrets: &'a [Secret],
    clusters: &'a Clusters,
    secrets_dir: &'a str,
    ownership: &'a Ownership,
}

fn render_within(routes: &[AmqpRoute], inputs: &Inputs, limit: usize) -> Rendered {
    let Inputs {
        secrets,
        clusters,
        secrets_dir,
        ownership,
    } = *inputs;
    let mut rejected = Vec::new();
    let admitted = admit(routes, secrets, clusters, ownership, &mut rejected);
    let mut store = Store::default();
    let mut entries: Vec<Entry> = Vec::new();
    // What the policy costs beyond its routes; the digest key's room in the Secret.
    let mut policy_size = POLICY_KEY.len() + assemble(&[], secrets_dir).len() + 32;
    let secret_room = limit.saturating_sub(256);
    for v in &admitted {
        let mark = store.mark();
        let entry = render_route(v, inputs, &mut store);
        // Its ROUTES entry and its line in the digests header.
        let cost = entry.lua.len() + entry.id.to_string().len() + entry.digest.len() + 6;
        if policy_size + cost > limit || store.size() > secret_room {
            store.undo(mark);
            let what = if store.size() > secret_room {
                "Secret"
            } else {
                "ConfigMap"
            };
            rejected.push(reject(
                v.id.clone(),
                "TooLarge",
                format!(
                    "with this route the relay's routes {what} would pass the API's {} KiB limit; older routes keep their place (shrink this route's headers or CA, or serve it from another relay)",
                    limit / 1024
                ),
            ));
            continue;
        }
        policy_size += cost;
        entries.push(entry);
    }
    rejected.sort();
    let policy = assemble(&entries, secrets_dir);
    debug_assert!(POLICY_KEY.len() + policy.len() <= limit);
    let hash = published_hash(&policy, &store, &entries);
    let mut accepted: Vec<RouteId> = entries.iter().map(|e| e.id.clone()).collect();
    accepted.sort();
    Rendered {
        policy,
        secret: store.into_data(),
        hash,
        accepted,
        rejected,
        digests: entries
            .iter()
            .map(|e| (e.id.clone(), e.digest.clone()))
            .collect(),
        route_keys: entries.into_iter().map(|e| (e.id, e.keys)).collect(),
    }
}

/// The policy: a header listing each route's digest, ROUTES as data, then
/// the fixed Lua that reads it.
fn assemble(entries: &[Entry], secrets_dir: &str) -> String {
    let listed: BTreeMap<String, &String> = entries
        .iter()
        .map(|e| (e.id.to_string(), &e.digest))
        .collect();
    let mut lua = String::new();
    let _ = writeln!(
        lua,
        "-- Generated by amqp-relay from {} AmqpRoute(s). Do not edit.",
        entries.len()
    );
    let _ = writeln!(
        lua,
        "{DIGESTS_PREFIX}{}",
        serde_json::to_string(&listed).expect("strings serialise")
    );
    let _ = writeln!(lua, "local kumo = require 'kumo'");
    let _ = writeln!(lua, "local SECRETS_DIR = {}", lua_str(secrets_dir));
    let _ = writeln!(lua, "local ROUTES = {{");
    for e in entries {
        lua.push_str(&e.lua);
    }
    let _ = writeln!(lua, "}}");
    lua.push_str(POLICY_BODY);
    lua
}

/// Changes whenever the policy or a credential it uses changes, and reveals
/// nothing about the credentials (status and annotations show it to every
/// tenant): it covers the policy, the rendered Secret's keys, and the uid and
/// resourceVersion of each source Secret, never a value.
fn published_hash(policy: &str, store: &Store, entries: &[Entry]) -> String {
    let sources: std::collections::BTreeSet<&String> =
        entries.iter().flat_map(|e| &e.sources).collect();
    let mut all = policy.as_bytes().to_vec();
    for k in store.keys().chain(sources) {
        all.push(0);
        all.extend_from_slice(k.as_bytes());
    }
    crate::model::digest::plain(&all)
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
    /// The broker URLs in order, when they hold no credentials.
    urls: Option<&'a [String]>,
    /// Else the keys of the rendered Secret that hold them.
    url_keys: Option<Vec<String>>,
    ca_key: Option<String>,
    failback_seconds: u64,
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
    /// Its `logEvents` take every queue's records (a namespace the install
    /// names), not only those of the queues it serves.
    all_records: bool,
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

/// The keys of the Secret a route reads.
struct Keys {
    urls: Option<Vec<String>>,
    ca: Option<String>,
}

fn lua_route<'a>(v: &'a Valid, keys: &Keys, ownership: &Ownership) -> LuaRoute<'a> {
    let spec = &v.route.spec;
    let (p, d, m) = (&spec.publish, &spec.delivery, &spec.route_match);
    let urls = match &v.broker.urls {
        Urls::Plain(u) => Some(u.as_slice()),
        Urls::Secret(_) => None,
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
        urls,
        url_keys: keys.urls.clone(),
        ca_key: keys.ca.clone(),
        failback_seconds: v.broker.failback_seconds,
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
        all_records: log.is_some() && ownership.takes_all_log_records(&v.id.namespace),
        batch_size: d.batch_size.unwrap_or(1),
        connection_limit: d.connection_limit.unwrap_or(32),
        queue,
    }
}

/// A route's ROUTES entry and version; its credentials go to `store`.
fn render_route(v: &Valid, inputs: &Inputs, store: &mut Store) -> Entry {
    let (ns, name) = (&v.id.namespace, &v.id.name);
    let url_keys = match &v.broker.urls {
        Urls::Plain(_) => None,
        Urls::Secret(values) => Some(
            values
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let what = if i == 0 {
                        "url".to_string()
                    } else {
                        format!("url-{}", i + 1)
                    };
                    store.put(store::key_for(ns, name, &what), u)
                })
                .collect::<Vec<_>>(),
        ),
    };
    let ca = v
        .broker
        .ca
        .as_ref()
        .map(|pem| store.put(store::key_for(ns, name, "ca"), pem));
    let keys = Keys { urls: url_keys, ca };
    let value = serde_json::to_value(lua_route(v, &keys, inputs.ownership))
        .expect("a route serialises to JSON");
    let lua = format!("  {},\n", lua_value(&value, "  "));
    let sources = broker::sources(&v.route.spec.broker, ns, inputs.secrets, inputs.clusters);
    let mut versioned = lua.as_bytes().to_vec();
    for source in &sources {
        versioned.push(0);
        versioned.extend_from_slice(source.as_bytes());
    }
    Entry {
        id: v.id.clone(),
        digest: crate::model::digest::plain(&versioned)[..16].to_owned(),
        keys: keys.urls.into_iter().flatten().chain(keys.ca).collect(),
        lua,
        sources,
    }
}

/// The fixed part of every rendered policy: it reads ROUTES as data.
const POLICY_BODY: &str = include_str!("render/policy.lua");

#[cfg(test)]
mod tests;
