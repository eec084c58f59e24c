//! The pool of ready Lua states of one policy version.

use super::*;

/// States kept for reuse; more are created on demand and dropped when surplus.
const POOL_MAX: usize = 64;

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

/// How long any one event handler may run.
pub const EVENT_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl PooledState {
    /// Lua running in this state past `limit` from now is stopped with an error.
    pub fn limit(&self, limit: Option<std::time::Duration>) {
        if let Some(ctx) = self.app_data_ref::<StateCtx>() {
            ctx.limit.start(limit);
        }
    }

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
    pub fn acquire(self: &Arc<Self>) -> Result<PooledState, PolicyError> {
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let lua = match reused {
            Some(l) => l,
            None => self.new_state(None)?,
        };
        let state = PooledState {
            lua: Some(lua),
            policy: self.clone(),
        };
        state.limit(Some(EVENT_TIME_LIMIT));
        Ok(state)
    }
}
