//! `kumo.domain_map.new([MAP])`, as KumoMTA documents it: a dictionary
//! keyed by domain whose `*.parent` keys match any name below the parent
//! (not the parent itself); exact keys win over wildcards, the nearest
//! wildcard over farther ones. Values are kept as data.

use mlua::{Lua, LuaSerdeExt, MetaMethod, Table, UserData, UserDataMethods, Value};
use std::collections::HashMap;

#[derive(Default)]
struct DomainMap(HashMap<String, serde_json::Value>);

impl DomainMap {
    fn get(&self, domain: &str) -> Option<&serde_json::Value> {
        let domain = domain.to_ascii_lowercase();
        if let Some(v) = self.0.get(&domain) {
            return Some(v);
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(v) = self.0.get(&format!("*.{parent}")) {
                return Some(v);
            }
            rest = parent;
        }
        None
    }

    fn set(&mut self, lua: &Lua, key: String, value: Value) -> mlua::Result<()> {
        let key = key.to_ascii_lowercase();
        if value.is_nil() {
            self.0.remove(&key);
            return Ok(());
        }
        let v = lua.from_value(value).map_err(|e| {
            mlua::Error::runtime(format!(
                "kumo.domain_map: the value for '{key}' must be data: {e}"
            ))
        })?;
        self.0.insert(key, v);
        Ok(())
    }
}

impl UserData for DomainMap {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(MetaMethod::Index, |lua, map, key: String| {
            match map.get(&key) {
                Some(v) => lua.to_value(v),
                None => Ok(Value::Nil),
            }
        });
        m.add_meta_method_mut(
            MetaMethod::NewIndex,
            |lua, map, (key, value): (String, Value)| map.set(lua, key, value),
        );
        m.add_meta_method(MetaMethod::Len, |_, map, ()| Ok(map.0.len()));
    }
}

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "new",
        lua.create_function(|lua, seed: Option<Table>| {
            let mut map = DomainMap::default();
            if let Some(seed) = seed {
                for pair in seed.pairs::<String, Value>() {
                    let (k, v) = pair?;
                    map.set(lua, k, v)?;
                }
            }
            Ok(map)
        })?,
    )?;
    super::refuse_missing(lua, &t, "domain_map")?;
    kumo.set("domain_map", t)
}

#[cfg(test)]
mod tests {
    /// The examples of KumoMTA's `kumo.domain_map.new` page.
    #[test]
    fn as_kumomta_documents_it() {
        let lua = crate::policy::kumo::test_lua();
        lua.load(
            r#"
            local dmap = kumo.domain_map.new()
            dmap['foo'] = 'bar'
            assert(dmap['foo'] == 'bar')
            assert(dmap['not.set'] == nil)
            dmap['*.example.com'] = 'wildcard'
            assert(dmap['example.com'] == nil)
            assert(dmap['foo.example.com'] == 'wildcard')
            assert(dmap['a.b.example.com'] == 'wildcard')
            dmap['explicit.example.com'] = 'explicit'
            assert(dmap['explicit.example.com'] == 'explicit')
            local seeded = kumo.domain_map.new {
              ['*.woot.com'] = 123,
              ['example.com'] = 24,
            }
            seeded['*.example.com'] = 42
            assert(seeded['lemon.example.com'] == 42)
            assert(seeded['example.com'] == 24)
            assert(seeded['woot.com'] == nil)
            assert(seeded['aa.woot.com'] == 123)
            seeded['example.com'] = { max_age = '1h' }
            assert(seeded['EXAMPLE.com'].max_age == '1h')
            seeded['example.com'] = nil
            assert(seeded['example.com'] == nil)
            "#,
        )
        .exec()
        .unwrap();
        let err = lua
            .load("kumo.domain_map.new()['x'] = print")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kumo.domain_map: the value for 'x' must be data"),
            "{err}"
        );
    }
}
