//! One queue (`campaign:tenant@domain`) as the engine holds it in memory:
//! its ready messages, the sessions delivering them, and what the policy
//! said about it. Messages waiting for a later attempt are not here: they
//! are on the spool's schedule until the pager brings them back.

use super::throttle::Throttle;
use crate::model::config::{CustomLua, EgressPathConfig, QueueConfig};
use crate::model::message::MessageRef;
use crate::model::queue_name::QueueName;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
    ready: Mutex<Ready>,
    /// Wakes sessions waiting for ready messages.
    pub ready_notify: Notify,
    pub sessions: AtomicUsize,
    /// Sessions whose constructor succeeded and that have not ended.
    pub live_sessions: AtomicUsize,
    pub in_flight: AtomicUsize,
    /// Set by an admin suspension: no new deliveries start.
    pub suspended: AtomicBool,
    /// Messages of this queue wait on the spool's schedule, due now: new ones
    /// go behind them rather than overtake them.
    pub backlogged: AtomicBool,
}

struct Ready {
    messages: VecDeque<MessageRef>,
    /// Removed from the engine (reaped, or no longer routed): nothing may be
    /// added; whoever holds a message for it looks the queue up again.
    closed: bool,
    /// When the queue last had no work at all.
    idle_since: Option<Instant>,
}

impl Queue {
    pub fn new(name: QueueName, settings: QueueSettings) -> Queue {
        Queue {
            label: name.to_string(),
            name,
            settings: std::sync::RwLock::new(Arc::new(settings)),
            ready: Mutex::new(Ready {
                messages: VecDeque::new(),
                closed: false,
                idle_since: Some(Instant::now()),
            }),
            ready_notify: Notify::new(),
            sessions: AtomicUsize::new(0),
            live_sessions: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            suspended: AtomicBool::new(false),
            backlogged: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> Arc<QueueSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_settings(&self, s: QueueSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// Adds an active message to ready; gives it back if the queue is closed.
    pub fn insert(&self, msg: MessageRef) -> Result<(), MessageRef> {
        let mut ready = self.lock();
        if ready.closed {
            return Err(msg);
        }
        ready.messages.push_back(msg);
        ready.idle_since = None;
        drop(ready);
        self.ready_notify.notify_one();
        Ok(())
    }

    /// Room in ready for messages paged in (`max_ready`).
    pub fn room(&self) -> usize {
        self.settings()
            .egress
            .max_ready
            .saturating_sub(self.ready_len())
    }

    /// New mail may go straight to ready (otherwise it goes on the schedule).
    pub fn takes_new_mail(&self) -> bool {
        !self.is_suspended() && !self.backlogged.load(Ordering::Acquire) && self.room() > 0
    }

    pub fn take_ready(&self, max: usize) -> Vec<MessageRef> {
        let mut ready = self.lock();
        let n = max.min(ready.messages.len());
        let out: Vec<_> = ready.messages.drain(..n).collect();
        if !out.is_empty() {
            self.in_flight.fetch_add(out.len(), Ordering::AcqRel);
        }
        out
    }

    pub fn ready_len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn depth(&self) -> usize {
        self.ready_len() + self.in_flight.load(Ordering::Acquire)
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// Takes every message waiting in ready (not those in flight); they
    /// count as in flight until the caller is done with them.
    pub fn take_all_waiting(&self) -> Vec<MessageRef> {
        let mut ready = self.lock();
        let out: Vec<_> = ready.messages.drain(..).collect();
        self.in_flight.fetch_add(out.len(), Ordering::AcqRel);
        out
    }

    /// Messages taken from ready are finished with.
    pub fn done(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let mut ready = self.lock();
            if ready.messages.is_empty() && ready.idle_since.is_none() {
                ready.idle_since = Some(Instant::now());
            }
        }
    }

    /// Closes the queue if it has had nothing to do for `idle`: no ready
    /// messages, none in flight, no sessions. Returns whether it closed.
    pub fn close_if_idle(&self, idle: std::time::Duration) -> bool {
        let mut ready = self.lock();
        let idle_long = ready.idle_since.is_some_and(|t| t.elapsed() >= idle);
        if idle_long
            && ready.messages.is_empty()
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.sessions.load(Ordering::Acquire) == 0
        {
            ready.closed = true;
            return true;
        }
        false
    }

    /// Closes the queue whatever it holds; returns what was waiting in ready
    /// (counted as in flight until the caller is done with them).
    pub fn close(&self) -> Vec<MessageRef> {
        let mut ready = self.lock();
        ready.closed = true;
        let out: Vec<_> = ready.messages.drain(..).collect();
        self.in_flight.fetch_add(out.len(), Ordering::AcqRel);
        out
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}
