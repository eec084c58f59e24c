//! `kumo.serde` as KumoMTA has it: JSON, TOML and YAML parse, load (a file,
//! read from a watched ConfigMap before the disk) and encode; with the older
//! `kumo.json_*`, `kumo.toml_*` and `kumo.yaml_*` names it still accepts.
//! The parsers are serde_json, toml and serde_norway.

use super::StateCtx;
use mlua::{Lua, LuaSerdeExt, Table, Value};

#[derive(Clone, Copy)]
enum Format {
    Json,
    Toml,
    Yaml,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Toml => "toml",
            Format::Yaml => "yaml",
        }
    }

    fn parse(self, text: &str) -> Result<serde_json::Value, String> {
        match self {
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
            Format::Toml => toml::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => serde_norway::from_str(text).map_err(|e| e.to_string()),
        }
    }

    fn encode(self, v: &serde_json::Value, pretty: bool) -> Result<String, String> {
        match (self, pretty) {
            (Format::Json, false) => serde_json::to_string(v).map_err(|e| e.to_string()),
            (Format::Json, true) => serde_json::to_string_pretty(v).map_err(|e| e.to_string()),
            (Format::Toml, false) => toml::to_string(v).map_err(|e| e.to_string()),
            (Format::Toml, true) => toml::to_string_pretty(v).map_err(|e| e.to_string()),
            (Format::Yaml, _) => serde_norway::to_string(v).map_err(|e| e.to_string()),
        }
    }
}

fn parse(lua: &Lua, f: Format, call: &str, text: &str) -> mlua::Result<Value> {
    let v = f
        .parse(text)
        .map_err(|e| mlua::Error::runtime(format!("{call}: {e}")))?;
    lua.to_value(&v)
}

fn load(lua: &Lua, f: Format, call: &str, path: &str) -> mlua::Result<Value> {
    let watched = lua
        .app_data_ref::<StateCtx>()
        .and_then(|c| c.overlay.file(std::path::Path::new(path)));
    let text = match watched {
        Some(t) => t,
        None => std::fs::read_to_string(path)
            .map_err(|e| mlua::Error::runtime(format!("{call}: cannot read {path}: {e}")))?,
    };
    parse(lua, f, &format!("{call}({path})"), &text)
}

fn encode(lua: &Lua, f: Format, call: &str, v: Value, pretty: bool) -> mlua::Result<String> {
    let json: serde_json::Value = lua
        .from_value(v)
        .map_err(|e| mlua::Error::runtime(format!("{call}: {e}")))?;
    f.encode(&json, pretty)
        .map_err(|e| mlua::Error::runtime(format!("{call}: {e}")))
}

/// Sets `<fmt>_parse`, `_load`, `_encode` (and `_encode_pretty` but for
/// YAML, whose encoder is pretty already) on `t`; `prefix` names them in errors.
fn set_format(lua: &Lua, t: &Table, prefix: &'static str, f: Format) -> mlua::Result<()> {
    let n = f.name();
    t.set(
        format!("{n}_parse"),
        lua.create_function(move |lua, s: mlua::LuaString| {
            let text = s.to_str()?.to_owned();
            parse(lua, f, &format!("{prefix}.{n}_parse"), &text)
        })?,
    )?;
    t.set(
        format!("{n}_load"),
        lua.create_function(move |lua, path: String| {
            load(lua, f, &format!("{prefix}.{n}_load"), &path)
        })?,
    )?;
    t.set(
        format!("{n}_encode"),
        lua.create_function(move |lua, v: Value| {
            encode(lua, f, &format!("{prefix}.{n}_encode"), v, false)
        })?,
    )?;
    if !matches!(f, Format::Yaml) {
        t.set(
            format!("{n}_encode_pretty"),
            lua.create_function(move |lua, v: Value| {
                encode(lua, f, &format!("{prefix}.{n}_encode_pretty"), v, true)
            })?,
        )?;
    }
    Ok(())
}

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let serde = lua.create_table()?;
    for f in [Format::Json, Format::Toml, Format::Yaml] {
        set_format(lua, &serde, "kumo.serde", f)?;
        set_format(lua, kumo, "kumo", f)?;
    }
    kumo.set("serde", serde)?;
    // KumoMTA's oldest JSON name.
    kumo.set(
        "json_decode",
        lua.create_function(|lua, s: mlua::LuaString| {
            let text = s.to_str()?.to_owned();
            parse(lua, Format::Json, "kumo.json_decode", &text)
        })?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_load_and_encode_in_each_format() {
        let dir = tempfile::tempdir().unwrap();
        let toml_file = dir.path().join("listener_domains.toml");
        std::fs::write(&toml_file, "[\"example.com\"]\nrelay_to = true\n").unwrap();
        let yaml_file = dir.path().join("tenants.yaml");
        std::fs::write(&yaml_file, "tenants:\n  - name: acme\n    max: 3\n").unwrap();
        let lua = Lua::new();
        let kumo = lua.create_table().unwrap();
        register(&lua, &kumo).unwrap();
        lua.globals().set("kumo", kumo).unwrap();
        lua.globals()
            .set("TOML_FILE", toml_file.to_str().unwrap())
            .unwrap();
        lua.globals()
            .set("YAML_FILE", yaml_file.to_str().unwrap())
            .unwrap();
        lua.load(
            r#"
            local t = kumo.serde.toml_load(TOML_FILE)
            assert(t['example.com'].relay_to == true)
            assert(kumo.toml_load(TOML_FILE)['example.com'].relay_to == true)
            local y = kumo.serde.yaml_load(YAML_FILE)
            assert(y.tenants[1].name == 'acme' and y.tenants[1].max == 3)
            assert(kumo.serde.json_parse('{"a":[1,2]}').a[2] == 2)
            assert(kumo.json_parse('[true]')[1] == true)
            assert(kumo.json_decode('[7]')[1] == 7)
            local back = kumo.serde.toml_parse(kumo.serde.toml_encode({ name = 'x', n = 2 }))
            assert(back.name == 'x' and back.n == 2)
            local yb = kumo.serde.yaml_parse(kumo.serde.yaml_encode({ list = { 'a', 'b' } }))
            assert(yb.list[2] == 'b')
            assert(kumo.serde.toml_encode_pretty({ a = 1 }):find('a = 1'))
            assert(kumo.serde.yaml_encode_pretty == nil)
            "#,
        )
        .exec()
        .unwrap();
        let err = lua
            .load("kumo.serde.toml_parse('= broken')")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(err.contains("kumo.serde.toml_parse:"), "{err}");
        let err = lua
            .load("kumo.serde.yaml_load('/nonexistent/x.yaml')")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kumo.serde.yaml_load: cannot read /nonexistent/x.yaml"),
            "{err}"
        );
    }
}
