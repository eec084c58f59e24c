//! The message object as Lua sees it (KumoMTA's method names).

use crate::model::headers;
use crate::model::message::MessageRef;
use bytes::Bytes;
use mlua::{LuaSerdeExt, MetaMethod, UserData, UserDataFields, UserDataMethods, Value};

#[derive(Clone)]
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
        add_header_methods(m);
        // Looked up only for what is not a method above: name what is missing.
        m.add_meta_method(MetaMethod::Index, |_, _, key: String| -> mlua::Result<Value> {
            let why = match super::unsupported::MESSAGE_METHODS.iter().find(|(n, _)| *n == key) {
                Some((_, instead)) => {
                    format!("message:{key}() is a KumoMTA method amqp-relay does not provide ({instead})")
                }
                None => format!("the message object has no method or field {key:?}"),
            };
            Err(mlua::Error::runtime(why))
        });
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("Message({})", this.0.id().simple()))
        });
    }
}

/// The body, for a method that reads or edits the header.
fn data(this: &MessageUd, method: &str) -> mlua::Result<Bytes> {
    this.0.data().ok_or_else(|| {
        mlua::Error::runtime(format!(
            "message:{method}(): the body is not loaded (a relay bug)"
        ))
    })
}

/// `name`, and `value` unless encoded, as a header field may hold them.
fn checked(method: &str, name: &str, value: &str, encode: bool) -> mlua::Result<()> {
    let fail = |e: String| mlua::Error::runtime(format!("message:{method}(): {e}"));
    headers::check_name(name).map_err(fail)?;
    if !encode {
        headers::check_value(value).map_err(fail)?;
    }
    Ok(())
}

/// KumoMTA's header methods of the message object.
fn add_header_methods<M: UserDataMethods<MessageUd>>(m: &mut M) {
    type Edit = (String, String, Option<bool>);
    m.add_method("prepend_header", |_, this, (name, value, encode): Edit| {
        let encode = encode.unwrap_or(false);
        checked("prepend_header", &name, &value, encode)?;
        let d = data(this, "prepend_header")?;
        this.0
            .set_data(headers::prepend(&d, &name, &value, encode).into());
        Ok(())
    });
    m.add_method("append_header", |_, this, (name, value, encode): Edit| {
        let encode = encode.unwrap_or(false);
        checked("append_header", &name, &value, encode)?;
        let d = data(this, "append_header")?;
        this.0
            .set_data(headers::append(&d, &name, &value, encode).into());
        Ok(())
    });
    m.add_method("remove_all_named_headers", |_, this, name: String| {
        let d = data(this, "remove_all_named_headers")?;
        if let Some(new) = headers::remove_named(&d, &name) {
            this.0.set_data(new.into());
        }
        Ok(())
    });
    m.add_method("get_all_named_header_values", |_, this, name: String| {
        Ok(headers::all_named(
            &data(this, "get_all_named_header_values")?,
            &name,
        ))
    });
    m.add_method("import_x_headers", |_, this, names: Option<Vec<String>>| {
        let d = data(this, "import_x_headers")?;
        for (key, value) in headers::x_values(&d, names.as_deref()) {
            this.0.set_meta(&key, serde_json::Value::String(value));
        }
        Ok(())
    });
    m.add_method("remove_x_headers", |_, this, names: Option<Vec<String>>| {
        let d = data(this, "remove_x_headers")?;
        if let Some(new) = headers::remove_x(&d, names.as_deref()) {
            this.0.set_data(new.into());
        }
        Ok(())
    });
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
