//! One scheduled queue (`campaign:tenant@domain`) and its ready queue.
//!
//! Messages wait in `scheduled` until due, then move to `ready` (bounded by
//! `max_ready`), where delivery sessions take them. A maintainer task per
//! queue does the moving and expires messages past `max_age`.

use super::throttle::Throttle;
use crate::model::config::{CustomLua, EgressPathConfig, QueueConfig};
use crate::model::message::{MessageRef, now_ms};
use crate::model::queue_name::QueueName;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the policy says about a queue; replaced whole when the policy reloads.
pub struct QueueSettings {
    pub config: QueueConfig,
    pub custom_lua: CustomLua,
    pub egress: EgressPathConfig,
    pub throttle: Option<Throttle>,
}

impl QueueSettings {
    pub fn new(
        config: QueueConfig,
        custom_lua: CustomLua,
        egress: EgressPathConfig,
    ) -> QueueSettings {
        let rate = match (config.max_message_rate, egress.max_message_rate) {
            (Some(a), Some(b)) => Some(if a.per_second < b.per_second { a } else { b }),
            (a, b) => a.or(b),
        };
        QueueSettings {
            config,
            custom_lua,
            egress,
            throttle: rate.map(Throttle::new),
        }
    }

    /// Same policy answer (the throttle's state aside).
    pub fn same_as(&self, other: &QueueSettings) -> bool {
        self.config == other.config
            && self.custom_lua == other.custom_lua
            && self.egress == other.egress
    }
}

pub struct Queue {
    pub name: QueueName,
    pub label: String,
    settings: std::sync::RwLock<Arc<QueueSettings>>,
    ready: Mutex<VecDeque<MessageRef>>,
    scheduled: Mutex<BTreeMap<(u64, u128), MessageRef>>,
    /// Wakes sessions waiting for ready messages.
    pub ready_notify: Notify,
    /// Wakes the maintainer when the schedule or the ready space changes.
    pub schedule_notify: Notify,
    pub sessions: AtomicUsize,
    pub in_flight: AtomicUsize,
    /// Set by an admin suspension: no new deliveries start.
    pub suspended: AtomicBool,
    /// The running policy no longer routes this queue: new mail is refused;
    /// what is queued keeps its old settings until it is delivered or expires.
    pub unrouted: AtomicBool,
}

impl Queue {
    pub fn new(name: QueueName, settings: QueueSettings) -> Queue {
        Queue {
            label: name.to_string(),
            name,
            settings: std::sync::RwLock::new(Arc::new(settings)),
            ready: Mutex::new(VecDeque::new()),
            scheduled: Mutex::new(BTreeMap::new()),
            ready_notify: Notify::new(),
            schedule_notify: Notify::new(),
            sessions: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            suspended: AtomicBool::new(false),
            unrouted: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> Arc<QueueSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_settings(&self, s: QueueSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        self.schedule_notify.notify_one();
    }

    /// Adds a message: straight to ready when it is due and there is room.
    pub fn insert(&self, msg: MessageRef) {
        let due = msg.due_ms().unwrap_or(0);
        if due <= now_ms() {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.len() < self.settings().egress.max_ready {
                ready.push_back(msg);
                drop(ready);
                self.ready_notify.notify_one();
                return;
            }
        }
        self.scheduled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((due, msg.id().as_u128()), msg);
        self.schedule_notify.notify_one();
    }

    pub fn take_ready(&self, max: usize) -> Vec<MessageRef> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(ready.len());
        let out: Vec<_> = ready.drain(..n).collect();
        drop(ready);
        if !out.is_empty() {
            self.in_flight.fetch_add(out.len(), Ordering::Relaxed);
            // Room was made: the maintainer may promote more.
            self.schedule_notify.notify_one();
        }
        out
    }

    pub fn ready_len(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn scheduled_len(&self) -> usize {
        self.scheduled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn depth(&self) -> usize {
        self.ready_len() + self.scheduled_len() + self.in_flight.load(Ordering::Relaxed)
    }

    /// Moves due messages to ready while there is room. Returns the messages
    /// found past `max_age` (the caller expires them) and when to look again.
    pub fn promote(&self) -> (Vec<MessageRef>, Option<u64>) {
        let now = now_ms();
        let settings = self.settings();
        let max_age = settings.config.max_age.as_millis() as u64;
        let mut expired = Vec::new();
        let mut moved = 0;
        let mut sched = self.scheduled.lock().unwrap_or_else(|e| e.into_inner());
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = sched.first_entry() {
            let (due, _) = *entry.key();
            if due > now {
                break;
            }
            if now.saturating_sub(entry.get().created_ms()) >= max_age {
                expired.push(entry.remove());
                continue;
            }
            if ready.len() >= settings.egress.max_ready {
                break;
            }
            ready.push_back(entry.remove());
            moved += 1;
        }
        let next = sched.first_key_value().map(|((due, _), _)| *due);
        drop(ready);
        drop(sched);
        for _ in 0..moved {
            self.ready_notify.notify_one();
        }
        (expired, next)
    }

    /// Everything waiting in ready goes back to the schedule at `due_ms`.
    pub fn drain_ready(&self) -> Vec<MessageRef> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<_> = ready.drain(..).collect();
        self.in_flight.fetch_add(out.len(), Ordering::Relaxed);
        out
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// Takes every message waiting (scheduled or ready), not those in flight.
    pub fn take_all_waiting(&self) -> Vec<MessageRef> {
        let mut out = self.drain_ready();
        let sched: Vec<_> =
            std::mem::take(&mut *self.scheduled.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        self.in_flight.fetch_add(sched.len(), Ordering::Relaxed);
        out.extend(sched);
        out
    }

    pub fn done(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }
}
