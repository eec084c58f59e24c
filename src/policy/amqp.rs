//! `kumo.amqp`: publishing to RabbitMQ over lapin, with publisher confirms on.
//!
//! Connections are pooled per URI and shared by every client; each client owns
//! a channel in confirm mode. A connection found closed or errored is replaced
//! on the next use, so a broker restart heals without restarting the relay.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use mlua::{Lua, Table, UserData, UserDataMethods, UserDataRef, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections opened to one broker when each one's channels are used up.
const MAX_CONNECTIONS_PER_BROKER: usize = 8;

/// Why talking to the broker failed; a stall is told apart so the pooled
/// connection can be dropped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// A publish or confirm got no answer in time.
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Failed(String),
}

impl From<Failure> for mlua::Error {
    fn from(f: Failure) -> mlua::Error {
        mlua::Error::runtime(f.to_string())
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Where a client connects: the URI and, for `amqps://`, an optional CA file
/// (PEM) trusted in addition to the system roots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub uri: String,
    pub ca_file: Option<String>,
}

impl Target {
    pub fn plain(uri: impl Into<String>) -> Target {
        Target {
            uri: uri.into(),
            ca_file: None,
        }
    }

    fn key(&self) -> String {
        format!("{}\0{}", self.uri, self.ca_file.as_deref().unwrap_or(""))
    }
}

/// Connections and idle confirm-mode channels, per broker URI.
#[derive(Default)]
pub struct AmqpPool {
    conns: Mutex<HashMap<String, Slot>>,
    idle_channels: Mutex<HashMap<String, Vec<Channel>>>,
}

/// The URI with any password hidden, for messages and logs.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &uri[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &uri[..s + 3], user, &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

impl AmqpPool {
    /// The `shard`th pooled connection to `target` (more than one only when
    /// the broker's per-connection channel limit is reached).
    async fn connection(
        &self,
        target: &Target,
        shard: usize,
        timeout: Duration,
    ) -> Result<Arc<Connection>, String> {
        let uri = target.uri.as_str();
        let key = target.key();
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{key}\0{shard}"))
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        *guard = None;
        if shard == 0 {
            self.idle_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: match &target.ca_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the CA file {path} for {}: {e}", redact(uri))
                })?),
                None => None,
            },
        };
        let conn = tokio::time::timeout(timeout, super::amqp_connect::connect(uri, tls))
            .await
            .map_err(|_| format!("connect to {} timed out after {timeout:?}", redact(uri)))?
            .map_err(|e| format!("connect to {}: {e}", redact(uri)))?;
        super::broker_metrics::CONNECTIONS_OPENED
            .get_or_create(&super::broker_metrics::label(uri))
            .inc();
        let conn = Arc::new(conn);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// A channel in confirm mode on a pooled connection to `target`.
    pub async fn channel(&self, target: &Target, timeout: Duration) -> Result<Channel, String> {
        let uri = target.uri.as_str();
        loop {
            let reused = self
                .idle_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&target.key())
                .and_then(Vec::pop);
            match reused {
                Some(ch) if ch.status().connected() => return Ok(ch),
                Some(_) => continue,
                None => break,
            }
        }
        for shard in 0..MAX_CONNECTIONS_PER_BROKER {
            let conn = self.connection(target, shard, timeout).await?;
            let open = async {
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>(ch)
            };
            match tokio::time::timeout(timeout, open).await {
                Err(_) => return Err(format!("opening a channel to {} timed out", redact(uri))),
                Ok(Ok(ch)) => return Ok(ch),
                // This connection's channels are used up: try the next one.
                Ok(Err(e)) if matches!(e.kind(), lapin::ErrorKind::ChannelsLimitReached) => {}
                Ok(Err(e)) => return Err(format!("opening a channel to {}: {e}", redact(uri))),
            }
        }
        Err(format!(
            "opening a channel to {}: all {MAX_CONNECTIONS_PER_BROKER} connections have reached the broker's channel limit",
            redact(uri)
        ))
    }

    /// Drops the pooled connections after one stalled (a publish or confirm
    /// timed out): a dead peer can look connected until heartbeats notice, and
    /// the next client should not wait on it.
    pub fn forget(&self, target: &Target) {
        let key = target.key();
        self.idle_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let slots: Vec<Slot> = {
            let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            (0..MAX_CONNECTIONS_PER_BROKER)
                .filter_map(|shard| conns.get(&format!("{key}\0{shard}")).cloned())
                .collect()
        };
        for slot in slots {
            if let Ok(mut guard) = slot.try_lock()
                && let Some(conn) = guard.take()
            {
                tracing::warn!(broker = %redact(&target.uri), "dropping a stalled broker connection");
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        conn.close(320, "stalled".into()),
                    )
                    .await;
                });
            }
        }
    }

    /// Forgets the connections when the failure was a stall.
    fn after_error(&self, target: &Target, failure: &Failure) {
        if let Failure::TimedOut(_) = failure {
            self.forget(target);
        }
    }

    pub fn give_back(&self, target: &Target, ch: Channel) {
        if ch.status().connected() {
            self.idle_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(target.key())
                .or_default()
                .push(ch);
        }
    }
}

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
    fn start(self, ch: Arc<Channel>) -> Writing {
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

async fn finish_write(
    write: impl Future<Output = lapin::Result<PublisherConfirm>>,
    timeout: Duration,
) -> Result<PublisherConfirm, Failure> {
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| Failure::TimedOut(format!("publish timed out after {timeout:?}")))?
        .map_err(|e| Failure::Failed(format!("publish failed: {e}")))
}

/// The confirm outcome, as `{status, reply_code?, reply_text?}`.
pub struct Outcome {
    pub status: &'static str,
    pub reply_code: Option<u16>,
    pub reply_text: Option<String>,
}

impl Outcome {
    pub fn from_confirmation(c: Confirmation) -> Outcome {
        let (status, returned) = match c {
            Confirmation::Ack(r) => ("Ack", r),
            Confirmation::Nack(r) => ("Nack", r),
            Confirmation::NotRequested => ("NotRequested", None),
        };
        Outcome {
            status,
            reply_code: returned.as_ref().map(|r| r.reply_code),
            reply_text: returned.map(|r| r.reply_text.to_string()),
        }
    }

    pub fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(0, 3)?;
        t.raw_set("status", self.status)?;
        if let Some(code) = self.reply_code {
            t.raw_set("reply_code", code)?;
        }
        if let Some(text) = &self.reply_text {
            t.raw_set("reply_text", text.as_str())?;
        }
        Ok(t)
    }

    /// True when the broker took the message and did not hand it back.
    pub fn accepted(&self) -> bool {
        self.status == "Ack" && self.reply_code.is_none()
    }
}

pub async fn await_confirm(c: PublisherConfirm, timeout: Duration) -> Result<Outcome, Failure> {
    tokio::time::timeout(timeout, c)
        .await
        .map_err(|_| {
            Failure::TimedOut(format!(
                "confirm timed out: no answer from the broker within {timeout:?}"
            ))
        })?
        .map(Outcome::from_confirmation)
        .map_err(|e| Failure::Failed(format!("waiting for the confirm: {e}")))
}

/// A client's channel; shared with its confirms, which replace a channel the
/// broker rejected a publish on.
type ChannelSlot = Arc<Mutex<Option<Arc<Channel>>>>;

/// `kumo.amqp.build_client(uri)`'s object.
pub struct Client {
    pool: Arc<AmqpPool>,
    /// Shared with each publish's confirm (cloned per message).
    target: Arc<Target>,
    /// Shared with each publish's pending write (lapin's `Channel` is a dozen
    /// `Arc`s: cloning it per message showed in profiles).
    channel: ChannelSlot,
    /// `close()` was called (the slot may also be empty because a rejected
    /// channel could not be replaced).
    closed: std::sync::atomic::AtomicBool,
}

type Writing = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// A publish whose frames are queued; `wait()` finishes the write, then awaits the confirm.
enum Pending {
    Writing(Writing, Duration),
    Written(PublisherConfirm),
}

pub struct Confirm {
    pending: Mutex<Option<Pending>>,
    pool: Arc<AmqpPool>,
    target: Arc<Target>,
    /// The client's channel, and the one this publish went on.
    slot: ChannelSlot,
    used: Arc<Channel>,
}

impl Client {
    pub async fn build(
        pool: Arc<AmqpPool>,
        target: Target,
        timeout: Duration,
    ) -> Result<Client, String> {
        let ch = pool.channel(&target, timeout).await?;
        Ok(Client {
            pool,
            target: Arc::new(target),
            channel: Arc::new(Mutex::new(Some(Arc::new(ch)))),
            closed: Default::default(),
        })
    }

    fn fail(&self, f: Failure) -> mlua::Error {
        self.pool.after_error(&self.target, &f);
        mlua::Error::runtime(format!("amqp {}: {f}", redact(&self.target.uri)))
    }

    /// Queues the message's frames without waiting for them to be written, so a
    /// batch goes out back to back and `publish` needs no async round trip.
    fn publish(&self, p: Publish, write_timeout: Duration) -> mlua::Result<Confirm> {
        let ch = self
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                mlua::Error::runtime(if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                    "amqp client is closed".to_string()
                } else {
                    format!(
                        "amqp {}: the broker rejected a publish and no new channel could be opened; build a new client",
                        redact(&self.target.uri)
                    )
                })
            })?;
        let mut write = p.start(ch.clone());
        // Poll once now so the frames are queued in call order; `wait()` does the rest.
        let pending = match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(confirm)) => Pending::Written(confirm),
            Poll::Ready(Err(e)) => {
                return Err(self.fail(Failure::Failed(format!("publish failed: {e}"))));
            }
            Poll::Pending => Pending::Writing(write, write_timeout),
        };
        Ok(Confirm {
            pending: Mutex::new(Some(pending)),
            pool: self.pool.clone(),
            target: self.target.clone(),
            slot: self.channel.clone(),
            used: ch,
        })
    }
}

impl Confirm {
    async fn outcome(&self) -> Result<Outcome, Failure> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Failure::Failed("confirm:wait() was already called".into()))?;
        let confirm = match pending {
            Pending::Written(c) => c,
            Pending::Writing(write, timeout) => finish_write(write, timeout).await?,
        };
        let outcome = await_confirm(confirm, CONFIRM_TIMEOUT).await?;
        if outcome.status == "Nack" {
            self.retire_channel().await;
        }
        Ok(outcome)
    }

    /// The broker rejected a publish on this channel: right after a failover
    /// (a quorum queue's leader moving) it goes on rejecting everything sent
    /// on channels opened then, while a fresh channel is accepted. The
    /// client's next publish goes on a new channel (once per rejected
    /// channel, however many of its confirms were rejected).
    async fn retire_channel(&self) {
        let label = super::broker_metrics::label(&self.target.uri);
        super::broker_metrics::NACKS.get_or_create(&label).inc();
        let current = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !current.is_some_and(|c| Arc::ptr_eq(&c, &self.used)) {
            return;
        }
        let fresh = self.pool.channel(&self.target, CONNECT_TIMEOUT).await;
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.used)) {
            return;
        }
        super::broker_metrics::CHANNELS_RETIRED
            .get_or_create(&label)
            .inc();
        // A client whose new channel cannot be opened fails its next publish
        // with that error, and the policy reconnects.
        *slot = fresh.ok().map(Arc::new);
    }
}

impl UserData for Client {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("publish", |_, this, t: Table| {
            let p = Publish::from_table(&t, "client:publish", &[])?;
            this.publish(p, PUBLISH_TIMEOUT)
        });
        // As in KumoMTA: publishes and waits for the confirm, both within
        // the timeout, and returns the result table (not a confirm).
        m.add_async_method(
            "publish_with_timeout",
            |lua, this: UserDataRef<Client>, (t, ms): (Table, u64)| async move {
                let limit = Duration::from_millis(ms);
                let p = Publish::from_table(&t, "client:publish_with_timeout", &[])?;
                let confirm = this.publish(p, limit)?;
                let outcome = tokio::time::timeout(limit, confirm.outcome())
                    .await
                    .map_err(|_| {
                        mlua::Error::runtime(format!(
                            "client:publish_with_timeout: no confirm within {ms} ms"
                        ))
                    })?
                    .map_err(|f| {
                        confirm.pool.after_error(&confirm.target, &f);
                        mlua::Error::from(f)
                    })?;
                outcome.to_lua(&lua)
            },
        );
        m.add_method("close", |_, this, ()| {
            if this.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Err(mlua::Error::runtime("amqp client is already closed"));
            }
            let ch = this
                .channel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            // The connection is shared; only this client's channel goes back.
            if let Some(ch) = ch {
                this.pool.give_back(&this.target, Arc::unwrap_or_clone(ch));
            }
            Ok(())
        });
    }
}

impl UserData for Confirm {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_async_method("wait", |lua, this: UserDataRef<Confirm>, ()| async move {
            let outcome = this.outcome().await.map_err(|f| {
                this.pool.after_error(&this.target, &f);
                mlua::Error::from(f)
            })?;
            outcome.to_lua(&lua)
        });
    }
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

/// `kumo.amqp.basic_publish{…}`: publish through the pool and wait for the confirm.
/// A Nack, a returned message or a timeout raises an error, so the message is retried.
pub async fn basic_publish(lua: &Lua, pool: &AmqpPool, t: Table) -> mlua::Result<Table> {
    const CALL: &str = "kumo.amqp.basic_publish";
    let conn: Table = t
        .get::<Option<Table>>("connection")?
        .ok_or_else(|| mlua::Error::runtime(format!("{CALL}: 'connection' is required")))?;
    let target = connection_target(&conn)?;
    let uri = target.uri.clone();
    let connect_timeout = duration_field(&conn, "connect_timeout", CONNECT_TIMEOUT)?;
    let publish_timeout = duration_field(&conn, "publish_timeout", PUBLISH_TIMEOUT)?;
    let p = Publish::from_table(&t, CALL, &["connection"])?;
    let ch = pool
        .channel(&target, connect_timeout)
        .await
        .map_err(mlua::Error::runtime)?;
    let result = async {
        let confirm = p.send(&ch, publish_timeout).await?;
        await_confirm(confirm, publish_timeout.max(CONFIRM_TIMEOUT)).await
    }
    .await;
    match &result {
        Ok(_) => pool.give_back(&target, ch),
        Err(e) => pool.after_error(&target, e),
    }
    let outcome =
        result.map_err(|e| mlua::Error::runtime(format!("{CALL} to {}: {e}", redact(&uri))))?;
    if !outcome.accepted() {
        return Err(mlua::Error::runtime(format!(
            "{CALL} to {}: broker answered {}{}",
            redact(&uri),
            outcome.status,
            outcome
                .reply_text
                .as_ref()
                .map(|t| format!(" ({} {t})", outcome.reply_code.unwrap_or(0)))
                .unwrap_or_default()
        )));
    }
    outcome.to_lua(lua)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("amqp://u:secret@h:5672/v"), "amqp://u:***@h:5672/v");
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
    }

    #[test]
    fn connection_table_to_uri() {
        let lua = Lua::new();
        let t: Table = lua
            .load(r#"return {host='h', port=1234, username='u s', password='p@ss/', vhost='/'}"#)
            .eval()
            .unwrap();
        assert_eq!(
            connection_target(&t).unwrap().uri,
            "amqp://u%20s:p%40ss%2F@h:1234/%2F"
        );
        let tls: Table = lua
            .load("return {host='h', enable_tls=true, root_ca_cert='/ca.pem'}")
            .eval()
            .unwrap();
        let target = connection_target(&tls).unwrap();
        assert_eq!(target.uri, "amqps://h:5671/%2F");
        assert_eq!(target.ca_file.as_deref(), Some("/ca.pem"));
        let bad: Table = lua.load("return {host='h', prot=1}").eval().unwrap();
        let err = connection_target(&bad).unwrap_err().to_string();
        assert!(err.contains("'prot'"), "{err}");
    }

    #[test]
    fn ipv6_hosts_are_bracketed_and_bad_hosts_refused() {
        let lua = Lua::new();
        for (host, want) in [
            ("::1", "amqp://[::1]:5672/%2F"),
            ("[::1]", "amqp://[::1]:5672/%2F"),
            ("fd00::a:1", "amqp://[fd00::a:1]:5672/%2F"),
            ("10.0.0.1", "amqp://10.0.0.1:5672/%2F"),
            ("rabbit.mq.svc", "amqp://rabbit.mq.svc:5672/%2F"),
        ] {
            let t = lua.create_table().unwrap();
            t.set("host", host).unwrap();
            let uri = connection_target(&t).unwrap().uri;
            assert_eq!(uri, want);
            let parsed: lapin::uri::AMQPUri = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(parsed.authority.port, 5672, "{uri}");
        }
        for host in ["h/x", "u@h", "h:99", "", "h x", "h?x"] {
            let t = lua.create_table().unwrap();
            t.set("host", host).unwrap();
            let err = connection_target(&t).unwrap_err().to_string();
            assert!(err.contains("is not a host name"), "{host}: {err}");
        }
    }

    #[test]
    fn publish_table_is_checked() {
        let lua = Lua::new();
        let t: Table = lua
            .load(r#"return {routing_key='k', payload='\0\255', properties={headers={a=1,b='x'}, delivery_mode=2}}"#)
            .eval()
            .unwrap();
        let p = Publish::from_table(&t, "t", &[]).unwrap();
        assert_eq!(p.payload, vec![0u8, 255]);
        assert_eq!(p.properties.delivery_mode(), &Some(2));
        let t: Table = lua
            .load("return {routing_key=string.rep('k', 256), payload=''}")
            .eval()
            .unwrap();
        assert!(Publish::from_table(&t, "t", &[]).is_err());
        let t: Table = lua.load("return {routing_key='k'}").eval().unwrap();
        let err = Publish::from_table(&t, "t", &[]).unwrap_err().to_string();
        assert!(err.contains("'payload' is required"), "{err}");
    }

    #[test]
    fn publish_table_errors_name_the_part_and_key() {
        let lua = Lua::new();
        let cases = [
            ("{routing_key='k', payload='', rk=1}", "t: unknown key 'rk'"),
            (
                "{routing_key='k', payload='', [1]=2}",
                "t: unknown key 'Integer(1)'",
            ),
            (
                "{routing_key='k', [true]=1, payload=''}",
                "t: unknown key 'Boolean(true)'",
            ),
            (
                "{routing_key='k', payload='', options={mandatry=true}}",
                "t options: unknown key 'mandatry'",
            ),
            (
                "{routing_key='k', payload='', properties={mesage_id='x'}}",
                "t properties: unknown key 'mesage_id'",
            ),
            (
                "{routing_key='k', payload='', properties={delivery_mode='2'}}",
                "t properties: 'delivery_mode' must be an integer, not string",
            ),
            (
                "{routing_key='k', payload='', properties={priority=300}}",
                "t properties: 'priority' = 300 is out of range",
            ),
            (
                "{routing_key='k', payload='', options={mandatory='yes'}}",
                "t options: 'mandatory' must be a boolean, not string",
            ),
            (
                "{routing_key='k', payload={}}",
                "t: 'payload' must be a string, not table",
            ),
            (
                "{routing_key='k', payload='', properties={headers={x={}}}}",
                "header 'x': a table cannot be an AMQP header value",
            ),
        ];
        for (src, want) in cases {
            let t: Table = lua.load(format!("return {src}")).eval().unwrap();
            let err = Publish::from_table(&t, "t", &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
        let t: Table = lua
            .load("return {routing_key='k', payload='p', connection={}, options={mandatory=true}, properties={priority=9.0, app_id=7}}")
            .eval()
            .unwrap();
        let p = Publish::from_table(&t, "t", &["connection"]).unwrap();
        assert!(p.options.mandatory);
        assert_eq!(p.properties.priority(), &Some(9));
        assert_eq!(
            p.properties.app_id().as_ref().map(|s| s.as_str()),
            Some("7")
        );
    }

    #[test]
    fn flags_and_properties_may_also_be_top_level_keys() {
        let lua = Lua::new();
        let t: Table = lua
            .load("return {routing_key='k', payload='p', mandatory=true, app_id='relay', content_type='text/plain', headers={x='1'}}")
            .eval()
            .unwrap();
        let p = Publish::from_table(&t, "t", &[]).unwrap();
        assert!(p.options.mandatory && !p.options.immediate);
        assert_eq!(
            p.properties.app_id().as_ref().map(|s| s.as_str()),
            Some("relay")
        );
        assert_eq!(
            p.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        assert!(p.properties.headers().is_some());
        for (src, want) in [
            (
                "{routing_key='k', payload='p', mandatory=true, options={immediate=true}}",
                "give [\"mandatory\"] either at the top level",
            ),
            (
                "{routing_key='k', payload='p', app_id='a', properties={priority=1}}",
                "give [\"app_id\"] either at the top level",
            ),
            (
                "{routing_key='k', payload='p', mandatory='yes'}",
                "t: 'mandatory' must be a boolean",
            ),
        ] {
            let t: Table = lua.load(format!("return {src}")).eval().unwrap();
            let err = Publish::from_table(&t, "t", &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
    }
}
