//! `POST /api/inject/v1`, KumoMTA's injection API: one message per
//! recipient, each through `http_message_generated`, all made durable
//! before the reply.

use super::auth::Caller;
use super::{AppState, bad_request};
use crate::engine::Refusal;
use crate::model::message::Message;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, json};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Serialize)]
struct InjectResponse {
    success_count: usize,
    fail_count: usize,
    failed_recipients: Vec<String>,
    errors: Vec<String>,
}

pub(super) async fn inject(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    if !st.engine.is_receiving() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "relay is shutting down (delivering what it holds, taking nothing new)" })),
        )
            .into_response();
    }
    use crate::listeners::inject::InjectError;
    let mut req = match crate::listeners::inject::parse(&body) {
        Ok(r) => r,
        Err(InjectError::Invalid(e)) => return bad_request(e),
        Err(InjectError::Template(e)) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": e })),
            )
                .into_response();
        }
    };
    if req.recipients.len() > st.max_recipients {
        return bad_request(format!(
            "recipients: {} in one request; this listener takes at most {} (max_recipients_per_request)",
            req.recipients.len(),
            st.max_recipients
        ));
    }
    if req.received_header {
        add_received(&mut req, &st, peer);
    }
    // What KumoMTA records of an injected message's origin.
    let mut origin = Map::new();
    origin.insert("reception_protocol".into(), "HTTP".into());
    origin.insert("received_from".into(), peer.ip().to_string().into());
    origin.insert(
        "http_auth".into(),
        match &caller {
            Caller::User(u) => u.clone(),
            Caller::Trusted => peer.ip().to_string(),
        }
        .into(),
    );
    let policy = st.engine.policy();
    let mut results: Vec<Option<Result<(), Refusal>>> = Vec::with_capacity(req.recipients.len());
    let mut msgs = Vec::new();
    let mut slots = Vec::new();
    let origin = Arc::new(origin);
    for (i, r) in req.recipients.iter().enumerate() {
        let meta = match &r.extra {
            Some(extra) => {
                let mut own = Map::clone(&origin);
                own.insert("extra".into(), serde_json::Value::Object(extra.clone()));
                Arc::new(own)
            }
            None => origin.clone(),
        };
        let msg = Arc::new(Message::new(
            req.sender.clone(),
            r.email.clone(),
            meta,
            r.content.clone(),
        ));
        results.push(None);
        match policy
            .message_hook(&crate::policy::events::HTTP_MESSAGE_GENERATED, &msg)
            .await
        {
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
                resp.failed_recipients.push(r.email.clone());
                resp.errors
                    .push(format!("{}: {} {}", r.email, refusal.code, refusal.reason));
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

/// Prepends `Received:` to every message, keeping shared bodies shared.
fn add_received(req: &mut crate::listeners::inject::Injection, st: &AppState, peer: SocketAddr) {
    use crate::model::trace;
    let header = trace::received(&trace::Via {
        helo: None,
        peer: peer.ip(),
        by: &st.hostname,
        protocol: if st.tls { "HTTPS" } else { "HTTP" },
        for_rcpt: None,
    });
    let mut last: Option<(Bytes, Bytes)> = None;
    for r in &mut req.recipients {
        let with = match &last {
            Some((from, to))
                if from.as_ptr() == r.content.as_ptr() && from.len() == r.content.len() =>
            {
                to.clone()
            }
            _ => {
                let mut v = Vec::with_capacity(header.len() + r.content.len());
                v.extend_from_slice(header.as_bytes());
                v.extend_from_slice(&r.content);
                let to = Bytes::from(v);
                last = Some((r.content.clone(), to.clone()));
                to
            }
        };
        r.content = with;
    }
}
