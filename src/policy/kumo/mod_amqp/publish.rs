//! What a publish call asks for, read from its Lua table (unknown keys
//! refused, each error naming the call and the key), and the broker its
//! `connection` table names.

use super::Writing;
use super::pool::{Failure, Target};
use lapin::PublisherConfirm;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use mlua::{Table, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What a publish call asks for, read from its Lua table with unknown keys refused.
#[derive(Debug)]
pub struct Publish {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub payload: Vec<u8>,
    pub options: BasicPublishOptions,
    pub properties: BasicProperties,
}

fn short(what: &str, s: String) -> mlua::Result<ShortString> {
    if s.len() > 255 {
        return Err(mlua::Error::runtime(format!(
            "{what} is {} bytes long; AMQP allows at most 255",
            s.len()
        )));
    }
    Ok(s.into())
}

pub fn check_keys(t: &Table, call: &str, allowed: &[&'static str]) -> mlua::Result<()> {
    each_field(t, Ctx { call, part: "" }, allowed, |_, _| Ok(()))
}

fn opt_string(t: &Table, key: &str, call: &str) -> mlua::Result<Option<String>> {
    string_value(t.get::<Value>(key)?, Ctx { call, part: "" }, key)
}

fn field_value(v: Value, key: &str) -> mlua::Result<AMQPValue> {
    Ok(match v {
        Value::Boolean(b) => AMQPValue::Boolean(b),
        Value::Integer(i) => AMQPValue::LongLongInt(i),
        Value::Number(n) => AMQPValue::Double(n),
        Value::String(s) => AMQPValue::LongString(s.as_bytes().to_vec().into()),
        other => {
            return Err(mlua::Error::runtime(format!(
                "header '{key}': a {} cannot be an AMQP header value",
                other.type_name()
            )));
        }
    })
}

fn unknown_key(what: Ctx, key: &Value, allowed: &[&str]) -> mlua::Error {
    let name = match key {
        Value::String(s) => s.to_string_lossy(),
        other => format!("{other:?}"),
    };
    mlua::Error::runtime(format!(
        "{what}: unknown key '{name}' (expected one of: {})",
        allowed.join(", ")
    ))
}

/// Names the call (and the part of its argument) in error messages, built only on error.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    call: &'a str,
    part: &'static str,
}

impl std::fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.call, self.part)
    }
}

/// Walks `t` once, handing each field to `f` under its name from `allowed`;
/// any other key is an error. This runs per message: keys are read as Rust
/// strings (mlua's `pairs` makes, clones and drops a Lua reference per key),
/// and a key that is not a known name ends the walk, the error then naming it
/// from a second, slower walk.
fn each_field(
    t: &Table,
    what: Ctx,
    allowed: &[&'static str],
    mut f: impl FnMut(&'static str, Value) -> mlua::Result<()>,
) -> mlua::Result<()> {
    let mut from_f = false;
    let walked = t.for_each::<String, Value>(|k, v| match allowed.iter().find(|a| **a == k) {
        Some(name) => {
            let r = f(name, v);
            from_f = r.is_err();
            r
        }
        None => Err(mlua::Error::runtime("unknown key")),
    });
    match walked {
        Err(e) if from_f => Err(e),
        // An unknown name, or a key that is not a string.
        Err(_) => Err(unknown_field(t, what, allowed)),
        Ok(()) => Ok(()),
    }
}

/// The error for `t`'s first key that is not one of `allowed`.
fn unknown_field(t: &Table, what: Ctx, allowed: &[&str]) -> mlua::Error {
    for pair in t.pairs::<Value, Value>() {
        let k = match pair {
            Ok((k, _)) => k,
            Err(e) => return e,
        };
        let known = match &k {
            Value::String(s) => allowed.iter().any(|a| a.as_bytes() == &s.as_bytes()[..]),
            _ => false,
        };
        if !known {
            return unknown_key(what, &k, allowed);
        }
    }
    mlua::Error::runtime(format!("{what}: unreadable table"))
}

fn type_error(what: Ctx, key: &str, wanted: &str, v: &Value) -> mlua::Error {
    mlua::Error::runtime(format!(
        "{what}: '{key}' must be {wanted}, not {}",
        v.type_name()
    ))
}

fn string_value(v: Value, what: Ctx, key: &str) -> mlua::Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_str()?.to_owned())),
        Value::Integer(i) => Ok(Some(i.to_string())),
        other => Err(type_error(what, key, "a string", &other)),
    }
}

fn short_value(v: Value, what: Ctx, key: &str) -> mlua::Result<Option<ShortString>> {
    string_value(v, what, key)?
        .map(|s| short(key, s))
        .transpose()
}

fn int_value<T: TryFrom<i64>>(v: Value, what: Ctx, key: &str) -> mlua::Result<Option<T>> {
    let i = match v {
        Value::Nil => return Ok(None),
        Value::Integer(i) => i,
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => n as i64,
        other => return Err(type_error(what, key, "an integer", &other)),
    };
    T::try_from(i)
        .map(Some)
        .map_err(|_| mlua::Error::runtime(format!("{what}: '{key}' = {i} is out of range")))
}

fn bool_value(v: Value, what: Ctx, key: &str) -> mlua::Result<bool> {
    match v {
        Value::Nil => Ok(false),
        Value::Boolean(b) => Ok(b),
        other => Err(type_error(what, key, "a boolean", &other)),
    }
}

/// KumoMTA's names of the AMQP basic properties (`kind` is AMQP's `type`).
const PROPERTY_KEYS: &[&str] = &[
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "kind",
    "user_id",
    "app_id",
    "headers",
];

fn properties(t: &Table, call: &str) -> mlua::Result<BasicProperties> {
    let w = Ctx {
        call,
        part: " properties",
    };
    let mut p = BasicProperties::default();
    each_field(t, w, PROPERTY_KEYS, |key, v| {
        // lapin's builders take the properties by value.
        p = property(std::mem::take(&mut p), key, v, w)?;
        Ok(())
    })?;
    Ok(p)
}

/// `q` with the property `key` set to `v` (nil leaves it unset).
fn property(q: BasicProperties, key: &str, v: Value, w: Ctx) -> mlua::Result<BasicProperties> {
    Ok(match key {
        "delivery_mode" => with(
            q,
            int_value(v, w, key)?,
            BasicProperties::with_delivery_mode,
        ),
        "priority" => with(q, int_value(v, w, key)?, BasicProperties::with_priority),
        "timestamp" => with(q, int_value(v, w, key)?, BasicProperties::with_timestamp),
        "headers" => match v {
            Value::Nil => q,
            Value::Table(h) => q.with_headers(headers(&h)?),
            other => return Err(type_error(w, key, "a table", &other)),
        },
        _ => {
            let set = match key {
                "content_type" => BasicProperties::with_content_type,
                "content_encoding" => BasicProperties::with_content_encoding,
                "correlation_id" => BasicProperties::with_correlation_id,
                "reply_to" => BasicProperties::with_reply_to,
                "expiration" => BasicProperties::with_expiration,
                "message_id" => BasicProperties::with_message_id,
                "kind" => BasicProperties::with_type,
                "user_id" => BasicProperties::with_user_id,
                _ => BasicProperties::with_app_id,
            };
            with(q, short_value(v, w, key)?, set)
        }
    })
}

fn with<T>(
    p: BasicProperties,
    v: Option<T>,
    set: fn(BasicProperties, T) -> BasicProperties,
) -> BasicProperties {
    match v {
        Some(v) => set(p, v),
        None => p,
    }
}

fn headers(h: &Table) -> mlua::Result<FieldTable> {
    let mut ft = FieldTable::default();
    for pair in h.pairs::<String, Value>() {
        let (k, v) = pair?;
        let value = field_value(v, &k)?;
        ft.insert(short("header name", k)?, value);
    }
    Ok(ft)
}

fn payload_value(v: Value, ctx: Ctx) -> mlua::Result<Option<Vec<u8>>> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        other => Err(type_error(ctx, "payload", "a string", &other)),
    }
}

/// Reads an `options` table into `options`; whether one was given.
fn publish_flags(v: Value, call: &str, options: &mut BasicPublishOptions) -> mlua::Result<bool> {
    let what = Ctx {
        call,
        part: " options",
    };
    match v {
        Value::Nil => Ok(false),
        Value::Table(o) => {
            each_field(&o, what, &["mandatory", "immediate"], |k, v| {
                let b = bool_value(v, what, k)?;
                match k {
                    "mandatory" => options.mandatory = b,
                    _ => options.immediate = b,
                }
                Ok(())
            })?;
            Ok(true)
        }
        other => Err(type_error(
            Ctx { call, part: "" },
            "options",
            "a table",
            &other,
        )),
    }
}

impl Publish {
    /// Reads `{routing_key, payload, exchange?, options?, properties?}`, or
    /// with `mandatory`, `immediate` and the properties as top-level keys
    /// (both shapes KumoMTA's examples use; one flag or property given both
    /// ways is an error) (+ `extra` keys the caller handles).
    pub fn from_table(t: &Table, call: &str, extra: &[&'static str]) -> mlua::Result<Publish> {
        let mut allowed: Vec<&str> = vec![
            "routing_key",
            "payload",
            "exchange",
            "options",
            "properties",
            "mandatory",
            "immediate",
        ];
        allowed.extend_from_slice(PROPERTY_KEYS);
        allowed.extend_from_slice(extra);
        let (mut routing_key, mut payload, mut exchange) = (None, None, None);
        let mut options = BasicPublishOptions::default();
        let (mut nested_props, mut nested_flags) = (None, false);
        let mut top_props = BasicProperties::default();
        let mut top_keys: Vec<&str> = Vec::new();
        let ctx = Ctx { call, part: "" };
        each_field(t, ctx, &allowed, |key, v| {
            match key {
                "routing_key" => routing_key = short_value(v, ctx, key)?,
                "exchange" => exchange = short_value(v, ctx, key)?,
                "payload" => payload = payload_value(v, ctx)?,
                "options" => nested_flags = publish_flags(v, call, &mut options)?,
                "properties" => match v {
                    Value::Nil => {}
                    Value::Table(p) => nested_props = Some(properties(&p, call)?),
                    other => return Err(type_error(ctx, key, "a table", &other)),
                },
                "mandatory" | "immediate" => {
                    let b = bool_value(v, ctx, key)?;
                    top_keys.push(key);
                    match key {
                        "mandatory" => options.mandatory |= b,
                        _ => options.immediate |= b,
                    }
                }
                k if PROPERTY_KEYS.contains(&k) => {
                    top_keys.push(key);
                    top_props = property(std::mem::take(&mut top_props), key, v, ctx)?;
                }
                // The caller's own keys.
                _ => {}
            }
            Ok(())
        })?;
        let both = |nested: bool, keys: &[&str]| nested && !keys.is_empty();
        let flags: Vec<&str> = top_keys
            .iter()
            .copied()
            .filter(|k| matches!(*k, "mandatory" | "immediate"))
            .collect();
        let props: Vec<&str> = top_keys
            .iter()
            .copied()
            .filter(|k| PROPERTY_KEYS.contains(k))
            .collect();
        if both(nested_flags, &flags) || both(nested_props.is_some(), &props) {
            return Err(mlua::Error::runtime(format!(
                "{call}: give {:?} either at the top level or inside 'options'/'properties', not both",
                if both(nested_flags, &flags) {
                    &flags
                } else {
                    &props
                }
            )));
        }
        let routing_key = routing_key
            .ok_or_else(|| mlua::Error::runtime(format!("{call}: 'routing_key' is required")))?;
        let payload = payload
            .ok_or_else(|| mlua::Error::runtime(format!("{call}: 'payload' is required")))?;
        Ok(Publish {
            exchange: exchange.unwrap_or_default(),
            routing_key,
            payload,
            options,
            properties: nested_props.unwrap_or(top_props),
        })
    }

    /// lapin's publish as an owned future: its first poll assigns the delivery
    /// tag and queues the frames; the rest waits for the socket write.
    pub(super) fn start(self, ch: Arc<Channel>) -> Writing {
        Box::pin(async move {
            ch.basic_publish(
                self.exchange,
                self.routing_key,
                self.options,
                &self.payload,
                self.properties,
            )
            .await
        })
    }

    pub async fn send(self, ch: &Channel, timeout: Duration) -> Result<PublisherConfirm, Failure> {
        let write = ch.basic_publish(
            self.exchange,
            self.routing_key,
            self.options,
            &self.payload,
            self.properties,
        );
        finish_write(write, timeout).await
    }
}

pub(super) async fn finish_write(
    write: impl Future<Output = lapin::Result<PublisherConfirm>>,
    timeout: Duration,
) -> Result<PublisherConfirm, Failure> {
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| Failure::TimedOut(format!("publish timed out after {timeout:?}")))?
        .map_err(|e| Failure::Failed(format!("publish failed: {e}")))
}

/// The broker `basic_publish`'s `connection` table describes.
pub fn connection_target(t: &Table) -> mlua::Result<Target> {
    const CALL: &str = "kumo.amqp.basic_publish connection";
    check_keys(
        t,
        CALL,
        &[
            "host",
            "port",
            "username",
            "password",
            "vhost",
            "connection_name",
            "heartbeat",
            "enable_tls",
            "root_ca_cert",
            "client_cert",
            "client_private_key",
            "pool_size",
            "connect_timeout",
            "recycle_timeout",
            "wait_timeout",
            "publish_timeout",
        ],
    )?;
    let host = opt_string(t, "host", CALL)?
        .ok_or_else(|| mlua::Error::runtime(format!("{CALL}: 'host' is required")))?;
    let tls = t.get::<Option<bool>>("enable_tls")?.unwrap_or(false);
    if opt_string(t, "client_cert", CALL)?.is_some()
        || opt_string(t, "client_private_key", CALL)?.is_some()
    {
        return Err(mlua::Error::runtime(format!(
            "{CALL}: client certificates are not supported by amqp-relay; use username and password"
        )));
    }
    let port = t
        .get::<Option<u16>>("port")?
        .unwrap_or(if tls { 5671 } else { 5672 });
    let enc = |s: &str| percent_encode(s);
    let user = opt_string(t, "username", CALL)?;
    let pass = opt_string(t, "password", CALL)?;
    let auth = match (user, pass) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(&u), enc(&p)),
        (Some(u), None) => format!("{}@", enc(&u)),
        (None, Some(_)) => {
            return Err(mlua::Error::runtime(format!(
                "{CALL}: 'password' needs a 'username'"
            )));
        }
        (None, None) => String::new(),
    };
    let vhost = opt_string(t, "vhost", CALL)?.unwrap_or_else(|| "/".into());
    let scheme = if tls { "amqps" } else { "amqp" };
    let host = uri_host(&host).map_err(|e| mlua::Error::runtime(format!("{CALL}: {e}")))?;
    let mut uri = format!("{scheme}://{auth}{host}:{port}/{}", enc(&vhost));
    if let Some(hb) = t.get::<Option<u16>>("heartbeat")? {
        uri.push_str(&format!("?heartbeat={hb}"));
    }
    Ok(Target {
        uri,
        ca_file: opt_string(t, "root_ca_cert", CALL)?,
    })
}

/// A host as it goes into a URI: IPv6 addresses in brackets; anything that
/// would change the URI's meaning refused.
fn uri_host(host: &str) -> Result<String, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(v6) = bare.parse::<std::net::Ipv6Addr>() {
        return Ok(format!("[{v6}]"));
    }
    if host.is_empty()
        || host.contains(|c: char| "/@?#[]:%\\".contains(c) || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'host' {host:?} is not a host name or an IP address"
        ));
    }
    Ok(host.to_owned())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn duration_field(t: &Table, key: &str, default: Duration) -> mlua::Result<Duration> {
    match t.get::<Value>(key)? {
        Value::Nil => Ok(default),
        Value::Integer(i) if i >= 0 => Ok(Duration::from_secs(i as u64)),
        Value::Number(n) if n >= 0.0 => Ok(Duration::from_secs_f64(n)),
        Value::String(s) => crate::model::config::parse_duration(&s.to_str()?)
            .map_err(|e| mlua::Error::runtime(format!("'{key}': {e}"))),
        other => Err(mlua::Error::runtime(format!(
            "'{key}' must be a duration, not {}",
            other.type_name()
        ))),
    }
}
