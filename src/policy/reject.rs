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
        mlua::Error::CallbackError { cause, .. } => describe(cause),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        mlua::Error::RuntimeError(m) => m
            .split("\nstack traceback:")
            .next()
            .unwrap_or(m)
            .to_owned(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
