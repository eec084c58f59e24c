//! `kumo.reject`: a Lua error that carries an SMTP-style status.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {message}")]
pub struct Rejection {
    pub code: u16,
    pub message: String,
}

impl Rejection {
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

/// A configuration a `kumo.make_*` call refused (an unknown key, a bad
/// value): the policy's mistake, found the same way at load and at run time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BadConfig(pub String);

/// Whether a [`BadConfig`] is in the chain of a Lua error.
pub fn is_bad_config(err: &mlua::Error) -> bool {
    match err {
        mlua::Error::CallbackError { cause, .. } => is_bad_config(cause),
        mlua::Error::WithContext { cause, .. } => is_bad_config(cause),
        mlua::Error::ExternalError(e) => e.downcast_ref::<BadConfig>().is_some(),
        _ => false,
    }
}

/// Finds a `kumo.reject` in the chain of a Lua error.
pub fn find_rejection(err: &mlua::Error) -> Option<Rejection> {
    match err {
        mlua::Error::CallbackError { cause, .. } => find_rejection(cause),
        mlua::Error::WithContext { cause, .. } => find_rejection(cause),
        mlua::Error::ExternalError(e) => {
            let e: &Arc<dyn std::error::Error + Send + Sync> = e;
            e.downcast_ref::<Rejection>().cloned()
        }
        _ => None,
    }
}

/// A Lua error as one readable line: the innermost cause with its location,
/// without the Rust-side wrapping.
pub fn describe(err: &mlua::Error) -> String {
    match err {
        // An error raised by a Rust function: say which Lua line called it.
        mlua::Error::CallbackError { cause, traceback } => match lua_caller(traceback) {
            Some(place) if !matches!(**cause, mlua::Error::CallbackError { .. }) => {
                format!("{place}: {}", describe(cause))
            }
            _ => describe(cause),
        },
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        mlua::Error::RuntimeError(m) => {
            m.split("\nstack traceback:").next().unwrap_or(m).to_owned()
        }
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The first Lua (not Rust) frame of a traceback, as `file:line`.
fn lua_caller(traceback: &str) -> Option<&str> {
    traceback
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("[C]") && !l.starts_with("stack traceback"))
        .find_map(|l| {
            let (place, _) = l.split_once(": in ")?;
            place.rsplit_once(':')?.1.parse::<u32>().ok()?;
            Some(place)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_rust_errors_at_the_calling_lua_line() {
        let tb = "stack traceback:\n\t[C]: in function 'kumo.make_queue_config'\n\t/p/typo.lua:2: in function </p/typo.lua:1>";
        assert_eq!(lua_caller(tb), Some("/p/typo.lua:2"));
        assert_eq!(lua_caller("stack traceback:\n\t[C]: in ?"), None);
    }
}
