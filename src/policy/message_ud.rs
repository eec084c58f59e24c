//! The message object as Lua sees it (KumoMTA's method names).

use crate::model::message::MessageRef;
use bytes::Bytes;
use mlua::{LuaSerdeExt, MetaMethod, UserData, UserDataFields, UserDataMethods, Value};

pub struct MessageUd(pub MessageRef);

impl UserData for MessageUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("id", |_, this, ()| Ok(this.0.id().simple().to_string()));
        m.add_method("get_data", |lua, this, ()| match this.0.data() {
            Some(d) => lua.create_string(d),
            // The engine loads the body before any event sees the message.
            None => Err(mlua::Error::runtime(
                "message:get_data(): the body is not loaded (a relay bug)",
            )),
        });
        m.add_method("set_data", |_, this, data: mlua::LuaString| {
            this.0.set_data(Bytes::copy_from_slice(&data.as_bytes()));
            Ok(())
        });
        m.add_method("get_meta", |lua, this, key: String| {
            match this.0.get_meta(&key) {
                Some(v) => lua.to_value(&v),
                None => Ok(Value::Nil),
            }
        });
        m.add_method("set_meta", |lua, this, (key, value): (String, Value)| {
            let json: serde_json::Value = lua
                .from_value(value)
                .map_err(|e| mlua::Error::runtime(format!("message:set_meta('{key}'): {e}")))?;
            this.0.set_meta(&key, json);
            Ok(())
        });
        m.add_method("sender", |_, this, ()| Ok(Address(this.0.sender())));
        m.add_method("recipient", |_, this, ()| Ok(Address(this.0.recipient())));
        m.add_method("queue_name", |_, this, ()| {
            this.0
                .queue_name()
                .map(|q| q.to_string())
                .map_err(mlua::Error::runtime)
        });
        m.add_method("num_attempts", |_, this, ()| Ok(this.0.num_attempts()));
        m.add_method("get_first_named_header_value", |_, this, name: String| {
            Ok(this.0.first_header(&name))
        });
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("Message({})", this.0.id().simple()))
        });
    }
}

/// An envelope address: `tostring(addr)`, `addr.user`, `addr.domain`, `addr.email`.
pub struct Address(pub String);

impl UserData for Address {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("email", |_, this| Ok(this.0.clone()));
        f.add_field_method_get("user", |_, this| {
            Ok(this
                .0
                .rsplit_once('@')
                .map_or(this.0.clone(), |(u, _)| u.to_owned()))
        });
        f.add_field_method_get("domain", |_, this| {
            Ok(this.0.rsplit_once('@').map(|(_, d)| d.to_owned()))
        });
    }
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.0.clone()));
        m.add_meta_method(
            MetaMethod::Eq,
            |_, this, other: mlua::UserDataRef<Address>| Ok(this.0 == other.0),
        );
        m.add_meta_function(MetaMethod::Concat, |_, (a, b): (Value, Value)| {
            let text = |v: &Value| -> mlua::Result<String> {
                match v {
                    Value::UserData(ud) => Ok(ud.borrow::<Address>()?.0.clone()),
                    other => Ok(other.to_string()?),
                }
            };
            Ok(format!("{}{}", text(&a)?, text(&b)?))
        });
    }
}
