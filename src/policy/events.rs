//! Event handlers registered with `kumo.on`, kept per Lua state.
//!
//! Single-handler events refuse a second registration (naming both places);
//! multi-handler events run in order and the first non-nil return wins.

use mlua::{Function, Lua, Table, Value};

const REGISTRY_KEY: &str = "amqp_relay.events";

/// Events that may have several handlers.
const MULTI: &[&str] = &["get_queue_config", "should_enqueue_log_record", "pre_init"];

/// KumoMTA events whose features this relay does not provide: registering one
/// is an error, because the handler would never run.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("get_egress_source", "egress sources (SMTP delivery)"),
    ("get_egress_pool", "egress pools (SMTP delivery)"),
    ("get_listener_domain", "listener domains"),
    ("smtp_server_ehlo", "SMTP EHLO hooks"),
    ("smtp_server_mail_from", "SMTP MAIL FROM hooks"),
    ("smtp_server_mail_rcpt_to", "SMTP RCPT TO hooks"),
    ("smtp_client_rewrite_delivery_status", "SMTP delivery"),
    ("message_requeued", "requeue hooks"),
    ("get_meta_spool", "spool customisation"),
];

pub fn is_multi(name: &str) -> bool {
    MULTI.contains(&name)
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
    let place = caller_place(lua);
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

pub(super) fn caller_place(lua: &Lua) -> String {
    // Level 1 is the Lua code that called kumo.on.
    lua.inspect_stack(1, |d| {
        let src = d.source();
        let file = src.short_src.as_deref().unwrap_or("?").to_owned();
        format!("{}:{}", file, d.current_line().unwrap_or(0))
    })
    .unwrap_or_else(|| "?".into())
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
