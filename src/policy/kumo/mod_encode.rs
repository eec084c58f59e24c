//! `kumo.encode`: KumoMTA's base32/base64/hex `_encode` and `_decode`.

use data_encoding::Encoding;
use mlua::{Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods};

/// KumoMTA's encoding names; `hex` is lowercase out, either case in.
pub(super) const ENCODINGS: &[(&str, &Encoding, &Encoding)] = &[
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

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
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
    super::refuse_missing(lua, &t, "encode")?;
    kumo.set("encode", t)
}

/// Bytes with KumoMTA's encoded views as fields (`hex`, `base64`, …, `bytes`).
pub struct Encoded(pub(super) Vec<u8>);

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

#[cfg(test)]
mod tests {
    use super::super::test_lua as lua;

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
}
