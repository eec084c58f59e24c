//! Route values enter the rendered Lua only through this: a double-quoted
//! literal in which every byte that is not plain printable ASCII is a
//! three-digit decimal escape. No value can end the string or start code.
//! Structures go through serde into JSON values and come out as Lua table
//! constructors whose keys and strings are all such literals.

pub fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            // Printable ASCII other than the two above stands for itself.
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Lua constructor: objects become `{ ["k"] = v }` (null
/// members left out), arrays `{ v1, v2 }`. Top-level members go one per
/// line, indented by `indent`, so a rendered policy stays readable.
pub fn lua_value(v: &serde_json::Value, indent: &str) -> String {
    let mut out = String::new();
    match v {
        serde_json::Value::Object(m) if !indent.is_empty() => {
            out.push_str("{\n");
            for (k, v) in m.iter().filter(|(_, v)| !v.is_null()) {
                out.push_str(&format!("{indent}  [{}] = ", lua_str(k)));
                write_value(&mut out, v);
                out.push_str(",\n");
            }
            out.push_str(indent);
            out.push('}');
        }
        v => write_value(&mut out, v),
    }
    out
}

fn write_value(out: &mut String, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // JSON numbers are finite; Lua reads both forms.
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&lua_str(s)),
        Value::Array(a) => {
            out.push('{');
            for (i, v) in a.iter().enumerate() {
                out.push_str(if i == 0 { " " } else { ", " });
                write_value(out, v);
            }
            out.push_str(" }");
        }
        Value::Object(m) => {
            out.push('{');
            for (k, v) in m.iter().filter(|(_, v)| !v.is_null()) {
                out.push_str(&format!(" [{}] = ", lua_str(k)));
                write_value(out, v);
                out.push(',');
            }
            out.push_str(" }");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::LuaSerdeExt;

    #[test]
    fn values_come_back_as_the_same_structure() {
        let v = serde_json::json!({
            "s": "a\"]]\n", "n": 42, "neg": -7, "f": 1.5, "t": true, "gone": null,
            "list": ["x", 1, false], "empty": {}, "nested": {"k\"": {"deep": ["y"]}}
        });
        for indent in ["", "  "] {
            let lua = mlua::Lua::new();
            let code = format!("return {}", lua_value(&v, indent));
            let back: mlua::Value = lua.load(&code).eval().unwrap();
            let mut json: serde_json::Value = lua.from_value(back).unwrap();
            // Lua has no empty-object/array distinction.
            json["empty"] = serde_json::json!({});
            let mut want = v.clone();
            want.as_object_mut().unwrap().remove("gone");
            assert_eq!(json, want, "{code}");
        }
    }

    fn roundtrip(s: &str) {
        let lua = mlua::Lua::new();
        let code = format!("return {}", lua_str(s));
        let back: mlua::LuaString = lua
            .load(&code)
            .eval()
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(&*back.as_bytes(), s.as_bytes(), "{s:?}");
    }

    #[test]
    fn hostile_strings_come_back_unchanged() {
        for s in [
            "",
            "plain",
            "\"",
            "\\",
            "\\\"",
            "]]",
            "]=]",
            "\n-- comment",
            "a\0b",
            "\"..os.exit(1)..\"",
            "'); os.execute('touch /tmp/x') --",
            "\\0",
            "\\\n",
            "1\u{7}2",
            "é漢字🙂",
            "\r\n\t\x0b\x0c",
            "\u{7f}",
        ] {
            roundtrip(s);
        }
        roundtrip(&"x\"]]\\".repeat(10_000));
    }

    #[test]
    fn every_byte_value() {
        let all: String = (0u8..128).map(char::from).collect();
        roundtrip(&all);
        let hi: String = (128u32..2048).filter_map(char::from_u32).collect();
        roundtrip(&hi);
    }
}
