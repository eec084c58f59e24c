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
    let mut last_expiry = Instant::now();
    loop {
        if engine.is_shutting_down() {
            return;
        }
        let wake = engine.pager.notified();
        // Ask the spool only when the schedule changed, a due time came, or
        // a backlog waits and room was made for it (releases alone cost nothing).
        let changed = engine.schedule_hint.swap(false, Ordering::AcqRel);
        let room_for_backlog = engine.backlog.load(Ordering::Acquire) && worth_paging(&engine);
        let (next, busy) = if engine.routes_ready() && (changed || room_for_backlog) {
            match pass(&engine).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "pager: the spool failed; trying again in a second");
                    engine.schedule_hint.store(true, Ordering::Release);
                    (Some(crate::model::message::now_ms() + 1000), false)
                }
            }
        } else {
            (None, false)
        };
        if last_reap.elapsed() >= REAP_EVERY.min(engine.limits.queue_idle) {
            engine.reap_idle();
            last_reap = Instant::now();
        }
        if last_expiry.elapsed() >= REAP_EVERY.min(engine.limits.held_max_age) {
            if let Err(e) = expire_held(&engine).await {
                tracing::error!(error = %e, "pager: expiring held messages failed; trying again later");
            }
            last_expiry = Instant::now();
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

/// Held messages expired per spool round trip.
const EXPIRE_STEP: usize = 1000;

/// Expires the held messages that have waited longer than `held_max_age`.
/// A held message waits on the schedule at its due time, which is its
/// reception for mail never tried and its last planned retry otherwise; the
/// schedule is ordered by it, so this reads only what expires.
async fn expire_held(engine: &Arc<Engine>) -> Result<(), super::SpoolError> {
    let cutoff = crate::model::message::now_ms()
        .saturating_sub(engine.limits.held_max_age.as_millis() as u64);
    let why = crate::model::response::Response::parse(&format!(
        "551 5.4.7 held for longer than {} with no route for its queue",
        humantime::format_duration(engine.limits.held_max_age)
    ));
    for label in engine.held.queues() {
        // Routed again since (the verdict was only cleared for a re-check): not ours.
        if engine.known_queue(&label).is_some() {
            continue;
        }
        loop {
            let expired = engine.spool.take_due(&label, cutoff, EXPIRE_STEP).await?;
            if !expired.is_empty() {
                tracing::warn!(queue = %label, count = expired.len(), response = %why, "held messages expired");
            }
            for m in &expired {
                engine.expired_off_schedule(&label, m, &why);
            }
            if expired.len() < EXPIRE_STEP {
                break;
            }
        }
    }
    Ok(())
}

/// How many places a queue needs free before paging in for it pays (one
/// spool round trip per chunk, not per message).
fn chunk(max_ready: usize) -> usize {
    (max_ready / 4).clamp(1, 256)
}

/// A queue with messages due on the schedule has room enough to page in.
fn worth_paging(engine: &Engine) -> bool {
    let room = engine.limits.max_active.saturating_sub(engine.active());
    room >= chunk(engine.limits.max_active)
        && engine.queues().iter().any(|q| {
            q.backlogged.load(Ordering::Acquire)
                && !q.is_suspended()
                && (q.ready_len() == 0 || q.room() >= chunk(q.settings().egress.max_ready))
        })
}

/// One look at what is due. Returns when the next scheduled message falls
/// due, and whether this pass filled queues and should go on at once.
async fn pass(engine: &Arc<Engine>) -> Result<(Option<u64>, bool), super::SpoolError> {
    let skip = {
        let engine = engine.clone();
        Box::new(move |label: &str| engine.held.contains(label) || engine.is_suspended_label(label))
    };
    let due = engine.spool.due_queues(QUEUES_PER_PASS, skip).await?;
    let mut busy = false;
    let mut waiting = false;
    for label in &due.due {
        let room = engine.limits.max_active.saturating_sub(engine.active());
        if room == 0 {
            waiting = true;
            break;
        }
        match page_queue(engine, label, room).await? {
            Paging::MoreDue => {
                busy = true;
                waiting = true;
            }
            Paging::NoRoom => waiting = true,
            Paging::Done => {}
        }
    }
    // Past this pass's share, others may be due too.
    busy |= due.due.len() >= QUEUES_PER_PASS;
    engine.backlog.store(waiting || busy, Ordering::Release);
    Ok((due.next, busy && !waiting_for_room(engine)))
}

fn waiting_for_room(engine: &Engine) -> bool {
    engine.limits.max_active.saturating_sub(engine.active()) < chunk(engine.limits.max_active)
}

enum Paging {
    /// Nothing more of the queue is due now (or it is held).
    Done,
    /// Paged in as much as there was room for; more is due.
    MoreDue,
    /// No room worth paging for now; more is due.
    NoRoom,
}

/// The queue of a label on the schedule; none (and the label held) when
/// the policy does not route it.
async fn routed_queue(engine: &Arc<Engine>, label: &str) -> Option<Arc<super::queue::Queue>> {
    let q = match QueueName::parse(label) {
        Ok(name) => engine.queue(&name).await,
        Err(why) => Err(super::Refusal {
            code: 550,
            reason: format!("5.1.3 {why}"),
        }),
    };
    match q {
        Ok(q) => Some(q),
        Err(why) => {
            engine.held.hold(label, why);
            None
        }
    }
}

/// Messages paging found past their `max_age` (KumoMTA's expiry: 551 5.4.7).
fn expire_paged(engine: &Engine, label: &str, expired: &[crate::model::message::Message]) {
    if expired.is_empty() {
        return;
    }
    let why =
        crate::model::response::Response::parse("551 5.4.7 message reached max_age while waiting");
    for m in expired {
        engine.expire(label, m, &why);
    }
}

/// Pages in what is due of one queue, up to `room`.
async fn page_queue(
    engine: &Arc<Engine>,
    label: &str,
    room: usize,
) -> Result<Paging, super::SpoolError> {
    let Some(q) = routed_queue(engine, label).await else {
        return Ok(Paging::Done);
    };
    if q.is_suspended() {
        return Ok(Paging::Done);
    }
    let settings = q.settings();
    let want = room.min(q.room());
    if want == 0 || (want < chunk(settings.egress.max_ready) && q.ready_len() > 0) {
        q.backlogged.store(true, Ordering::Release);
        return Ok(Paging::NoRoom);
    }
    let reserved = engine.reserve_active(want);
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
    expire_paged(engine, label, &paged.expired);
    for m in paged.messages {
        let m = Arc::new(m);
        m.keep_body_within(&engine.bodies);
        engine.place(&q, m);
    }
    q.backlogged.store(paged.more_due, Ordering::Release);
    Ok(if paged.more_due {
        Paging::MoreDue
    } else {
        Paging::Done
    })
}
