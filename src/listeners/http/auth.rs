//! Who may use the injection and admin APIs, KumoMTA's way: peers in
//! `trusted_hosts` may; everyone else authenticates with HTTP Basic, checked
//! by the policy's `http_server_validate_auth_basic(user, password)` (true
//! allows, false is 401, an error 500). The admin API takes only trusted
//! peers and the `admin_users` among authenticated ones (403 otherwise).

use super::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use std::net::SocketAddr;

/// Who made a request, as far as the API is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// From a trusted host: no credentials needed.
    Trusted,
    /// Authenticated with these credentials' user name.
    User(String),
}

/// `Authorization: Basic base64(user:password)` → (user, password).
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    Some((user.to_owned(), password.to_owned()))
}

fn error(status: StatusCode, message: String) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"amqp-relay\""),
        );
    }
    r
}

/// The caller, or the response that refuses it.
pub(super) async fn caller(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, Response> {
    if st.trusted.iter().any(|n| n.contains(&peer.ip())) {
        return Ok(Caller::Trusted);
    }
    let Some((user, password)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| parse_basic(v.as_bytes()))
    else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            format!(
                "{} is not a trusted host: HTTP Basic credentials are required",
                peer.ip()
            ),
        ));
    };
    use crate::policy::AuthVerdict;
    match st.engine.policy().http_auth_basic(&user, &password).await {
        Ok(AuthVerdict::Allow) => Ok(Caller::User(user)),
        Ok(AuthVerdict::Deny | AuthVerdict::NoHandler) => Err(error(
            StatusCode::UNAUTHORIZED,
            "the credentials are not valid".into(),
        )),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "http_server_validate_auth_basic failed");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the credentials could not be checked".into(),
            ))
        }
    }
}

/// Injection: trusted hosts and authenticated users.
pub(super) async fn authenticated(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller(&st, peer, req.headers()).await {
        Ok(c) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Err(r) => r,
    }
}

/// Administration: trusted hosts and `admin_users`.
pub(super) async fn administrator(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller(&st, peer, req.headers()).await {
        Ok(Caller::Trusted) => next.run(req).await,
        Ok(Caller::User(user)) if st.admin_users.contains(&user) => next.run(req).await,
        Ok(Caller::User(user)) => error(
            StatusCode::FORBIDDEN,
            format!("{user:?} may inject but not administer (admin_users)"),
        ),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_headers() {
        let h = |s: &str| format!("Basic {}", STANDARD.encode(s));
        assert_eq!(
            parse_basic(h("inject:s3cret:with:colons").as_bytes()),
            Some(("inject".into(), "s3cret:with:colons".into()))
        );
        assert_eq!(
            parse_basic(h("user").as_bytes()),
            Some(("user".into(), "".into()))
        );
        assert_eq!(
            parse_basic(format!("basic  {}", STANDARD.encode("a:b")).as_bytes()),
            Some(("a".into(), "b".into()))
        );
        for bad in [
            "Bearer abc".to_string(),
            "Basic".into(),
            "Basic !!!".into(),
            format!("Basic {}", STANDARD.encode([0xff, b':', b'x'])),
        ] {
            assert_eq!(parse_basic(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_basic(&[0xff, 0xfe]), None);
    }
}
