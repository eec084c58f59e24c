//! Whether an AmqpRoute can be rendered, one concern per function; each
//! error names the field and what is wrong with it.

use super::broker::{self, Target};
use super::cluster::Clusters;
use super::{RouteId, route_id};
use crate::model::config::{Rate, parse_duration};
use crate::operator::crd::{AmqpRoute, Delivery, LogEvents, Publish, RouteMatch};
use k8s_openapi::api::core::v1::Secret;

/// A route that passed validation, ready to render.
pub(super) struct Valid<'a> {
    pub id: RouteId,
    pub route: &'a AmqpRoute,
    pub domain: String,
    pub broker: Target,
}

pub(super) fn validate<'a>(
    r: &'a AmqpRoute,
    secrets: &[Secret],
    clusters: &Clusters,
) -> Result<Valid<'a>, String> {
    let id = route_id(r);
    let spec = &r.spec;
    check_match(&spec.route_match)?;
    check_publish(&spec.publish)?;
    check_delivery(&spec.delivery)?;
    if let Some(le) = &spec.log_events {
        check_log_events(le)?;
    }
    let broker = broker::resolve(&spec.broker, &id, secrets, clusters)?;
    Ok(Valid {
        domain: spec.route_match.domain.to_ascii_lowercase(),
        id,
        route: r,
        broker,
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

fn check_match(m: &RouteMatch) -> Result<(), String> {
    check_name("match.domain", &m.domain, &['@', ':', '!'])?;
    if let Some(t) = &m.tenant {
        check_name("match.tenant", t, &['@', ':', '!'])?;
    }
    if let Some(c) = &m.campaign {
        check_name("match.campaign", c, &[':', '!'])?;
    }
    Ok(())
}

fn check_publish(p: &Publish) -> Result<(), String> {
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
    if let Some(k) = p.headers.keys().find(|k| k.is_empty() || k.len() > 255) {
        return Err(format!(
            "publish.headers: name {k:?} must be 1 to 255 bytes"
        ));
    }
    Ok(())
}

fn check_delivery(d: &Delivery) -> Result<(), String> {
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
    Ok(())
}

fn check_log_events(le: &LogEvents) -> Result<(), String> {
    const TYPES: &[&str] = &[
        "Reception",
        "Delivery",
        "TransientFailure",
        "Bounce",
        "Expiration",
        "AdminBounce",
    ];
    match le.types.iter().find(|t| !TYPES.contains(&t.as_str())) {
        Some(t) => Err(format!(
            "logEvents.types: unknown record type {t:?} (expected one of {})",
            TYPES.join(", ")
        )),
        None => Ok(()),
    }
}
