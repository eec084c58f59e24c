//! The Lua policy: loading, a pool of ready Lua states, and the events the
//! engine fires into it.

pub mod amqp;
pub mod config;
pub mod events;
pub mod kumo;
pub mod message_ud;
pub mod reject;

use crate::engine::message::MessageRef;
use crate::engine::queue_name::QueueName;
use amqp::AmqpPool;
use config::{EgressPathConfig, QueueConfig};
use kumo::{EgressPathUd, InitConfig, QueueConfigUd, StateCtx};
use message_ud::MessageUd;
use mlua::{Lua, Value};
use reject::{Rejection, describe, find_rejection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `require 'policy-extras.log_hooks'`, as in KumoMTA.
const LOG_HOOKS_LUA: &str = include_str!("log_hooks.lua");

/// States kept for reuse; more are created on demand and dropped when surplus.
const POOL_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Load { path: String, message: String },
    #[error("event '{event}': {message}")]
    Event { event: String, message: String },
    #[error("rejected: {0}")]
    Rejected(Rejection),
}

impl PolicyError {
    fn event(event: &str, err: mlua::Error) -> PolicyError {
        match find_rejection(&err) {
            Some(r) => PolicyError::Rejected(r),
            None => PolicyError::Event {
                event: event.to_owned(),
                message: describe(&err),
            },
        }
    }
}

/// One loaded version of the policy.
pub struct Policy {
    path: PathBuf,
    source: String,
    hash: String,
    amqp: Arc<AmqpPool>,
    pool: Mutex<Vec<Lua>>,
}

/// A Lua state borrowed from the pool; it goes back on drop unless discarded.
pub struct PooledState {
    lua: Option<Lua>,
    policy: Arc<Policy>,
}

impl std::ops::Deref for PooledState {
    type Target = Lua;
    fn deref(&self) -> &Lua {
        self.lua.as_ref().expect("present until drop or discard")
    }
}

impl PooledState {
    /// Drops the state instead of reusing it (after a timeout or an error
    /// that may have left it half-way through something).
    pub fn discard(mut self) {
        self.lua = None;
    }
}

impl Drop for PooledState {
    fn drop(&mut self) {
        if let Some(lua) = self.lua.take() {
            let mut pool = self.policy.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(lua);
            }
        }
    }
}

impl Policy {
    /// Reads and runs the policy once; any error names the file and line.
    pub fn load(path: &Path, amqp: Arc<AmqpPool>) -> Result<Arc<Policy>, PolicyError> {
        let source = std::fs::read_to_string(path).map_err(|e| PolicyError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let hash = content_hash(source.as_bytes());
        let policy = Arc::new(Policy {
            path: path.to_owned(),
            source,
            hash,
            amqp,
            pool: Mutex::new(Vec::new()),
        });
        let first = policy.new_state(None)?;
        policy
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(first);
        Ok(policy)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    fn load_err(&self, e: &mlua::Error) -> PolicyError {
        PolicyError::Load {
            path: self.path.display().to_string(),
            message: describe(e),
        }
    }

    fn new_state(&self, init: Option<Arc<Mutex<InitConfig>>>) -> Result<Lua, PolicyError> {
        let lua = Lua::new();
        lua.set_app_data(StateCtx {
            amqp: self.amqp.clone(),
            init,
        });
        let setup = || -> mlua::Result<()> {
            let kumo = kumo::register(&lua)?;
            let package: mlua::Table = lua.globals().get("package")?;
            let loaded: mlua::Table = package.get("loaded")?;
            loaded.set("kumo", &kumo)?;
            lua.globals().set("kumo", kumo)?;
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let dir = dir.to_string_lossy().replace(';', "");
            package.set("path", format!("{dir}/?.lua;{dir}/?/init.lua"))?;
            // Native modules are not loaded into the relay.
            package.set("cpath", "")?;
            // Bundled helpers KumoMTA policies `require`.
            let preload: mlua::Table = package.get("preload")?;
            preload.set(
                "policy-extras.log_hooks",
                lua.load(LOG_HOOKS_LUA)
                    .set_name("=policy-extras.log_hooks")
                    .into_function()?,
            )?;
            Ok(())
        };
        setup().map_err(|e| self.load_err(&e))?;
        // '@' makes Lua report positions as "path:line:".
        lua.load(&self.source)
            .set_name(format!("@{}", self.path.display()))
            .exec()
            .map_err(|e| self.load_err(&e))?;
        Ok(lua)
    }

    pub fn acquire(self: &Arc<Self>) -> Result<PooledState, PolicyError> {
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let lua = match reused {
            Some(l) => l,
            None => self.new_state(None)?,
        };
        Ok(PooledState {
            lua: Some(lua),
            policy: self.clone(),
        })
    }

    pub fn defines(self: &Arc<Self>, event: &str) -> Result<bool, PolicyError> {
        let lua = self.acquire()?;
        Ok(events::defined(&lua, event))
    }

    /// Runs `pre_init` and `init` in a state of their own and returns what they
    /// configured (`has_init` says whether the policy defines `init`).
    pub async fn run_init(&self) -> Result<InitConfig, PolicyError> {
        let cfg = Arc::new(Mutex::new(InitConfig::default()));
        let lua = self.new_state(Some(cfg.clone()))?;
        let has_init = events::defined(&lua, "init");
        for event in ["pre_init", "init"] {
            for h in events::handlers(&lua, event).map_err(|e| self.load_err(&e))? {
                h.call_async::<()>(())
                    .await
                    .map_err(|e| PolicyError::event(event, e))?;
            }
        }
        let mut out = cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.has_init = has_init;
        Ok(out)
    }

    /// `get_queue_config(domain, tenant, campaign, routing_domain)`; the first
    /// handler that returns a config wins; none means KumoMTA's default (SMTP).
    pub async fn queue_config(self: &Arc<Self>, q: &QueueName) -> Result<QueueConfig, PolicyError> {
        const EVENT: &str = "get_queue_config";
        let lua = self.acquire()?;
        for h in events::handlers(&lua, EVENT).map_err(|e| PolicyError::event(EVENT, e))? {
            let v: Value = h
                .call_async((
                    q.domain.as_str(),
                    q.tenant.as_deref(),
                    q.campaign.as_deref(),
                    q.routing_domain.as_deref(),
                ))
                .await
                .map_err(|e| PolicyError::event(EVENT, e))?;
            match v {
                Value::Nil => continue,
                Value::UserData(ud) => {
                    let cfg = ud
                        .borrow::<QueueConfigUd>()
                        .map_err(|_| PolicyError::Event {
                            event: EVENT.into(),
                            message: "the handler must return kumo.make_queue_config{…}".into(),
                        })?;
                    return Ok(cfg.0.clone());
                }
                other => {
                    return Err(PolicyError::Event {
                        event: EVENT.into(),
                        message: format!(
                            "the handler returned a {}; expected kumo.make_queue_config{{…}}",
                            other.type_name()
                        ),
                    });
                }
            }
        }
        Ok(QueueConfig::default())
    }

    /// `get_egress_path_config(routing_domain, egress_source, site_name)`.
    pub async fn egress_path_config(
        self: &Arc<Self>,
        q: &QueueName,
    ) -> Result<EgressPathConfig, PolicyError> {
        const EVENT: &str = "get_egress_path_config";
        let lua = self.acquire()?;
        let Some(h) = events::handlers(&lua, EVENT)
            .map_err(|e| PolicyError::event(EVENT, e))?
            .into_iter()
            .next()
        else {
            return Ok(EgressPathConfig::default());
        };
        let domain = q.routing_domain.as_deref().unwrap_or(&q.domain);
        let v: Value = h
            .call_async((domain, "unspecified", q.to_string()))
            .await
            .map_err(|e| PolicyError::event(EVENT, e))?;
        match v {
            Value::Nil => Ok(EgressPathConfig::default()),
            Value::UserData(ud) => ud
                .borrow::<EgressPathUd>()
                .map(|c| c.0.clone())
                .map_err(|_| PolicyError::Event {
                    event: EVENT.into(),
                    message: "the handler must return kumo.make_egress_path{…}".into(),
                }),
            other => Err(PolicyError::Event {
                event: EVENT.into(),
                message: format!(
                    "the handler returned a {}; expected kumo.make_egress_path{{…}}",
                    other.type_name()
                ),
            }),
        }
    }

    /// Runs a reception hook (`http_message_generated`, `smtp_server_message_received`)
    /// on a message before it is spooled; `kumo.reject` there refuses it.
    pub async fn message_hook(
        self: &Arc<Self>,
        event: &str,
        msg: &MessageRef,
    ) -> Result<(), PolicyError> {
        let lua = self.acquire()?;
        for h in events::handlers(&lua, event).map_err(|e| PolicyError::event(event, e))? {
            h.call_async::<()>(MessageUd(msg.clone()))
                .await
                .map_err(|e| PolicyError::event(event, e))?;
        }
        Ok(())
    }
}

impl Policy {
    /// `should_enqueue_log_record(msg, hook_name)`: the first non-nil answer wins; none means no.
    pub async fn should_enqueue_log_record(
        self: &Arc<Self>,
        msg: &MessageRef,
        hook: &str,
    ) -> Result<bool, PolicyError> {
        const EVENT: &str = "should_enqueue_log_record";
        let lua = self.acquire()?;
        for h in events::handlers(&lua, EVENT).map_err(|e| PolicyError::event(EVENT, e))? {
            let v: Value = h
                .call_async((MessageUd(msg.clone()), hook))
                .await
                .map_err(|e| PolicyError::event(EVENT, e))?;
            match v {
                Value::Nil => continue,
                Value::Boolean(b) => return Ok(b),
                other => {
                    return Err(PolicyError::Event {
                        event: EVENT.into(),
                        message: format!(
                            "the handler returned a {}; expected a boolean",
                            other.type_name()
                        ),
                    });
                }
            }
        }
        Ok(false)
    }
}

pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
