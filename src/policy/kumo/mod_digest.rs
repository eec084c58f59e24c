//! `kumo.digest`: KumoMTA's hashes, as its Digest object (`hex`, `base64`,
//! …, `bytes` fields).

use super::mod_encode::Encoded;
use mlua::{Lua, LuaSerdeExt, Table, Value};

const DIGESTS: &[(&str, &ring::digest::Algorithm)] = &[
    ("sha1", &ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
    ("sha256", &ring::digest::SHA256),
    ("sha384", &ring::digest::SHA384),
    ("sha512", &ring::digest::SHA512),
    ("sha512_256", &ring::digest::SHA512_256),
];

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    for &(name, alg) in DIGESTS {
        t.set(
            name,
            lua.create_function(move |lua, args: mlua::Variadic<Value>| {
                let mut ctx = ring::digest::Context::new(alg);
                // Strings are bytes; anything else goes in as its JSON text.
                for v in args.iter() {
                    match v {
                        Value::String(s) => ctx.update(&s.as_bytes()),
                        other => {
                            let json: serde_json::Value = lua.from_value(other.clone())?;
                            ctx.update(json.to_string().as_bytes());
                        }
                    }
                }
                Ok(Encoded(ctx.finish().as_ref().to_vec()))
            })?,
        )?;
    }
    super::refuse_missing(lua, &t, "digest")?;
    kumo.set("digest", t)
}
