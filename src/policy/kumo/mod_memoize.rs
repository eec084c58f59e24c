//! `kumo.memoize(FUNCTION, {name, ttl, capacity})`, as KumoMTA documents
//! it: the wrapped function's result is kept per set of arguments for
//! `ttl`, at most `capacity` of them per cache (the eldest evicted first),
//! shared by every Lua state of the process. Arguments and results are
//! kept as data (serde), so a function or userdata in either is an error
//! naming the cache. With `invalidate_with_epoch = true` a new policy
//! version starts the cache afresh.

use mlua::{Function, Lua, LuaSerdeExt, MultiValue, Table, Value};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Bumped by each policy version loaded (KumoMTA's config epoch).
pub static EPOCH: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    #[serde(deserialize_with = "crate::model::config::de_duration")]
    ttl: Duration,
    capacity: usize,
    #[serde(default)]
    invalidate_with_epoch: bool,
}

struct Entry {
    value: serde_json::Value,
    expires: Instant,
    epoch: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
}

impl Cache {
    fn get(&self, key: &str, epoch: Option<u64>) -> Option<serde_json::Value> {
        let e = self.entries.get(key)?;
        let fresh = e.expires > Instant::now() && epoch.is_none_or(|ep| ep == e.epoch);
        fresh.then(|| e.value.clone())
    }

    fn put(&mut self, key: String, entry: Entry, capacity: usize) {
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }
}

static CACHES: LazyLock<Mutex<HashMap<String, Cache>>> = LazyLock::new(Default::default);

fn data(lua: &Lua, v: Value, what: &str, name: &str) -> mlua::Result<serde_json::Value> {
    lua.from_value(v).map_err(|e| {
        mlua::Error::runtime(format!(
            "kumo.memoize('{name}'): {what} must be data (strings, numbers, booleans, tables): {e}"
        ))
    })
}

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set(
        "memoize",
        lua.create_function(|lua, (func, params): (Function, Value)| {
            let p: Params = lua
                .from_value(params)
                .map_err(|e| mlua::Error::runtime(format!("kumo.memoize: {e}")))?;
            if p.capacity == 0 {
                return Err(mlua::Error::runtime(format!(
                    "kumo.memoize('{}'): capacity must be at least 1",
                    p.name
                )));
            }
            memoized(lua, func, p)
        })?,
    )
}

fn memoized(lua: &Lua, func: Function, p: Params) -> mlua::Result<Function> {
    let p = std::sync::Arc::new(p);
    lua.create_async_function(move |lua, args: MultiValue| {
        let (func, p) = (func.clone(), p.clone());
        async move {
            let key: Vec<serde_json::Value> = args
                .iter()
                .map(|a| data(&lua, a.clone(), "its arguments", &p.name))
                .collect::<mlua::Result<_>>()?;
            let key = serde_json::Value::Array(key).to_string();
            let epoch = EPOCH.load(Ordering::Relaxed);
            let want_epoch = p.invalidate_with_epoch.then_some(epoch);
            let hit = CACHES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&p.name)
                .and_then(|c| c.get(&key, want_epoch));
            if let Some(v) = hit {
                return lua.to_value(&v);
            }
            let result: Value = func.call_async(args).await?;
            let value = data(&lua, result.clone(), "its result", &p.name)?;
            let entry = Entry {
                value,
                expires: Instant::now() + p.ttl,
                epoch,
            };
            CACHES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(p.name.clone())
                .or_default()
                .put(key, entry, p.capacity);
            Ok(result)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::kumo::test_lua as lua;

    /// The reference page's pattern: the wrapped function runs once per
    /// set of arguments until the entry expires or is evicted.
    #[tokio::test]
    async fn results_are_kept_per_arguments_for_ttl_and_capacity() {
        let lua = lua();
        lua.load(
            r#"
            calls = 0
            local function check(user, password)
              calls = calls + 1
              return { ok = user == 'scott' and password == 'tiger', n = calls }
            end
            cached = kumo.memoize(check, { name = 'memo-test-auth', ttl = '5 minutes', capacity = 2 })
            assert(cached('scott', 'tiger').ok)
            assert(cached('scott', 'tiger').n == 1, 'a hit')
            assert(not cached('eve', 'x').ok)
            assert(calls == 2)
            cached('bob', 'y')               -- capacity 2: scott/tiger evicted
            assert(cached('scott', 'tiger').n == 4)
            short = kumo.memoize(check, { name = 'memo-test-ttl', ttl = '1ms', capacity = 10 })
            short('a', 'b')
            "#,
        )
        .exec_async()
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let calls: i64 = lua
            .load("local before = calls; short('a', 'b'); return calls - before")
            .eval_async()
            .await
            .unwrap();
        assert_eq!(calls, 1, "expired after its ttl");
    }

    #[tokio::test]
    async fn invalidate_with_epoch_starts_afresh_with_a_new_policy_version() {
        let lua = lua();
        lua.load(
            "n = 0
             epoch_cached = kumo.memoize(function() n = n + 1; return n end,
               { name = 'memo-test-epoch', ttl = '1h', capacity = 5, invalidate_with_epoch = true })
             epoch_cached()",
        )
        .exec_async()
        .await
        .unwrap();
        EPOCH.fetch_add(1, Ordering::Relaxed);
        let n: i64 = lua
            .load("return epoch_cached()")
            .eval_async()
            .await
            .unwrap();
        assert_eq!(n, 2, "computed again after the epoch moved");
    }

    #[tokio::test]
    async fn bad_parameters_and_non_data_values_are_named() {
        let lua = lua();
        for (code, want) in [
            (
                "kumo.memoize(print, { name = 'x', ttl = '1m' })",
                "missing field `capacity`",
            ),
            (
                "kumo.memoize(print, { name = 'x', ttl = 'soon', capacity = 1 })",
                "invalid duration",
            ),
            (
                "kumo.memoize(function() return print end, { name = 'fn', ttl = '1m', capacity = 1 })()",
                "kumo.memoize('fn'): its result must be data",
            ),
        ] {
            let e = lua.load(code).exec_async().await.unwrap_err().to_string();
            assert!(e.contains(want), "{code}: {e}");
        }
    }
}
