//! Delivery: per-queue maintainers and custom_lua sessions.
//!
//! A session opens one policy delivery session (the queue's constructor)
//! and sends ready messages through it, one or a batch per call. It ends on
//! idle, after `max_deliveries_per_connection`, or on an error.

use super::Engine;
use super::queue::{Queue, QueueSettings};
use crate::model::message::{MessageRef, now_ms};
use crate::policy::delivery::{Outcome, SendResult};
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
    let batch = settings.custom_lua.batch_size.max(1);
    let mut session = policy
        .open_session(
            &q.name,
            &settings.custom_lua.constructor,
            batch > 1,
            settings.egress.send_timeout,
        )
        .await?;
    let mut stop = engine.shutdown_signal();
    let mut delivered = 0usize;
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
        let SendResult { outcome, close } = session.send(&msgs).await;
        for m in &msgs {
            engine.complete(q, m, outcome.clone());
        }
        if close {
            break;
        }
    }
    session.close(&q.label).await;
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
