//! The admin API: queue summary, bounce, suspend and resume, and
//! KumoMTA's bump-config-epoch. Reached by trusted hosts and `admin_users`.

use super::{AppState, bad_request, spool_unavailable};
use crate::engine::admin::Criteria;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Re-reads the policy now (KumoMTA's bump-config-epoch).
pub(super) async fn bump_config_epoch(State(st): State<AppState>) -> Response {
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
    /// Our safeguard: with no criteria, an action applies to every queue
    /// only when the request says so.
    #[serde(default)]
    everything: bool,
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
        if criteria == Criteria::default() && !r.everything {
            return Err(
                "no criteria: name a domain, tenant, campaign or routing_domain, \
                 or set \"everything\": true to act on every queue"
                    .into(),
            );
        }
        Ok((criteria, r.reason, duration))
    }
}

pub(super) async fn queue_summary(State(st): State<AppState>) -> Response {
    match st.engine.queue_summary().await {
        Ok(queues) => Json(json!({ "queues": queues })).into_response(),
        Err(e) => spool_unavailable(&e),
    }
}

pub(super) async fn bounce(State(st): State<AppState>, body: Bytes) -> Response {
    match AdminRequest::parse(&body) {
        Ok((_, _, Some(_))) => bad_request("duration: bouncing future messages is not supported; bounce applies to what is queued now".into()),
        Ok((criteria, reason, None)) => match st.engine.admin_bounce(&criteria, &reason).await {
            Ok(report) => Json(report).into_response(),
            Err(e) => spool_unavailable(&e),
        },
        Err(e) => bad_request(e),
    }
}

pub(super) async fn suspend(State(st): State<AppState>, body: Bytes) -> Response {
    match AdminRequest::parse(&body) {
        Ok((criteria, reason, duration)) => {
            Json(st.engine.suspend(criteria, reason, duration)).into_response()
        }
        Err(e) => bad_request(e),
    }
}

pub(super) async fn list_suspensions(State(st): State<AppState>) -> Response {
    Json(json!({ "suspensions": st.engine.suspensions() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    id: String,
}

pub(super) async fn resume(State(st): State<AppState>, body: Bytes) -> Response {
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
