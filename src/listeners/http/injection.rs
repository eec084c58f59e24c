//! `POST /api/inject/v1`, KumoMTA's injection API: one message per
//! recipient, each through `http_message_generated`, all made durable
//! before the reply.

use super::auth::Caller;
use super::{AppState, bad_request};
use crate::engine::Refusal;
use crate::listeners::inject::{InjectError, Injection, Limits};
use crate::listeners::memory::{MemoryBudget, Reservation};
use crate::model::message::Message;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
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

/// What bounds injection requests on one listener, whatever their number
/// and shape: memory held at once, what one request may build, how many
/// are built at once (off the async workers), and for how long.
pub(super) struct RequestBounds {
    memory: Arc<MemoryBudget>,
    body_limit: usize,
    max_messages_size: usize,
    max_recipients: usize,
    timeout: std::time::Duration,
    /// Requests parsed and built at once (a template may compute for its
    /// whole fuel): at most one per core, on blocking threads.
    building: Arc<tokio::sync::Semaphore>,
}

impl RequestBounds {
    pub(super) fn new(cfg: &crate::model::listener_config::HttpListener) -> RequestBounds {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        RequestBounds {
            memory: MemoryBudget::new(cfg.request_memory),
            body_limit: cfg.request_body_limit,
            max_messages_size: cfg.max_request_messages_size,
            max_recipients: cfg.max_recipients_per_request,
            timeout: cfg.request_timeout,
            building: Arc::new(tokio::sync::Semaphore::new(cores.clamp(1, 4))),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The route's handler (behind `auth::authenticated`). A POST reaches
/// `direct` instead, from the connection's service.
pub(super) async fn inject(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&st, peer, caller, &headers, body).await
}

/// Whether a request is an injection, which `direct` serves.
pub(super) fn is_injection<B>(req: &axum::http::Request<B>) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path() == "/api/inject/v1"
}

/// An injection request served without the router: the same
/// authentication and handler, without the router's per-request boxing,
/// its extensions and the middleware's hand-offs (about twenty allocations
/// per request, on the path every message takes).
pub(super) async fn direct(
    st: &AppState,
    peer: SocketAddr,
    req: axum::http::Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = req.into_parts();
    match super::auth::caller(st, peer, &parts.headers).await {
        Ok(caller) => handle(st, peer, caller, &parts.headers, Body::new(body)).await,
        Err(refused) => refused,
    }
}

async fn handle(
    st: &AppState,
    peer: SocketAddr,
    caller: Caller,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if !st.engine.is_receiving() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "relay is shutting down (delivering what it holds, taking nothing new)",
        );
    }
    let (mut req, held) = match build(&st.requests, headers, body).await {
        Ok(built) => built,
        Err(response) => return response,
    };
    if req.received_header {
        add_received(&mut req, st, peer);
    }
    let results = accept(st, &req, origin(&caller, peer)).await;
    // The request's memory is given back once its messages are durable.
    drop(held);
    respond(&req, results)
}

/// Bodies up to this size are built on the request's own task.
const BUILD_INLINE: usize = 8 * 1024;

/// Whether a request is built on its own task: small and without template
/// markup, building is a copy bounded by its size; templates (bounded by
/// their fuel, but per recipient) go to a blocking thread.
fn builds_inline(body: &[u8]) -> bool {
    body.len() <= BUILD_INLINE && !crate::listeners::inject::has_markup(body)
}

/// Reads the body (its bytes held from the listener's request memory first)
/// and builds the messages (on a blocking thread when large), within the
/// request bounds.
async fn build(
    b: &RequestBounds,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Injection, Reservation), Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > b.body_limit) {
        return Err(too_large(b.body_limit));
    }
    let mut held = Reservation::new(&b.memory);
    if !held.grow(declared.unwrap_or(b.body_limit)) {
        return Err(busy());
    }
    let Ok(bytes) = axum::body::to_bytes(body, b.body_limit).await else {
        return Err(too_large(b.body_limit));
    };
    let small = builds_inline(&bytes);
    let deadline = std::time::Instant::now() + b.timeout;
    let mut limits = Limits::new(b.max_recipients, b.max_messages_size);
    limits.deadline = Some(deadline);
    limits.memory = Some(held);
    let Ok(permit) = b.building.clone().acquire_owned().await else {
        return Err(busy());
    };
    let work = move || {
        let _permit = permit;
        let r = crate::listeners::inject::parse_within(&bytes, &mut limits);
        (r, limits.memory.take())
    };
    // A small request without templates (one message, a few recipients)
    // is built here: a blocking thread's two hand-offs cost more than
    // building it (one message per request: 140-150 -> 90-100 us of relay
    // CPU per message). The rest go to a blocking thread.
    let parsed = if small {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work).await
    };
    let (result, held) = parsed.map_err(|e| {
        tracing::error!(error = %e, "building an injected message failed");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the messages failed",
        )
    })?;
    let held = held.expect("the reservation comes back");
    match result {
        Ok(req) => Ok((req, held)),
        Err(InjectError::Invalid(e)) => Err(bad_request(e)),
        Err(InjectError::Template(e)) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, &e)),
        Err(InjectError::TooLarge(e)) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, &e)),
        Err(InjectError::Busy(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, &e)),
    }
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than {limit} bytes (request_body_limit)"),
    )
}

fn busy() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the relay's memory for requests is in use; try again shortly",
    )
}

/// What KumoMTA records of an injected message's origin.
fn origin(caller: &Caller, peer: SocketAddr) -> Arc<Map<String, serde_json::Value>> {
    let mut origin = Map::new();
    let from = peer.ip().to_string();
    let auth = match caller {
        Caller::User(u) => u.clone(),
        Caller::Trusted => from.clone(),
    };
    origin.insert("reception_protocol".into(), "HTTP".into());
    origin.insert("received_from".into(), from.into());
    origin.insert("http_auth".into(), auth.into());
    Arc::new(origin)
}

/// Each recipient's message through `http_message_generated`, then all that
/// passed into the spool in one commit; a result per recipient, in order.
async fn accept(
    st: &AppState,
    req: &Injection,
    origin: Arc<Map<String, serde_json::Value>>,
) -> Vec<Result<(), Refusal>> {
    let policy = st.engine.policy();
    let mut results: Vec<Option<Result<(), Refusal>>> = Vec::with_capacity(req.recipients.len());
    let mut msgs = Vec::new();
    let mut slots = Vec::new();
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
            Err(e) => results[i] = Some(Err(Refusal::from(e))),
        }
    }
    for (slot, res) in slots.into_iter().zip(st.engine.receive(msgs).await) {
        results[slot] = Some(res);
    }
    results
        .into_iter()
        .map(|r| r.expect("every recipient has a result"))
        .collect()
}

/// 200 when any recipient is durable; else 503 if a refusal was temporary, 400.
fn respond(req: &Injection, results: Vec<Result<(), Refusal>>) -> Response {
    let mut resp = InjectResponse {
        success_count: 0,
        fail_count: 0,
        failed_recipients: Vec::new(),
        errors: Vec::new(),
    };
    let mut temporary = false;
    for (r, res) in req.recipients.iter().zip(results) {
        match res {
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
fn add_received(req: &mut Injection, st: &AppState, peer: SocketAddr) {
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

#[cfg(test)]
mod tests {
    use super::builds_inline;

    #[test]
    fn only_small_template_free_requests_are_built_inline() {
        let plain = br#"{"envelope_sender":"a@b","content":"Subject: x\r\n\r\nhi","recipients":[{"email":"c@d"}]}"#;
        assert!(builds_inline(plain));
        for marker in ["{{ name }}", "{% if x %}{% endif %}", "{# note #}"] {
            let t = format!(r#"{{"content":"Subject: {marker}","recipients":[]}}"#);
            assert!(!builds_inline(t.as_bytes()), "{marker}");
        }
        let big = format!(r#"{{"content":"{}"}}"#, "x".repeat(9 * 1024));
        assert!(!builds_inline(big.as_bytes()));
    }
}
