//! The HTTP listener: KumoMTA's injection API, health, and metrics.

use crate::engine::admin::Criteria;
use crate::engine::{Engine, Refusal};
use crate::model::message::Message;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    trusted: Arc<Vec<IpNet>>,
}

pub fn parse_trusted(hosts: &[String]) -> Result<Vec<IpNet>, String> {
    hosts
        .iter()
        .map(|h| {
            h.parse::<IpNet>()
                .or_else(|_| h.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("trusted host {h:?} is not an IP address or CIDR"))
        })
        .collect()
}

/// Largest inject request accepted (axum's default of 2 MB is too small for mail).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

pub fn router(engine: Arc<Engine>, trusted: Vec<IpNet>) -> Router {
    let state = AppState {
        engine,
        trusted: Arc::new(trusted),
    };
    // Injection and administration: trusted hosts only.
    let trusted_routes = Router::new()
        .route("/api/inject/v1", post(inject))
        .route("/api/admin/bump-config-epoch", post(bump_config_epoch))
        .route("/api/admin/queue-summary/v1", get(queue_summary))
        .route("/api/admin/bounce/v1", post(admin_bounce))
        .route(
            "/api/admin/suspend/v1",
            post(admin_suspend)
                .get(list_suspensions)
                .delete(admin_resume),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            only_trusted,
        ));
    Router::new()
        .route("/api/check-liveness/v1", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/policy", get(policy_report))
        .merge(trusted_routes)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// Serves until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    trusted: Vec<IpNet>,
) -> std::io::Result<()> {
    let mut stop = engine.shutdown_signal();
    axum::serve(
        listener,
        router(engine, trusted).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(st): State<AppState>) -> Response {
    if st.engine.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !st.engine.routes_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the routes ConfigMap\n",
        )
            .into_response();
    }
    // Still serving on the last good policy; say what failed.
    match st.engine.policy_report().last_error {
        Some(e) => format!(
            "ready (policy reload failed, running the previous version: {})\n",
            e.error
        )
        .into_response(),
        None => "ready\n".into_response(),
    }
}

async fn policy_report(State(st): State<AppState>) -> Response {
    Json(st.engine.policy_report()).into_response()
}

/// Re-reads the policy now (KumoMTA's bump-config-epoch).
async fn bump_config_epoch(State(st): State<AppState>) -> Response {
    match st.engine.reload().await {
        Ok(changed) => {
            let report = st.engine.policy_report();
            Json(json!({ "changed": changed, "epoch": report.epoch, "hash": report.hash }))
                .into_response()
        }
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": error, "epoch": st.engine.epoch() })),
        )
            .into_response(),
    }
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

#[derive(Debug, Serialize)]
struct InjectResponse {
    success_count: usize,
    fail_count: usize,
    failed_recipients: Vec<String>,
    errors: Vec<String>,
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": reason }))).into_response()
}

/// Refuses peers outside `trusted_hosts` before the handler runs.
async fn only_trusted(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if st.trusted.iter().any(|n| n.contains(&peer.ip())) {
        return next.run(req).await;
    }
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": format!("{} is not a trusted host", peer.ip()) })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRequest {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    routing_domain: Option<String>,
    reason: String,
    #[serde(default)]
    duration: Option<String>,
}

impl AdminRequest {
    fn parse(body: &[u8]) -> Result<(Criteria, String, Option<std::time::Duration>), String> {
        let r: AdminRequest =
            serde_json::from_slice(body).map_err(|e| format!("invalid request: {e}"))?;
        let duration = match &r.duration {
            Some(d) => Some(
                crate::model::config::parse_duration(d).map_err(|e| format!("duration: {e}"))?,
            ),
            None => None,
        };
        let criteria = Criteria {
            domain: r.domain,
            tenant: r.tenant,
            campaign: r.campaign,
            routing_domain: r.routing_domain,
        };
        Ok((criteria, r.reason, duration))
    }
}

async fn queue_summary(State(st): State<AppState>) -> Response {
    match st.engine.queue_summary().await {
        Ok(queues) => Json(json!({ "queues": queues })).into_response(),
        Err(e) => spool_unavailable(&e),
    }
}

async fn admin_bounce(State(st): State<AppState>, body: Bytes) -> Response {
    match AdminRequest::parse(&body) {
        Ok((_, _, Some(_))) => bad_request("duration: bouncing future messages is not supported; bounce applies to what is queued now".into()),
        Ok((criteria, reason, None)) => match st.engine.admin_bounce(&criteria, &reason).await {
            Ok(report) => Json(report).into_response(),
            Err(e) => spool_unavailable(&e),
        },
        Err(e) => bad_request(e),
    }
}

async fn admin_suspend(State(st): State<AppState>, body: Bytes) -> Response {
    match AdminRequest::parse(&body) {
        Ok((criteria, reason, duration)) => {
            Json(st.engine.suspend(criteria, reason, duration)).into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn list_suspensions(State(st): State<AppState>) -> Response {
    Json(json!({ "suspensions": st.engine.suspensions() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    id: String,
}

async fn admin_resume(State(st): State<AppState>, body: Bytes) -> Response {
    let req: ResumeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid request: {e}")),
    };
    if st.engine.resume(&req.id) {
        Json(json!({ "resumed": req.id })).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no suspension {}", req.id) })),
        )
            .into_response()
    }
}

async fn inject(State(st): State<AppState>, body: Bytes) -> Response {
    if st.engine.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "relay is shutting down" })),
        )
            .into_response();
    }
    let req = match super::inject::parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let policy = st.engine.policy();
    let mut results: Vec<Option<Result<(), Refusal>>> = Vec::with_capacity(req.recipients.len());
    let mut msgs = Vec::new();
    let mut slots = Vec::new();
    for (i, r) in req.recipients.iter().enumerate() {
        let msg = Arc::new(Message::new(
            req.sender.clone(),
            r.clone(),
            Map::new(),
            req.content.clone(),
        ));
        results.push(None);
        match policy.message_hook("http_message_generated", &msg).await {
            Ok(()) => {
                msgs.push(msg);
                slots.push(i);
            }
            Err(crate::policy::PolicyError::Rejected(rej)) => {
                results[i] = Some(Err(Refusal {
                    code: rej.code,
                    reason: rej.message,
                }));
            }
            Err(e) => {
                results[i] = Some(Err(Refusal {
                    code: 451,
                    reason: format!("4.3.0 {e}"),
                }));
            }
        }
    }
    for (slot, res) in slots.into_iter().zip(st.engine.receive(msgs).await) {
        results[slot] = Some(res);
    }

    let mut resp = InjectResponse {
        success_count: 0,
        fail_count: 0,
        failed_recipients: Vec::new(),
        errors: Vec::new(),
    };
    let mut temporary = false;
    for (r, res) in req.recipients.iter().zip(results) {
        match res.expect("every recipient has a result") {
            Ok(()) => resp.success_count += 1,
            Err(refusal) => {
                temporary |= refusal.is_temporary();
                resp.fail_count += 1;
                resp.failed_recipients.push(r.clone());
                resp.errors
                    .push(format!("{}: {} {}", r, refusal.code, refusal.reason));
            }
        }
    }
    let status = if resp.success_count > 0 {
        StatusCode::OK
    } else if temporary {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, Json(resp)).into_response()
}
