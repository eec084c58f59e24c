//! `kumo.uuid`: parse, new_v4 and new_v7, as KumoMTA's Uuid object.

use mlua::{Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods};

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

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
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
    super::refuse_missing(lua, &t, "uuid")?;
    kumo.set("uuid", t)
}

#[cfg(test)]
mod tests {
    use super::super::test_lua as lua;

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
