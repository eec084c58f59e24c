//! Delivery: custom_lua sessions per queue.
//!
//! A session opens one policy delivery session (the queue's constructor)
//! and sends ready messages through it, one or a batch per call. It ends on
//! idle, after `max_deliveries_per_connection`, or on an error.

use super::Engine;
use super::queue::{Queue, QueueSettings};
use crate::model::message::MessageRef;
use crate::policy::delivery::{DeliverySession, Outcome, SendResult};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// Starts sessions while there are more ready messages than sessions, up to `connection_limit`.
pub fn ensure_sessions(engine: &Arc<Engine>, q: &Arc<Queue>) {
    loop {
        let active = q.sessions.load(Ordering::Acquire);
        let ready = q.ready_len();
        if q.is_suspended()
            || engine.is_shutting_down()
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
            engine.session_started();
            tokio::spawn(session(engine.clone(), q.clone()));
        }
    }
}

async fn session(engine: Arc<Engine>, q: Arc<Queue>) {
    run_session(&engine, &q).await;
    q.sessions.fetch_sub(1, Ordering::AcqRel);
    engine.session_ended();
    // Messages may have arrived while this session was closing.
    if !engine.is_shutting_down() {
        ensure_sessions(&engine, &q);
    }
}

async fn run_session(engine: &Arc<Engine>, q: &Arc<Queue>) {
    // A session runs on one policy version; after a reload it ends, and new
    // sessions take the new one.
    let epoch = engine.epoch();
    let policy = engine.policy();
    let settings = q.settings();
    let batch = settings.custom_lua.batch_size.max(1);
    let mut stop = engine.shutdown_signal();
    // The first messages are this session's before it connects: if it
    // cannot, they are the ones that fail.
    let Some(msgs) = next_batch(engine, q, &settings, batch, &mut stop).await else {
        return;
    };
    let opened = policy
        .open_session(
            &q.name,
            &settings.custom_lua.constructor,
            batch > 1,
            settings.egress.send_timeout,
        )
        .await;
    let mut session = match opened {
        Ok(s) => s,
        Err(reason) => {
            start_failed(engine, q, msgs, &reason);
            return;
        }
    };
    q.live_sessions.fetch_add(1, Ordering::AcqRel);
    deliver(engine, q, &settings, &mut session, msgs, epoch, &mut stop).await;
    q.live_sessions.fetch_sub(1, Ordering::AcqRel);
    session.close(&q.label).await;
}

/// Sends batch after batch on an open session until the queue is empty,
/// the session has delivered its share, the sender asks to close, or the
/// policy, the queue or the relay changes under it.
async fn deliver(
    engine: &Arc<Engine>,
    q: &Arc<Queue>,
    settings: &QueueSettings,
    session: &mut DeliverySession,
    mut msgs: Vec<MessageRef>,
    epoch: u64,
    stop: &mut watch::Receiver<bool>,
) {
    let batch = settings.custom_lua.batch_size.max(1);
    let max_deliveries = settings.egress.max_deliveries_per_connection;
    let mut delivered = 0usize;
    loop {
        // The policy may have changed while this session waited: what it just
        // took goes to a session of the new version instead.
        if engine.epoch() != epoch || engine.is_shutting_down() || q.is_suspended() {
            for m in msgs {
                engine.hand_back(q, m);
            }
            return;
        }
        delivered += msgs.len();
        if send(engine, q, settings, session, &msgs).await || delivered >= max_deliveries {
            return;
        }
        // Never more than the session may still deliver.
        let want = batch.min(max_deliveries - delivered);
        msgs = match next_batch(engine, q, settings, want, stop).await {
            Some(m) => m,
            None => return,
        };
    }
}

/// One send of `msgs` (throttled, bodies loaded) and its outcome applied;
/// whether the session should close.
async fn send(
    engine: &Arc<Engine>,
    q: &Arc<Queue>,
    settings: &QueueSettings,
    session: &mut DeliverySession,
    msgs: &[MessageRef],
) -> bool {
    if let Some(t) = &settings.throttle {
        for _ in msgs {
            t.acquire().await;
        }
    }
    // Reception first: tokio wakes a yielded task only once it has run the
    // other ready tasks and polled for I/O, so the requests that arrived
    // meanwhile reach the spool's next commit before this send, and the
    // deliveries fill that commit's fsync. Run first, they held the
    // acknowledgements back and the cores idled while each commit flushed.
    tokio::task::yield_now().await;
    let SendResult { outcome, close } = match engine.load_bodies(msgs).await {
        Ok(()) => {
            let started = std::time::Instant::now();
            let sent = session.send(msgs).await;
            let took = started.elapsed().as_secs_f64();
            engine.metrics.send_seconds.observe(took);
            sent
        }
        Err(e) => SendResult {
            outcome: Outcome::transient(&format!("451 4.3.0 cannot read the message: {e}")),
            close: false,
        },
    };
    for m in msgs {
        engine.complete(q, m, outcome.clone());
    }
    close
}

/// A session could not start: the messages it took fail temporarily. When no
/// other session of the queue is delivering either (the broker is down), so
/// does the rest of ready, as an MTA does when it cannot connect, instead of
/// one session after another trying.
fn start_failed(engine: &Arc<Engine>, q: &Arc<Queue>, mine: Vec<MessageRef>, reason: &str) {
    tracing::warn!(queue = %q.label, %reason, "delivery session could not start");
    let outcome = Outcome::transient(&format!("451 4.4.0 {reason}"));
    for m in &mine {
        engine.complete(q, m, outcome.clone());
    }
    if q.live_sessions.load(Ordering::Acquire) == 0 {
        for m in q.take_all_waiting() {
            engine.complete(q, &m, outcome.clone());
        }
    }
}

/// Waits for ready messages: up to `batch`, at least `min_batch_size` unless
/// `max_batch_latency` passes. `None` when idle too long or shutting down.
async fn next_batch(
    engine: &Arc<Engine>,
    q: &Arc<Queue>,
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
                    engine.hand_back(q, m);
                }
                return None;
            }
        }
    }
}
