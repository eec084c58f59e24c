//! KumoMTA's connection metadata object (`conn_meta`), shared by an SMTP
//! session's event handlers: `get_meta`/`set_meta`, and (our extension)
//! plain field reads such as `conn_meta.tls`.

use mlua::{LuaSerdeExt, MetaMethod, UserData, UserDataMethods, Value};
use serde_json::Map;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct ConnMeta(Arc<Mutex<Map<String, serde_json::Value>>>);

impl ConnMeta {
    /// Sets a value the session itself keeps (peer, EHLO name, TLS, AUTH).
    pub fn set(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

fn lookup(lua: &mlua::Lua, m: &ConnMeta, key: &str) -> mlua::Result<Value> {
    match m.get(key) {
        Some(v) => lua.to_value(&v),
        None => Ok(Value::Nil),
    }
}

impl UserData for ConnMeta {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get_meta", |lua, c, key: String| lookup(lua, c, &key));
        m.add_method("set_meta", |lua, c, (key, value): (String, Value)| {
            let v: serde_json::Value = lua.from_value(value)?;
            c.set(&key, v);
            Ok(())
        });
        m.add_meta_method(MetaMethod::Index, |lua, c, key: String| {
            lookup(lua, c, &key)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_share_values_through_get_and_set_meta() {
        let lua = mlua::Lua::new();
        let meta = ConnMeta::default();
        meta.set("received_from", "10.0.0.1:4000");
        lua.globals().set("conn_meta", meta.clone()).unwrap();
        lua.load(
            "assert(conn_meta:get_meta 'received_from' == '10.0.0.1:4000')
             assert(conn_meta.received_from == '10.0.0.1:4000')
             assert(conn_meta:get_meta 'missing' == nil)
             conn_meta:set_meta('tenant', { name = 'acme' })",
        )
        .exec()
        .unwrap();
        assert_eq!(
            meta.get("tenant"),
            Some(serde_json::json!({"name": "acme"}))
        );
    }
}
