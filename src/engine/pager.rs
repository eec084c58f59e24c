//! The pager: brings messages from the spool's schedule into memory as they
//! fall due and as room frees up (at most `max_active` in memory, at most
//! `max_ready` per queue), expires those past `max_age`, holds queues the
//! policy cannot deliver, and drops idle queues from memory.

use super::Engine;
use crate::model::queue_name::QueueName;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Queues looked at per pass.
const QUEUES_PER_PASS: usize = 64;
/// How often held queues are asked about again without a reload.
const HELD_RECHECK: Duration = Duration::from_secs(60);
/// How often idle queues are looked for.
const REAP_EVERY: Duration = Duration::from_secs(5);

pub async fn run(engine: Arc<Engine>) {
    let mut stop = engine.shutdown_signal();
    let mut last_recheck = Instant::now();
    let mut last_reap = Instant::now();
    loop {
        if engine.is_shutting_down() {
            return;
        }
        let wake = engine.pager.notified();
        let (next, busy) = match pass(&engine).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "pager: the spool failed; trying again in a second");
                (Some(crate::model::message::now_ms() + 1000), false)
            }
        };
        if last_reap.elapsed() >= REAP_EVERY.min(engine.limits.queue_idle) {
            engine.reap_idle();
            last_reap = Instant::now();
        }
        if last_recheck.elapsed() >= HELD_RECHECK {
            engine.held.clear();
            engine.schedule_hint.store(true, Ordering::Release);
            last_recheck = Instant::now();
            continue;
        }
        if busy {
            // Paged a full round and more is due: go on unless room is gone.
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = next.map_or(REAP_EVERY, |due| {
            Duration::from_millis(due.saturating_sub(crate::model::message::now_ms()))
                .min(REAP_EVERY)
        });
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep(sleep) => {
                engine.schedule_hint.store(true, Ordering::Release);
            }
            _ = stop.changed() => return,
        }
    }
}

/// One look at what is due. Returns when the next scheduled message falls
/// due, and whether this pass filled queues and should go on at once.
async fn pass(engine: &Arc<Engine>) -> Result<(Option<u64>, bool), super::SpoolError> {
    if !engine.routes_ready() || !engine.schedule_hint.swap(false, Ordering::AcqRel) {
        return Ok((None, false));
    }
    let skip = {
        let engine = engine.clone();
        Box::new(move |label: &str| engine.held.contains(label) || engine.is_suspended_label(label))
    };
    let due = engine.spool.due_queues(QUEUES_PER_PASS, skip).await?;
    let mut busy = false;
    for label in &due.due {
        let room = engine.limits.max_active.saturating_sub(engine.active());
        if room == 0 {
            // Woken again when a message leaves memory.
            engine.schedule_hint.store(true, Ordering::Release);
            return Ok((due.next, false));
        }
        busy |= page_queue(engine, label, room).await?;
    }
    if !due.due.is_empty() {
        // Others may be due too, past this pass's share.
        engine.schedule_hint.store(true, Ordering::Release);
        busy |= due.due.len() >= QUEUES_PER_PASS;
    }
    Ok((due.next, busy))
}

/// Pages in what is due of one queue, up to `room`; true if more is due.
async fn page_queue(
    engine: &Arc<Engine>,
    label: &str,
    room: usize,
) -> Result<bool, super::SpoolError> {
    let q = match QueueName::parse(label) {
        Ok(name) => engine.queue(&name).await,
        Err(why) => Err(super::Refusal {
            code: 550,
            reason: format!("5.1.3 {why}"),
        }),
    };
    let q = match q {
        Ok(q) => q,
        Err(why) => {
            engine.held.hold(label, why);
            return Ok(false);
        }
    };
    let want = room.min(q.room());
    if want == 0 || q.is_suspended() {
        return Ok(false);
    }
    let reserved = engine.reserve_active(want);
    let settings = q.settings();
    let body_room = engine
        .limits
        .body_memory
        .saturating_sub(engine.bodies.used());
    let paged = engine
        .spool
        .page_in(
            label,
            reserved,
            settings.config.max_age.as_millis() as u64,
            body_room,
        )
        .await;
    let paged = match paged {
        Ok(p) => p,
        Err(e) => {
            engine.active.fetch_sub(reserved, Ordering::AcqRel);
            return Err(e);
        }
    };
    let unused = reserved - paged.messages.len();
    engine.active.fetch_sub(unused, Ordering::AcqRel);
    for m in &paged.expired {
        engine.expire(label, m, "message reached max_age while waiting");
    }
    for m in paged.messages {
        let m = Arc::new(m);
        m.keep_body_within(&engine.bodies);
        engine.place(&q, m);
    }
    q.backlogged.store(paged.more_due, Ordering::Release);
    Ok(paged.more_due)
}
