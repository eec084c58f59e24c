//! `kumo.log_error|warn|info|debug`.

use mlua::{Lua, Table, Value};

/// `kumo.log_error|warn|info|debug(ARGS)`: the arguments as `tostring`
/// gives them, space-separated, after the calling file and line, to the
/// relay's diagnostic log (target `lua`, so `RUST_LOG=lua=debug` shows debug).
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
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
                    let place = crate::policy::place::caller_place(lua);
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

#[cfg(test)]
mod tests {
    use super::super::test_lua as lua;

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
}
