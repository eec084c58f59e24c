//! The HTTP listener: KumoMTA's injection API, the admin API, health and
//! metrics. Who may call what is decided in `auth`; the socket, TLS and
//! the bounds on connections in `server`.

mod admin;
pub mod auth;
mod injection;
pub mod server;

use crate::engine::Engine;
use crate::model::listener_config::HttpListener;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use serde_json::json;
use std::sync::Arc;

/// Cloned by axum for every request (by each layer and the handler): one
/// reference count, not one per field.
#[derive(Clone)]
struct AppState(Arc<Shared>);

struct Shared {
    engine: Arc<Engine>,
    trusted: Vec<IpNet>,
    admin_users: Vec<String>,
    /// For the `Received:` header of injected messages.
    hostname: String,
    tls: bool,
    /// What injection requests may hold and build.
    requests: injection::RequestBounds,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What a listener's settings make (trusted networks, TLS), or what is wrong
/// with them, before anything is bound: `amqp-relay check` says it too.
pub fn checked(
    cfg: &HttpListener,
) -> Result<(Vec<IpNet>, Option<tokio_rustls::TlsAcceptor>), String> {
    let what = |e: String| format!("http listener {}: {e}", cfg.listen);
    let trusted = crate::listeners::net::parse_nets(&cfg.trusted_hosts)
        .map_err(|e| what(format!("trusted_hosts: {e}")))?;
    let tls = match (cfg.use_tls, &cfg.tls_certificate, &cfg.tls_private_key) {
        (true, Some(cert), Some(key)) => {
            Some(crate::listeners::net::tls_acceptor(cert, key).map_err(what)?)
        }
        (true, _, _) => {
            return Err(what(
                "use_tls needs tls_certificate and tls_private_key (this relay makes no self-signed certificate)"
                    .into(),
            ));
        }
        (false, None, None) => None,
        (false, _, _) => {
            return Err(what(
                "tls_certificate and tls_private_key are given but use_tls is not true".into(),
            ));
        }
    };
    Ok((trusted, tls))
}

/// A listener's routes and what they need, checked before anything is bound.
pub struct Listener {
    pub cfg: HttpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listener {
    pub fn new(cfg: HttpListener, engine: Arc<Engine>) -> Result<Listener, String> {
        let (trusted, tls) = checked(&cfg)?;
        Ok(Listener {
            state: AppState(Arc::new(Shared {
                engine,
                trusted,
                admin_users: cfg.admin_users.clone(),
                hostname: cfg.hostname.clone().unwrap_or_else(|| {
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "amqp-relay".into())
                }),
                tls: cfg.use_tls,
                requests: injection::RequestBounds::new(&cfg),
            })),
            tls,
            cfg,
        })
    }

    fn router(&self) -> Router {
        let state = self.state.clone();
        let mw = |f| axum::middleware::from_fn_with_state(state.clone(), f);
        let inject = Router::new()
            .route("/api/inject/v1", post(injection::inject))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::authenticated,
            ));
        let admin = Router::new()
            .route(
                "/api/admin/bump-config-epoch",
                post(admin::bump_config_epoch),
            )
            .route("/api/admin/queue-summary/v1", get(admin::queue_summary))
            .route("/api/admin/bounce/v1", post(admin::bounce))
            .route(
                "/api/admin/suspend/v1",
                post(admin::suspend)
                    .get(admin::list_suspensions)
                    .delete(admin::resume),
            )
            .route_layer(mw(auth::administrator));
        Router::new()
            .route("/api/check-liveness/v1", get(live))
            .route("/healthz", get(live))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .route("/api/policy", get(policy_report))
            .merge(inject)
            .merge(admin)
            .layer(axum::extract::DefaultBodyLimit::max(
                self.cfg.request_body_limit,
            ))
            .with_state(state)
    }

    /// Serves until the engine stops.
    pub async fn serve(self, socket: tokio::net::TcpListener) -> std::io::Result<()> {
        let stop = self.state.engine.shutdown_signal();
        let limits = server::Limits {
            max_connections: self.cfg.max_connections.max(1),
            header_timeout: self.cfg.header_timeout,
            request_timeout: self.cfg.request_timeout,
            tls: self.tls.clone(),
        };
        server::serve(socket, self.router(), self.state.clone(), limits, stop).await
    }
}

/// The reply to a request that took longer than `request_timeout`.
fn timed_out(limit: std::time::Duration) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        Json(json!({ "error": format!("the request took longer than {limit:?}") })),
    )
        .into_response()
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(st): State<AppState>) -> Response {
    if !st.engine.is_receiving() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !st.engine.routes_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the routes ConfigMap\n",
        )
            .into_response();
    }
    let mut notes = Vec::new();
    let mounted = st.engine.routes.from_mount();
    if mounted != 0 {
        notes.push(format!(
            "serving the mounted copy of the {}: the Kubernetes API has not answered",
            st.engine.routes.names(mounted).join(" and ")
        ));
    }
    // Still serving on the last good policy; say what failed.
    if let Some(e) = st.engine.policy_report().last_error {
        notes.push(format!(
            "policy reload failed, running the previous version: {}",
            e.error
        ));
    }
    if notes.is_empty() {
        "ready\n".into_response()
    } else {
        format!("ready ({})\n", notes.join("; ")).into_response()
    }
}

async fn policy_report(State(st): State<AppState>) -> Response {
    Json(st.engine.policy_report()).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    if let Err(e) = st.engine.refresh_gauges().await {
        return spool_unavailable(&e);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.engine.metrics.encode(),
    )
        .into_response()
}

fn spool_unavailable(e: &crate::engine::spool::SpoolError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": reason }))).into_response()
}
