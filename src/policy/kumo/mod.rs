//! The `kumo` module: KumoMTA's Lua API, as far as a relay into RabbitMQ needs it.
//! Here: `kumo.on`, the `make_*` configurations, listeners, spool, logs and
//! secrets. Each of KumoMTA's other modules is a file of its own, named as
//! KumoMTA's crate, with one `register(lua, kumo)` that sets `kumo.NAME`.

mod logging;
pub mod mod_amqp;
mod mod_digest;
mod mod_domain_map;
mod mod_encode;
pub(super) mod mod_memoize;
mod mod_serde;
mod mod_string;
mod mod_time;
mod mod_uuid;

pub use mod_time::{TimerLabel, USER_LUA_LATENCY};

use super::config_ud::{EgressPathUd, ListenerDomainUd, QueueConfigUd};
use super::events;
use super::reject::Rejection;
use crate::model::config::{EgressPathConfig, QueueConfig};
use crate::model::listener_config::{EsmtpListener, HttpListener, ListenerDomain};
use crate::model::log_config::{LocalLogsConfig, LogHookConfig};
use mlua::{Function, Lua, Table, Value};
use mod_amqp::AmqpPool;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What `init` configured; only the state that runs `init` carries one.
#[derive(Debug, Default, Clone)]
pub struct InitConfig {
    /// The policy defines `init`, so listeners and spool come from it, not from flags.
    pub has_init: bool,
    pub http_listeners: Vec<HttpListener>,
    pub esmtp_listeners: Vec<EsmtpListener>,
    pub local_logs: Option<LocalLogsConfig>,
    pub log_hooks: Vec<LogHookConfig>,
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoolDef {
    name: String,
    path: PathBuf,
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility: this relay always uses redb
    kind: Option<String>,
}

/// Per-state context, reachable from every `kumo` function.
pub struct StateCtx {
    pub amqp: Arc<AmqpPool>,
    /// Secrets watched through the API, read before the disk.
    pub overlay: super::Overlay,
    pub init: Option<Arc<Mutex<InitConfig>>>,
    /// The running call's deadline; a long computation gives its worker's
    /// other tasks away.
    pub limit: super::call_limit::CallLimit,
}

/// Reads a configuration table; the error names the field that is wrong.
fn from_lua<T: for<'de> Deserialize<'de>>(v: Value, call: &str) -> mlua::Result<T> {
    serde_path_to_error::deserialize(mlua::serde::Deserializer::new(v)).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        match at.as_str() {
            "." => bad_config(format!("{call}: {inner}")),
            _ => bad_config(format!("{call}: {at}: {inner}")),
        }
    })
}

fn bad_config(message: String) -> mlua::Error {
    mlua::Error::external(super::reject::BadConfig(message))
}

fn init_ctx(lua: &Lua, call: &str) -> mlua::Result<Arc<Mutex<InitConfig>>> {
    let ctx = lua
        .app_data_ref::<StateCtx>()
        .ok_or_else(|| mlua::Error::runtime("kumo module used outside the relay"))?;
    ctx.init.clone().ok_or_else(|| {
        mlua::Error::runtime(format!("{call} may only be called from the 'init' event"))
    })
}

/// Touching a function `module` lacks names it.
pub(super) fn refuse_missing(lua: &Lua, module: &Table, name: &'static str) -> mlua::Result<()> {
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        lua.create_function(move |_, (_, key): (Table, String)| -> mlua::Result<Value> {
            Err(mlua::Error::runtime(format!(
                "kumo.{name}.{key} is not provided by amqp-relay"
            )))
        })?,
    )?;
    module.set_metatable(Some(meta))
}

/// Features of KumoMTA that this relay does not provide; touching one fails
/// with a message that says so, instead of "attempt to index a nil value".
const NOT_PROVIDED: &str = "is not provided by amqp-relay (it relays to AMQP only: no SMTP delivery, \
DKIM, traffic shaping or other KumoMTA features)";

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let kumo = lua.create_table()?;
    register_core(lua, &kumo)?;
    register_secrets(lua, &kumo)?;
    register_init(lua, &kumo)?;
    // KumoMTA's modules, each registering itself as its crate does.
    mod_amqp::register(lua, &kumo)?;
    mod_digest::register(lua, &kumo)?;
    mod_domain_map::register(lua, &kumo)?;
    mod_encode::register(lua, &kumo)?;
    logging::register(lua, &kumo)?;
    mod_memoize::register(lua, &kumo)?;
    mod_serde::register(lua, &kumo)?;
    mod_string::register(lua, &kumo)?;
    mod_time::register(lua, &kumo)?;
    mod_uuid::register(lua, &kumo)?;
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        lua.create_function(|_, (_, key): (Value, Value)| -> mlua::Result<()> {
            let key = key.to_string().unwrap_or_else(|_| "?".into());
            Err(mlua::Error::runtime(format!("kumo.{key} {NOT_PROVIDED}")))
        })?,
    )?;
    kumo.set_metatable(Some(meta))?;
    Ok(kumo)
}

/// Events, queue and egress configuration, rejection.
fn register_core(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set(
        "on",
        lua.create_function(|lua, (name, handler): (String, Function)| {
            events::register(lua, name, handler)
        })?,
    )?;
    kumo.set(
        "make_queue_config",
        lua.create_function(|_lua, v: Value| {
            from_lua::<QueueConfig>(v, "kumo.make_queue_config")?
                .validate()
                .map(QueueConfigUd)
                .map_err(|e| bad_config(format!("kumo.make_queue_config: {e}")))
        })?,
    )?;
    kumo.set(
        "make_egress_path",
        lua.create_function(|_lua, v: Value| {
            from_lua::<EgressPathConfig>(v, "kumo.make_egress_path")?
                .validate()
                .map(EgressPathUd)
                .map_err(|e| bad_config(format!("kumo.make_egress_path: {e}")))
        })?,
    )?;
    kumo.set(
        "make_listener_domain",
        lua.create_function(|_lua, v: Value| {
            from_lua::<ListenerDomain>(v, "kumo.make_listener_domain")?
                .validate()
                .map(ListenerDomainUd)
                .map_err(|e| mlua::Error::runtime(format!("kumo.make_listener_domain: {e}")))
        })?,
    )?;
    kumo.set(
        "reject",
        lua.create_function(
            |_, (code, message): (u16, Option<String>)| -> mlua::Result<()> {
                Err(mlua::Error::external(Rejection {
                    code,
                    message: message.unwrap_or_default(),
                }))
            },
        )?,
    )?;
    Ok(())
}

fn register_secrets(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set(
        "secret_load",
        lua.create_function(|lua, t: Table| {
            if let Some(data) = t.get::<Option<mlua::LuaString>>("key_data")? {
                return Ok(data);
            }
            let path: String = t.get::<Option<String>>("key_path")?.ok_or_else(|| {
                mlua::Error::runtime("kumo.secret_load: give key_path (a file) or key_data")
            })?;
            let watched = lua
                .app_data_ref::<StateCtx>()
                .and_then(|c| c.overlay.secret(std::path::Path::new(&path)));
            let bytes = match watched {
                Some(b) => b,
                None => std::fs::read(&path).map_err(|e| {
                    mlua::Error::runtime(format!("kumo.secret_load: cannot read {path}: {e}"))
                })?,
            };
            lua.create_string(bytes)
        })?,
    )?;
    Ok(())
}

/// What `init` may call: listeners, spool, logs.
fn register_init(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set(
        "start_http_listener",
        lua.create_function(|lua, v: Value| {
            let ctx = init_ctx(lua, "kumo.start_http_listener")?;
            let l: HttpListener = from_lua(v, "kumo.start_http_listener")?;
            ctx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .http_listeners
                .push(l);
            Ok(())
        })?,
    )?;
    kumo.set(
        "define_spool",
        lua.create_function(|lua, v: Value| {
            let ctx = init_ctx(lua, "kumo.define_spool")?;
            let def: SpoolDef = from_lua(v, "kumo.define_spool")?;
            match def.name.as_str() {
                // Bodies and envelopes share one redb file, kept where 'data' says.
                "data" => {
                    ctx.lock().unwrap_or_else(|e| e.into_inner()).spool_dir = Some(def.path);
                    Ok(())
                }
                "meta" => Ok(()),
                other => Err(mlua::Error::runtime(format!(
                    "kumo.define_spool: unknown spool name '{other}' (expected 'data' or 'meta')"
                ))),
            }
        })?,
    )?;
    kumo.set(
        "start_esmtp_listener",
        lua.create_function(|lua, v: Value| {
            let ctx = init_ctx(lua, "kumo.start_esmtp_listener")?;
            let l = from_lua(v, "kumo.start_esmtp_listener")?;
            ctx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .esmtp_listeners
                .push(l);
            Ok(())
        })?,
    )?;
    kumo.set(
        "configure_local_logs",
        lua.create_function(|lua, v: Value| {
            let ctx = init_ctx(lua, "kumo.configure_local_logs")?;
            let cfg = from_lua(v, "kumo.configure_local_logs")?;
            let mut init = ctx.lock().unwrap_or_else(|e| e.into_inner());
            if init.local_logs.is_some() {
                return Err(mlua::Error::runtime(
                    "kumo.configure_local_logs may be called only once",
                ));
            }
            init.local_logs = Some(cfg);
            Ok(())
        })?,
    )?;
    kumo.set(
        "configure_log_hook",
        lua.create_function(|lua, v: Value| {
            let ctx = init_ctx(lua, "kumo.configure_log_hook")?;
            let cfg: LogHookConfig = from_lua(v, "kumo.configure_log_hook")?;
            let mut init = ctx.lock().unwrap_or_else(|e| e.into_inner());
            if init.log_hooks.iter().any(|h| h.name == cfg.name) {
                return Err(mlua::Error::runtime(format!(
                    "kumo.configure_log_hook: a hook named '{}' is already configured",
                    cfg.name
                )));
            }
            init.log_hooks.push(cfg);
            Ok(())
        })?,
    )?;
    Ok(())
}

/// A Lua state with the whole `kumo` module as global, for module tests.
#[cfg(test)]
pub(crate) fn test_lua() -> Lua {
    let lua = Lua::new();
    lua.globals().set("kumo", register(&lua).unwrap()).unwrap();
    lua
}
