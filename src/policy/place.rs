//! Where in the policy a call came from, for messages that name `file:line`.

use mlua::Lua;

/// The Lua code calling the running Rust function (level 1 of the stack).
pub fn caller_place(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d.source();
        let file = src.short_src.as_deref().unwrap_or("?").to_owned();
        format!("{}:{}", file, d.current_line().unwrap_or(0))
    })
    .unwrap_or_else(|| "?".into())
}
