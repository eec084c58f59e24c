//! Route values enter the rendered Lua only through this: a double-quoted
//! literal in which every byte that is not plain printable ASCII is a
//! three-digit decimal escape. No value can end the string or start code.

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

#[cfg(test)]
mod tests {
    use super::*;

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
