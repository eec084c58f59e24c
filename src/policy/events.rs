//! The events the relay raises, each declared once with its handler count
//! and argument and answer types, and the handlers registered with
//! `kumo.on`, kept per Lua state.
//!
//! Single-handler events refuse a second registration (naming both places);
//! multi-handler events run in order and the first non-nil answer wins.

use super::PolicyError;
use super::config_ud::{EgressPathUd, ListenerDomainUd, QueueConfigUd};
use super::conn_meta::ConnMeta;
use super::message_ud::MessageUd;
use crate::model::config::{EgressPathConfig, QueueConfig};
use crate::model::listener_config::ListenerDomain;
use mlua::{Function, Lua, Table, Value};
use std::marker::PhantomData;

const REGISTRY_KEY: &str = "amqp_relay.events";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handlers {
    One,
    Many,
}

/// An event called with arguments `A` whose handlers answer an `R`.
pub struct Event<A, R> {
    pub name: &'static str,
    pub handlers: Handlers,
    types: PhantomData<fn(A) -> R>,
}

/// What a handler's return value means for its event: `None` lets the
/// next handler of a multi-handler event answer.
pub trait Answer: Sized {
    fn from_answer(v: Value) -> Result<Option<Self>, String>;
}

fn unexpected(v: &Value, expected: &str) -> String {
    format!(
        "the handler returned a {}; expected {expected}",
        v.type_name()
    )
}

impl Answer for () {
    fn from_answer(_: Value) -> Result<Option<()>, String> {
        Ok(None)
    }
}

impl Answer for bool {
    fn from_answer(v: Value) -> Result<Option<bool>, String> {
        match v {
            Value::Nil => Ok(None),
            Value::Boolean(b) => Ok(Some(b)),
            other => Err(unexpected(&other, "a boolean")),
        }
    }
}

impl Answer for QueueConfig {
    fn from_answer(v: Value) -> Result<Option<QueueConfig>, String> {
        const WANT: &str = "kumo.make_queue_config{…}";
        match v {
            Value::Nil => Ok(None),
            Value::UserData(ud) => match ud.borrow::<QueueConfigUd>() {
                Ok(c) => Ok(Some(c.0.clone())),
                Err(_) => Err(format!("the handler must return {WANT}")),
            },
            other => Err(unexpected(&other, WANT)),
        }
    }
}

impl Answer for ListenerDomain {
    fn from_answer(v: Value) -> Result<Option<ListenerDomain>, String> {
        const WANT: &str = "kumo.make_listener_domain{…}";
        match v {
            Value::Nil => Ok(None),
            Value::UserData(ud) => match ud.borrow::<ListenerDomainUd>() {
                Ok(c) => Ok(Some(c.0.clone())),
                Err(_) => Err(format!("the handler must return {WANT}")),
            },
            other => Err(unexpected(&other, WANT)),
        }
    }
}

impl Answer for EgressPathConfig {
    fn from_answer(v: Value) -> Result<Option<EgressPathConfig>, String> {
        const WANT: &str = "kumo.make_egress_path{…}";
        match v {
            Value::Nil => Ok(None),
            Value::UserData(ud) => match ud.borrow::<EgressPathUd>() {
                Ok(c) => Ok(Some(c.0.clone())),
                Err(_) => Err(format!("the handler must return {WANT}")),
            },
            other => Err(unexpected(&other, WANT)),
        }
    }
}

/// Declares the events: a typed constant for each, and the table of names
/// and handler counts `kumo.on` checks registrations against.
macro_rules! events {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $n:ident, ($($arg:ty),*) -> $ret:ty;)*) => {
        $(
            $(#[$doc])*
            pub const $id: Event<($($arg,)*), $ret> = Event {
                name: $name,
                handlers: Handlers::$n,
                types: PhantomData,
            };
        )*
        pub const DECLARED: &[(&str, Handlers)] = &[$(($name, Handlers::$n)),*];
    };
}

events! {
    PRE_INIT = "pre_init", Many, () -> ();
    /// Starts listeners, defines the spool and logs.
    INIT = "init", One, () -> ();
    /// `(domain, tenant, campaign, routing_domain)`.
    GET_QUEUE_CONFIG = "get_queue_config", Many,
        (String, Option<String>, Option<String>, Option<String>) -> QueueConfig;
    /// `(routing_domain, egress_source, site_name)`.
    GET_EGRESS_PATH_CONFIG = "get_egress_path_config", One, (String, String, String) -> EgressPathConfig;
    HTTP_MESSAGE_GENERATED = "http_message_generated", One, (MessageUd) -> ();
    SMTP_SERVER_MESSAGE_RECEIVED = "smtp_server_message_received", One, (MessageUd) -> ();
    /// `(user, password)`.
    HTTP_SERVER_VALIDATE_AUTH_BASIC = "http_server_validate_auth_basic", One, (String, String) -> bool;
    /// `(authz, authc, password, conn_meta)`.
    SMTP_SERVER_AUTH_PLAIN = "smtp_server_auth_plain", One,
        (String, String, String, ConnMeta) -> bool;
    /// `(domain, listener, conn_meta)`: at RCPT, for a client outside
    /// `relay_hosts`, the recipient's and the sender's domain.
    GET_LISTENER_DOMAIN = "get_listener_domain", One, (String, String, ConnMeta) -> ListenerDomain;
    /// `(msg, hook_name)`.
    SHOULD_ENQUEUE_LOG_RECORD = "should_enqueue_log_record", Many, (MessageUd, String) -> bool;
}

/// Calls `event`'s handlers in order until one answers; a `kumo.reject`
/// in a handler is [`PolicyError::Rejected`].
pub async fn call<A, R>(lua: &Lua, event: &Event<A, R>, args: A) -> Result<Option<R>, PolicyError>
where
    A: mlua::IntoLuaMulti + Clone,
    R: Answer,
{
    let failed = |e| PolicyError::event(event.name, e);
    for h in handlers(lua, event.name).map_err(failed)? {
        let v: Value = h.call_async(args.clone()).await.map_err(failed)?;
        let answer = R::from_answer(v).map_err(|message| PolicyError::Event {
            event: event.name.into(),
            message,
        })?;
        if answer.is_some() {
            return Ok(answer);
        }
    }
    Ok(None)
}

/// KumoMTA events whose features this relay does not provide: registering one
/// is an error, because the handler would never run.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("get_egress_source", "egress sources (SMTP delivery)"),
    ("get_egress_pool", "egress pools (SMTP delivery)"),
    ("smtp_server_ehlo", "SMTP EHLO hooks"),
    ("smtp_server_mail_from", "SMTP MAIL FROM hooks"),
    ("smtp_server_mail_rcpt_to", "SMTP RCPT TO hooks"),
    ("smtp_client_rewrite_delivery_status", "SMTP delivery"),
    ("message_requeued", "requeue hooks"),
    ("get_meta_spool", "spool customisation"),
];

pub fn is_multi(name: &str) -> bool {
    DECLARED.contains(&(name, Handlers::Many))
}

fn registry(lua: &Lua) -> mlua::Result<Table> {
    match lua.named_registry_value::<Value>(REGISTRY_KEY)? {
        Value::Table(t) => Ok(t),
        _ => {
            let t = lua.create_table()?;
            lua.set_named_registry_value(REGISTRY_KEY, &t)?;
            Ok(t)
        }
    }
}

/// `kumo.on(name, handler)`.
pub fn register(lua: &Lua, name: String, handler: Function) -> mlua::Result<()> {
    if let Some((_, what)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
        return Err(mlua::Error::runtime(format!(
            "kumo.on('{name}'): {what} are not supported by amqp-relay"
        )));
    }
    let place = super::place::caller_place(lua);
    let reg = registry(lua)?;
    let entry: Table = match reg.get::<Value>(name.as_str())? {
        Value::Table(t) => t,
        _ => {
            let t = lua.create_table()?;
            t.set("handlers", lua.create_table()?)?;
            t.set("places", lua.create_table()?)?;
            reg.set(name.as_str(), &t)?;
            t
        }
    };
    let handlers: Table = entry.get("handlers")?;
    let places: Table = entry.get("places")?;
    if !is_multi(&name) && handlers.raw_len() > 0 {
        let first: String = places.get(1)?;
        return Err(mlua::Error::runtime(format!(
            "kumo.on('{name}') at {place}: the event already has a handler, registered at {first}; \
             it takes only one"
        )));
    }
    handlers.push(handler)?;
    places.push(place)?;
    Ok(())
}

/// The handlers of an event, in registration order.
pub fn handlers(lua: &Lua, name: &str) -> mlua::Result<Vec<Function>> {
    let reg = registry(lua)?;
    match reg.get::<Value>(name)? {
        Value::Table(entry) => entry
            .get::<Table>("handlers")?
            .sequence_values::<Function>()
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// Every event with at least one handler.
pub fn names(lua: &Lua) -> mlua::Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for pair in registry(lua)?.pairs::<String, Table>() {
        let (name, entry) = pair?;
        if entry.get::<Table>("handlers")?.raw_len() > 0 {
            out.insert(name);
        }
    }
    Ok(out)
}

pub fn defined(lua: &Lua, name: &str) -> bool {
    handlers(lua, name).map(|h| !h.is_empty()).unwrap_or(false)
}
