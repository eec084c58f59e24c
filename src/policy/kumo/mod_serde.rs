//! `kumo.serde` as KumoMTA has it: JSON, TOML and YAML parse, load (a file,
//! read from a watched ConfigMap before the disk) and encode; with the older
//! `kumo.json_*`, `kumo.toml_*` and `kumo.yaml_*` names it still accepts.
//! The parsers are serde_json (after json_comments turns comments into
//! spaces, as KumoMTA's do), toml and serde_norway.

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
            // Comments become spaces, so error positions stay the user's.
            Format::Json => {
                serde_json::from_reader(json_comments::StripComments::new(text.as_bytes()))
                    .map_err(|e| e.to_string())
            }
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

fn encode(
    lua: &Lua,
    f: Format,
    call: &dyn Fn() -> String,
    v: Value,
    pretty: bool,
) -> mlua::Result<String> {
    if let Format::Json = f
        && let Some(text) = plain_json(&v, pretty)
    {
        return Ok(text);
    }
    let json: serde_json::Value = lua
        .from_value(v)
        .map_err(|e| mlua::Error::runtime(format!("{}: {e}", call())))?;
    f.encode(&json, pretty)
        .map_err(|e| mlua::Error::runtime(format!("{}: {e}", call())))
}

/// JSON of a value made only of nil, booleans, numbers, UTF-8 strings and
/// tables with string keys and no array part or metatable (what policies
/// encode per message, e.g. a publish result), written without building a
/// `serde_json::Value` first. Keys come sorted byte-wise, as serde_json's map
/// sorts them, so the text is the one the general path writes; any other
/// shape gives `None` and takes the general path.
fn plain_json(v: &Value, pretty: bool) -> Option<String> {
    let plain = Plain { v, depth: 0 };
    let text = if pretty {
        serde_json::to_string_pretty(&plain)
    } else {
        serde_json::to_string(&plain)
    };
    text.ok()
}

/// Nesting past this takes the general path (and its recursion limit).
const PLAIN_DEPTH: usize = 32;

struct Plain<'a> {
    v: &'a Value,
    depth: usize,
}

impl serde::Serialize for Plain<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let other = || S::Error::custom("not a plain value");
        match self.v {
            Value::Nil => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Number(n) => s.serialize_f64(*n),
            Value::String(x) => s.serialize_str(&x.to_str().map_err(|_| other())?),
            Value::Table(t)
                if self.depth < PLAIN_DEPTH && t.metatable().is_none() && t.raw_len() == 0 =>
            {
                let mut pairs = Vec::new();
                for pair in t.pairs::<Value, Value>() {
                    match pair.map_err(|_| other())? {
                        (Value::String(k), v) => pairs.push((k, v)),
                        _ => return Err(other()),
                    }
                }
                pairs.sort_by_key(|p| p.0.as_bytes());
                let mut m = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in &pairs {
                    let v = Plain {
                        v,
                        depth: self.depth + 1,
                    };
                    m.serialize_entry(&*k.to_str().map_err(|_| other())?, &v)?;
                }
                m.end()
            }
            _ => Err(other()),
        }
    }
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
            encode(lua, f, &|| format!("{prefix}.{n}_encode"), v, false)
        })?,
    )?;
    if !matches!(f, Format::Yaml) {
        t.set(
            format!("{n}_encode_pretty"),
            lua.create_function(move |lua, v: Value| {
                encode(lua, f, &|| format!("{prefix}.{n}_encode_pretty"), v, true)
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

    /// KumoMTA's kumo.json_parse reference: "will accept C style block
    /// comments, C++ style single line comments and shell style single line
    /// comments ... treated as though they were spaces".
    #[test]
    fn json_comments_are_spaces_as_kumomta_documents() {
        let lua = crate::policy::kumo::test_lua();
        lua.load(
            r#"
            local text = [[
              # shell style
              {
                // C++ style
                "a": /* C style */ 1,
                "url": "http://x/#not-a-comment // nor this"
              }
            ]]
            for _, f in ipairs { kumo.serde.json_parse, kumo.json_parse, kumo.json_decode } do
              local v = f(text)
              assert(v.a == 1, 'a')
              assert(v.url == 'http://x/#not-a-comment // nor this', v.url)
            end
            "#,
        )
        .exec()
        .unwrap();
        let err = lua
            .load("kumo.serde.json_parse('{\"a\": /* open')")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(err.contains("kumo.serde.json_parse: "), "{err}");
    }

    #[test]
    fn parse_load_and_encode_in_each_format() {
        let dir = tempfile::tempdir().unwrap();
        let toml_file = dir.path().join("listener_domains.toml");
        std::fs::write(&toml_file, "[\"example.com\"]\nrelay_to = true\n").unwrap();
        let yaml_file = dir.path().join("tenants.yaml");
        std::fs::write(&yaml_file, "tenants:\n  - name: acme\n    max: 3\n").unwrap();
        let lua = crate::policy::kumo::test_lua();
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

    /// The general path's text, for comparison.
    fn general_json(lua: &Lua, v: &Value, pretty: bool) -> Option<String> {
        let json: serde_json::Value = lua.from_value(v.clone()).ok()?;
        Some(if pretty {
            serde_json::to_string_pretty(&json).unwrap()
        } else {
            serde_json::to_string(&json).unwrap()
        })
    }

    #[test]
    fn plain_json_writes_what_the_general_path_writes() {
        let lua = Lua::new();
        let plain: Vec<Value> = lua
            .load(
                r#"return {
                  { status = 'Ack', reply_code = 312, reply_text = 'NO_ROUTE' },
                  { zeta = 1, alpha = { b = true, a = 'x"y\n\u{e9}' }, mid = 2.5, n = 0/0, big = 1e300, i = -7, f = 3.0 },
                  {}, 'text', 42, 1.5, false, { ['\u{e9}'] = 1, ['z'] = 2, ['Z'] = 3, [''] = 4 },
                }"#,
            )
            .eval::<Vec<Value>>()
            .unwrap();
        for v in &plain {
            for pretty in [false, true] {
                let fast = plain_json(v, pretty).expect("a plain value takes the direct path");
                assert_eq!(Some(fast), general_json(&lua, v, pretty), "{v:?}");
            }
        }
        assert_eq!(plain_json(&Value::Nil, false).as_deref(), Some("null"));
        // Other shapes take the general path (which knows arrays, integer
        // keys and its own errors); the direct one declines them.
        let other: Vec<Value> = lua
            .load(
                r#"return {
                  { 1, 2 }, { [1] = 'a', x = 'b' }, { [2] = 'a' }, { f = print }, { s = '\xff' },
                  setmetatable({}, { __index = {} }), { nested = { 1 } },
                }"#,
            )
            .eval::<Vec<Value>>()
            .unwrap();
        for v in &other {
            assert_eq!(plain_json(v, false), None, "{v:?}");
        }
        let lua = crate::policy::kumo::test_lua();
        let arrays: String = lua
            .load("return kumo.json_encode({ l = { 1, 2 }, e = {} })")
            .eval()
            .unwrap();
        assert_eq!(arrays, r#"{"e":{},"l":[1,2]}"#);
        for (code, why) in [
            ("{ f = print }", "unsupported value type"),
            ("{ m = { [2] = 'a' } }", "expected a string key"),
        ] {
            let err = lua
                .load(format!("return kumo.json_encode({code})"))
                .exec()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("kumo.json_encode: ") && err.contains(why),
                "{err}"
            );
        }
    }
}
