//! The Lua policy: loading, a pool of ready Lua states, and the events the
//! engine fires into it.

mod call_limit;
mod calls;
mod config_ud;
pub mod conn_meta;
pub mod delivery;
pub mod events;
pub mod kumo;
pub mod message_ud;
pub mod overlay;
pub mod reject;
pub use calls::AuthVerdict;
pub use kumo::mod_amqp as amqp;
pub use kumo::{TimerLabel, USER_LUA_LATENCY};
pub use states::{EVENT_TIME_LIMIT, PooledState};
mod load;
mod place;
mod states;
mod unsupported;

use crate::model::config::{EgressPathConfig, QueueConfig};
use crate::model::listener_config::ListenerDomain;
use crate::model::message::MessageRef;
use crate::model::queue_name::QueueName;
use amqp::AmqpPool;
use kumo::{InitConfig, StateCtx};
use message_ud::MessageUd;
use mlua::{Lua, Value};
use reject::{Rejection, describe, find_rejection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Load { path: String, message: String },
    #[error("event '{event}': {message}")]
    Event { event: String, message: String },
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// A handler built a configuration `kumo.make_*` refuses.
    #[error("event '{event}': {message}")]
    BadConfig { event: String, message: String },
}

impl PolicyError {
    fn event(event: &str, err: mlua::Error) -> PolicyError {
        match find_rejection(&err) {
            Some(r) => PolicyError::Rejected(r),
            None if reject::is_bad_config(&err) => PolicyError::BadConfig {
                event: event.to_owned(),
                message: describe(&err),
            },
            None => PolicyError::Event {
                event: event.to_owned(),
                message: describe(&err),
            },
        }
    }
}

/// The domain [`Policy::probe`] asks about: reserved (RFC 2606), so no
/// policy routes real mail to it.
pub const PROBE_DOMAIN: &str = "probe.amqp-relay.invalid";

/// One loaded version of the policy.
pub struct Policy {
    path: PathBuf,
    source: String,
    /// Of the main file and every module it required at load.
    hash: String,
    amqp: Arc<AmqpPool>,
    pool: Mutex<Vec<Lua>>,
    modules: Modules,
    overlay: Overlay,
    loaded_at: std::time::SystemTime,
    /// Events with handlers, as the main chunk registered them: an event
    /// without one costs no Lua state per message.
    events: std::collections::HashSet<String>,
}

/// The Lua modules a policy version is made of, path → source, captured the
/// first time each is required: every state of one version runs the same code
/// even while the files change underneath (a reload makes a new version).
type Modules = Arc<Mutex<BTreeMap<PathBuf, String>>>;

pub use overlay::Overlay;

impl Policy {
    pub fn amqp(&self) -> Arc<AmqpPool> {
        self.amqp.clone()
    }

    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    pub fn overlay(&self) -> Overlay {
        self.overlay.clone()
    }

    /// Every source file of this version with the hash of its content.
    pub fn files(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(
            self.path.display().to_string(),
            crate::model::digest::plain(self.source.as_bytes()),
        );
        for (p, text) in self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.insert(
                p.display().to_string(),
                crate::model::digest::plain(text.as_bytes()),
            );
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }
}

#[cfg(test)]
mod extras_tests;
#[cfg(test)]
mod tests;
