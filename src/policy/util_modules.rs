//! KumoMTA's utility modules `kumo.encode`, `kumo.digest` and `kumo.uuid`,
//! with the objects and field names its reference documents. A function of
//! these modules this relay lacks is named when touched, not a nil call.

use data_encoding::Encoding;
use mlua::{Lua, LuaSerdeExt, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};

/// KumoMTA's encoding names; `hex` is lowercase out, either case in.
const ENCODINGS: &[(&str, &Encoding, &Encoding)] = &[
    ("base32", &data_encoding::BASE32, &data_encoding::BASE32),
    (
        "base32_nopad",
        &data_encoding::BASE32_NOPAD,
        &data_encoding::BASE32_NOPAD,
    ),
    (
        "base32hex",
        &data_encoding::BASE32HEX,
        &data_encoding::BASE32HEX,
    ),
    (
        "base32hex_nopad",
        &data_encoding::BASE32HEX_NOPAD,
        &data_encoding::BASE32HEX_NOPAD,
    ),
    ("base64", &data_encoding::BASE64, &data_encoding::BASE64),
    (
        "base64_nopad",
        &data_encoding::BASE64_NOPAD,
        &data_encoding::BASE64_NOPAD,
    ),
    (
        "base64url",
        &data_encoding::BASE64URL,
        &data_encoding::BASE64URL,
    ),
    (
        "base64url_nopad",
        &data_encoding::BASE64URL_NOPAD,
        &data_encoding::BASE64URL_NOPAD,
    ),
    (
        "hex",
        &data_encoding::HEXLOWER,
        &data_encoding::HEXLOWER_PERMISSIVE,
    ),
];

const DIGESTS: &[(&str, &ring::digest::Algorithm)] = &[
    ("sha1", &ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
    ("sha256", &ring::digest::SHA256),
    ("sha384", &ring::digest::SHA384),
    ("sha512", &ring::digest::SHA512),
    ("sha512_256", &ring::digest::SHA512_256),
];

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    kumo.set("encode", encode_module(lua)?)?;
    kumo.set("digest", digest_module(lua)?)?;
    kumo.set("uuid", uuid_module(lua)?)?;
    let string = super::string_module::module(lua)?;
    refuse_missing(lua, &string, "string")?;
    kumo.set("string", string)?;
    let domain_map = super::domain_map::module(lua)?;
    refuse_missing(lua, &domain_map, "domain_map")?;
    kumo.set("domain_map", domain_map)?;
    let time = super::time_module::module(lua)?;
    refuse_missing(lua, &time, "time")?;
    kumo.set("time", time)?;
    register_logging(lua, kumo)
}

/// `kumo.log_error|warn|info|debug(ARGS)`: the arguments as `tostring`
/// gives them, space-separated, after the calling file and line, to the
/// relay's diagnostic log (target `lua`, so `RUST_LOG=lua=debug` shows debug).
fn register_logging(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    fn text(args: &mlua::Variadic<Value>) -> mlua::Result<String> {
        let parts: Vec<String> = args
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.to_string_lossy()),
                other => other.to_string(),
            })
            .collect::<mlua::Result<_>>()?;
        Ok(parts.join(" "))
    }
    macro_rules! level {
        ($name:literal, $mac:ident) => {
            kumo.set(
                $name,
                lua.create_function(|lua, args: mlua::Variadic<Value>| {
                    let place = super::events::caller_place(lua);
                    let text = text(&args)?;
                    tracing::$mac!(target: "lua", "{place}: {text}");
                    Ok(())
                })?,
            )?;
        };
    }
    level!("log_error", error);
    level!("log_warn", warn);
    level!("log_info", info);
    level!("log_debug", debug);
    Ok(())
}

/// Touching a function `module` lacks names it.
fn refuse_missing(lua: &Lua, module: &Table, name: &'static str) -> mlua::Result<()> {
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        lua.create_function(move |_, (_, key): (Table, String)| -> mlua::Result<Value> {
            Err(mlua::Error::runtime(format!(
                "kumo.{name}.{key} is not provided by amqp-relay"
            )))
        })?,
    )?;
    module.set_metatable(Some(meta))
}

fn encode_module(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for &(name, out, inp) in ENCODINGS {
        t.set(
            format!("{name}_encode"),
            lua.create_function(move |lua, s: mlua::LuaString| {
                lua.create_string(out.encode(&s.as_bytes()))
            })?,
        )?;
        t.set(
            format!("{name}_decode"),
            lua.create_function(move |lua, s: mlua::LuaString| {
                let bytes = inp
                    .decode(&s.as_bytes())
                    .map_err(|e| mlua::Error::runtime(format!("kumo.encode.{name}_decode: {e}")))?;
                lua.create_string(bytes)
            })?,
        )?;
    }
    refuse_missing(lua, &t, "encode")?;
    Ok(t)
}

/// Bytes with KumoMTA's encoded views as fields (`hex`, `base64`, …, `bytes`).
pub struct Encoded(Vec<u8>);

impl UserData for Encoded {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("bytes", |lua, this| lua.create_string(&this.0));
        for &(name, out, _) in ENCODINGS {
            f.add_field_method_get(name, move |_, this| Ok(out.encode(&this.0)));
        }
    }
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(data_encoding::HEXLOWER.encode(&this.0))
        });
    }
}

fn digest_module(lua: &Lua) -> mlua::Result<Table> {
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
    refuse_missing(lua, &t, "digest")?;
    Ok(t)
}

/// KumoMTA's Uuid object.
pub struct UuidUd(uuid::Uuid);

impl UserData for UuidUd {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("bytes", |lua, this| lua.create_string(this.0.as_bytes()));
        f.add_field_method_get("hyphenated", |_, this| Ok(this.0.hyphenated().to_string()));
        f.add_field_method_get("simple", |_, this| Ok(this.0.simple().to_string()));
        f.add_field_method_get("braced", |_, this| Ok(this.0.braced().to_string()));
        f.add_field_method_get("urn", |_, this| Ok(this.0.urn().to_string()));
    }
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.0.hyphenated().to_string())
        });
    }
}

fn uuid_module(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "parse",
        lua.create_function(|_, s: String| {
            uuid::Uuid::parse_str(&s)
                .map(UuidUd)
                .map_err(|e| mlua::Error::runtime(format!("kumo.uuid.parse({s:?}): {e}")))
        })?,
    )?;
    t.set(
        "new_v4",
        lua.create_function(|_, ()| Ok(UuidUd(uuid::Uuid::new_v4())))?,
    )?;
    t.set(
        "new_v7",
        lua.create_function(|_, ()| Ok(UuidUd(uuid::Uuid::now_v7())))?,
    )?;
    refuse_missing(lua, &t, "uuid")?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua() -> Lua {
        let lua = Lua::new();
        let kumo = lua.create_table().unwrap();
        register(&lua, &kumo).unwrap();
        lua.globals().set("kumo", kumo).unwrap();
        lua
    }

    #[test]
    fn as_kumomta_documents_them() {
        lua()
            .load(
                r#"
                -- kumo.digest: the docs' example values for 'hello'.
                local d = kumo.digest.sha1 'hello'
                assert(d.hex == 'aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d', d.hex)
                assert(tostring(d) == d.hex)
                assert(d.base64 == 'qvTGHdzF6KLavt4PO0gs2a6pQ00=', d.base64)
                assert(d.base64_nopad == 'qvTGHdzF6KLavt4PO0gs2a6pQ00')
                assert(d.base32 == 'VL2MMHO4YXUKFWV63YHTWSBM3GXKSQ2N', d.base32)
                assert(#d.bytes == 20)
                -- Several arguments, and a table as its JSON text.
                assert(kumo.digest.sha256('a', 'b').hex == kumo.digest.sha256('ab').hex)
                assert(kumo.digest.sha256({1, 2}).hex == kumo.digest.sha256('[1,2]').hex)
                -- kumo.encode round trips.
                for _, n in ipairs { 'base32', 'base32_nopad', 'base32hex', 'base64', 'base64url_nopad', 'hex' } do
                  local e = kumo.encode[n .. '_encode']('hi\0there')
                  assert(kumo.encode[n .. '_decode'](e) == 'hi\0there', n)
                end
                assert(kumo.encode.hex_encode('hi') == '6869')
                assert(kumo.encode.hex_decode('6A6B') == 'jk')
                -- kumo.uuid: the docs' example.
                local u = kumo.uuid.parse '69994630-3e27-11ef-91fc-cc28aa0a5c5a'
                assert(tostring(u) == '69994630-3e27-11ef-91fc-cc28aa0a5c5a')
                assert(u.simple == '699946303e2711ef91fccc28aa0a5c5a')
                assert(u.braced == '{69994630-3e27-11ef-91fc-cc28aa0a5c5a}')
                assert(u.urn == 'urn:uuid:69994630-3e27-11ef-91fc-cc28aa0a5c5a')
                assert(#u.bytes == 16)
                assert(kumo.uuid.new_v4().hyphenated ~= kumo.uuid.new_v4().hyphenated)
                "#,
            )
            .exec()
            .unwrap();
    }

    #[test]
    fn log_functions_write_the_callers_place_and_the_values() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            lua()
                .load("\nkumo.log_error('Logging something', true, false, 42)\nkumo.log_debug('hidden')")
                .set_name("@unix.lua")
                .exec()
                .unwrap();
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains("ERROR lua: unix.lua:2: Logging something true false 42"),
            "{out}"
        );
        assert!(!out.contains("hidden"), "debug is filtered at info: {out}");
    }

    #[test]
    fn bad_input_and_missing_functions_are_named() {
        let lua = lua();
        let err = lua
            .load("kumo.encode.base64_decode('***')")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(err.contains("kumo.encode.base64_decode"), "{err}");
        let err = lua
            .load("kumo.digest.md5('x')")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kumo.digest.md5 is not provided by amqp-relay"),
            "{err}"
        );
        let err = lua
            .load("kumo.uuid.parse('nope')")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(err.contains("kumo.uuid.parse(\"nope\")"), "{err}");
    }
}
