//! Delivery: per-queue maintainers and custom_lua sessions.
//!
//! A session borrows one Lua state for its life, calls the queue's
//! constructor event once to get a sender object, then calls `send` (or
//! `send_batch`) per ready message. It ends on idle, after
//! `max_deliveries_per_connection`, or on an error, calling `close` if defined.

use super::queue::{Queue, QueueSettings};
use super::{Engine, Outcome};
use crate::model::message::{MessageRef, now_ms};
use crate::policy::events;
use crate::policy::message_ud::MessageUd;
use crate::policy::reject::{describe, find_rejection};
use mlua::{Function, Table, Value};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Starts sessions while there are more ready messages than sessions, up to `connection_limit`.
pub fn ensure_sessions(engine: &Arc<Engine>, q: &Arc<Queue>) {
    loop {
        let active = q.sessions.load(Ordering::Acquire);
        let ready = q.ready_len();
        if q.is_suspended()
            || ready == 0
            || active >= q.settings().egress.connection_limit
            || active >= ready
        {
            return;
        }
        if q.sessions
            .compare_exchange(active, active + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tokio::spawn(session(engine.clone(), q.clone()));
        }
    }
}

/// Moves due messages to ready, expires old ones, and starts sessions.
pub async fn maintain(engine: Arc<Engine>, q: Arc<Queue>) {
    let mut stop = engine.shutdown_signal();
    loop {
        let (expired, next) = q.promote();
        for m in expired {
            q.in_flight.fetch_add(1, Ordering::Relaxed);
            engine.expire(&q, &m, "message reached max_age while waiting");
            q.done(1);
        }
        ensure_sessions(&engine, &q);
        let wait = match next {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = q.schedule_notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The outcome for the messages of one call; `close` ends the session afterwards.
struct SendResult {
    outcome: Outcome,
    close: bool,
}

async fn session(engine: Arc<Engine>, q: Arc<Queue>) {
    let result = run_session(&engine, &q).await;
    q.sessions.fetch_sub(1, Ordering::AcqRel);
    match result {
        Err(reason) => {
            tracing::warn!(queue = %q.label, %reason, "delivery session could not start");
            // As an MTA does when it cannot connect: what is ready fails
            // temporarily and waits for its retry time, instead of sessions
            // spinning on a broker that is down.
            for m in q.drain_ready() {
                engine.complete(&q, &m, Outcome::Transient(format!("451 4.4.0 {reason}")));
            }
        }
        // Messages may have arrived while this session was closing.
        Ok(()) => ensure_sessions(&engine, &q),
    }
}

async fn run_session(engine: &Arc<Engine>, q: &Arc<Queue>) -> Result<(), String> {
    // A session runs on one policy version; after a reload it ends, and new
    // sessions take the new one.
    let epoch = engine.epoch();
    let policy = engine.policy();
    let settings = q.settings();
    let lua = policy.acquire().map_err(|e| e.to_string())?;
    let ctor_name = &settings.custom_lua.constructor;
    let ctor = events::handlers(&lua, ctor_name)
        .map_err(|e| describe(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("the policy has no kumo.on('{ctor_name}', …) handler"))?;
    let timeout = settings.egress.send_timeout;
    lua.limit(Some(timeout));
    let made = tokio::time::timeout(
        timeout,
        ctor.call_async::<Value>((
            q.name.domain.as_str(),
            q.name.tenant.as_deref(),
            q.name.campaign.as_deref(),
        )),
    )
    .await;
    let sender: Table = match made {
        Err(_) => {
            lua.discard();
            return Err(format!(
                "constructor '{ctor_name}' timed out after {timeout:?}"
            ));
        }
        Ok(Err(e)) => return Err(format!("constructor '{ctor_name}': {}", describe(&e))),
        Ok(Ok(Value::Table(t))) => t,
        Ok(Ok(other)) => {
            return Err(format!(
                "constructor '{ctor_name}' returned a {}, expected a table with a send method",
                other.type_name()
            ));
        }
    };
    let batch = settings.custom_lua.batch_size.max(1);
    let method = if batch > 1 { "send_batch" } else { "send" };
    let send: Function = sender
        .get::<Option<Function>>(method)
        .map_err(|e| describe(&e))?
        .ok_or_else(|| {
            format!("constructor '{ctor_name}' returned an object without a {method} method")
        })?;

    let mut stop = engine.shutdown_signal();
    let mut delivered = 0usize;
    let mut healthy = true;
    let max_deliveries = settings.egress.max_deliveries_per_connection;
    while delivered < max_deliveries
        && !engine.is_shutting_down()
        && !q.is_suspended()
        && engine.epoch() == epoch
    {
        // Never more than the session may still deliver.
        let want = batch.min(max_deliveries - delivered);
        let msgs = match next_batch(q, &settings, want, &mut stop).await {
            Some(m) => m,
            None => break,
        };
        // The policy may have changed while this session waited: what it just
        // took goes to a session of the new version instead.
        if engine.epoch() != epoch {
            for m in msgs {
                q.done(1);
                q.insert(m);
            }
            break;
        }
        if let Some(t) = &settings.throttle {
            for _ in &msgs {
                t.acquire().await;
            }
        }
        delivered += msgs.len();
        lua.limit(Some(timeout));
        let call = async {
            if batch > 1 {
                let list = lua.create_table().map_err(|e| describe(&e))?;
                for m in &msgs {
                    list.push(MessageUd(m.clone())).map_err(|e| describe(&e))?;
                }
                Ok::<_, String>(send.call_async::<Value>((&sender, list)).await)
            } else {
                Ok(send
                    .call_async::<Value>((&sender, MessageUd(msgs[0].clone())))
                    .await)
            }
        };
        let SendResult { outcome, close } = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                healthy = false;
                SendResult {
                    outcome: Outcome::Transient(format!(
                        "421 4.4.2 {method} did not finish within {timeout:?}"
                    )),
                    close: true,
                }
            }
            Ok(Err(e)) => SendResult {
                outcome: Outcome::Transient(format!("400 {e}")),
                close: true,
            },
            Ok(Ok(r)) => classify(method, r),
        };
        for m in &msgs {
            engine.complete(q, m, outcome.clone());
        }
        if close {
            break;
        }
    }
    lua.limit(Some(timeout));
    if healthy {
        if let Ok(Some(close)) = sender.get::<Option<Function>>("close") {
            match tokio::time::timeout(timeout, close.call_async::<Value>(&sender)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(queue = %q.label, error = %describe(&e), "sender:close failed")
                }
                Err(_) => {
                    tracing::warn!(queue = %q.label, "sender:close timed out");
                    lua.discard();
                }
            }
        }
    } else {
        // The state was interrupted mid-call; it is not reused.
        lua.discard();
    }
    Ok(())
}

/// Waits for ready messages: up to `batch`, at least `min_batch_size` unless
/// `max_batch_latency` passes. `None` when idle too long or shutting down.
async fn next_batch(
    q: &Queue,
    settings: &QueueSettings,
    batch: usize,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Vec<MessageRef>> {
    let idle_deadline = tokio::time::Instant::now() + settings.egress.idle_timeout;
    let mut got: Vec<MessageRef> = Vec::new();
    let mut latency_deadline: Option<tokio::time::Instant> = None;
    loop {
        let notified = q.ready_notify.notified();
        got.extend(q.take_ready(batch - got.len()));
        if got.len() >= batch
            || (!got.is_empty() && got.len() >= settings.custom_lua.min_batch_size)
        {
            return Some(got);
        }
        let deadline = if got.is_empty() {
            idle_deadline
        } else {
            *latency_deadline.get_or_insert_with(|| {
                tokio::time::Instant::now() + settings.custom_lua.max_batch_latency
            })
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return if got.is_empty() { None } else { Some(got) };
            }
            _ = stop.changed() => {
                // Not sent: put them back so shutdown leaves them spooled, not lost.
                for m in got {
                    q.done(1);
                    q.insert(m);
                }
                return None;
            }
        }
    }
}

/// Maps what `send` returned (or raised) to an outcome, as KumoMTA does.
fn classify(method: &str, r: mlua::Result<Value>) -> SendResult {
    match r {
        Ok(Value::String(s)) => SendResult {
            outcome: Outcome::Delivered(s.to_string_lossy()),
            close: false,
        },
        Ok(other) => SendResult {
            outcome: Outcome::Transient(format!(
                "400 4.0.0 {method} returned a {} instead of a string",
                other.type_name()
            )),
            close: true,
        },
        Err(e) => match find_rejection(&e) {
            Some(r) if r.is_transient() => SendResult {
                outcome: Outcome::Transient(format!("{} {}", r.code, r.message)),
                close: false,
            },
            Some(r) => SendResult {
                outcome: Outcome::Bounced(format!("{} {}", r.code, r.message)),
                close: false,
            },
            None => SendResult {
                outcome: Outcome::Transient(format!("400 4.0.0 {method} failed: {}", describe(&e))),
                close: true,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(r: mlua::Result<Value>) -> (String, bool) {
        let SendResult { outcome, close } = classify("send", r);
        (format!("{outcome:?}"), close)
    }

    #[test]
    fn outcome_mapping() {
        let lua = mlua::Lua::new();
        let (o, close) = outcome(Ok(Value::String(lua.create_string("250 ok").unwrap())));
        assert!(o.starts_with("Delivered"), "{o}");
        assert!(!close);
        let (o, close) = outcome(Ok(Value::Nil));
        assert!(o.starts_with("Transient") && o.contains("nil"), "{o}");
        assert!(close);
        let reject = |code| {
            mlua::Error::external(crate::policy::reject::Rejection {
                code,
                message: "x".into(),
            })
        };
        let (o, close) = outcome(Err(reject(451)));
        assert!(o.starts_with("Transient(\"451"), "{o}");
        assert!(!close);
        let (o, _) = outcome(Err(reject(500)));
        assert!(o.starts_with("Bounced(\"500"), "{o}");
        let (o, close) = outcome(Err(mlua::Error::runtime("boom")));
        assert!(o.starts_with("Transient") && o.contains("boom"), "{o}");
        assert!(close);
    }
}
