//! The engine: reception into the spool, queues, delivery sessions and
//! outcomes. It holds at most `max_active` messages in memory; the rest wait
//! on the spool's schedule and the pager brings them in as room frees up.

pub mod admin;
pub mod dispatcher;
pub mod drain;
mod held;
pub mod log_record;
pub mod logs;
pub mod metrics;
mod pager;
pub mod policy_watch;
pub mod queue;
pub mod reload;
pub mod routes;
pub mod spool;
pub mod throttle;

use crate::model::config::Protocol;
use crate::model::message::{BodyBudget, Message, MessageRef, now_ms};
use crate::model::queue_name::QueueName;
use crate::model::response::Response;
use crate::policy::delivery::Outcome;
use crate::policy::{Policy, PolicyError};
use log_record::RecordType;
use metrics::Metrics;
use queue::Queue;
use spool::{NewMessage, Spool, SpoolError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Why a message was not accepted; `code` is SMTP-style (4xx temporary, 5xx permanent).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// A policy error as the client hears it: a `kumo.reject` as given; any
    /// other failure temporary (fixing the policy makes it work), after
    /// `about`, what was being decided.
    pub fn policy(e: PolicyError, about: Option<&str>) -> Refusal {
        match (e, about) {
            (PolicyError::Rejected(r), _) => Refusal {
                code: r.code,
                reason: r.message,
            },
            (other, Some(about)) => Refusal {
                code: 451,
                reason: format!("4.3.0 {about}: policy error: {other}"),
            },
            (other, None) => Refusal {
                code: 451,
                reason: format!("4.3.0 policy error: {other}"),
            },
        }
    }
}

impl From<PolicyError> for Refusal {
    fn from(e: PolicyError) -> Refusal {
        Refusal::policy(e, None)
    }
}

/// What bounds the engine's memory, whatever the backlog.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Messages held in memory (ready or being delivered); the rest wait on disk.
    pub max_active: usize,
    /// Bytes of message bodies kept in memory for active messages.
    pub body_memory: usize,
    /// A queue with nothing to do for this long is dropped from memory.
    pub queue_idle: Duration,
    /// Held messages (no route delivers their queue) expire after this long
    /// on the schedule: KumoMTA's default `max_age`, as no queue config says otherwise.
    pub held_max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_active: 20_000,
            body_memory: 64 * 1024 * 1024,
            queue_idle: Duration::from_secs(60),
            held_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub struct Engine {
    spool: Spool,
    logs: logs::Logs,
    policy: RwLock<Arc<Policy>>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Serialises queue creation so get_queue_config runs once per queue.
    creating: tokio::sync::Mutex<()>,
    pub metrics: Metrics,
    shutdown: watch::Sender<bool>,
    /// Set when reception stops (SIGTERM), before delivery does: a draining
    /// relay delivers what it holds but takes nothing new.
    reception_closed: watch::Sender<bool>,
    suspensions: Mutex<Vec<admin::Suspension>>,
    epoch: AtomicU64,
    reloading: tokio::sync::Mutex<()>,
    reload_error: Mutex<Option<reload::ReloadError>>,
    limits: Limits,
    /// Messages in memory: in a ready queue or being delivered.
    active: AtomicUsize,
    bodies: Arc<BodyBudget>,
    held: held::Held,
    /// Wakes the pager: room freed, messages scheduled, routes changed.
    pager: Notify,
    /// The schedule changed (or a due time came): the pager asks the spool.
    schedule_hint: AtomicBool,
    /// Due messages wait on the schedule for room in memory: a release wakes the pager.
    backlog: AtomicBool,
    /// The sources of the routes (the relay's API watch names them): read
    /// yet, and how.
    pub routes: routes::Sources,
    /// Delivery sessions running, for a graceful stop.
    sessions: AtomicUsize,
    sessions_done: Notify,
}

impl Engine {
    pub fn new(spool: Spool, policy: Arc<Policy>, logs: logs::Logs, limits: Limits) -> Arc<Engine> {
        Arc::new(Engine {
            spool,
            logs,
            policy: RwLock::new(policy),
            queues: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            shutdown: watch::channel(false).0,
            reception_closed: watch::channel(false).0,
            suspensions: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(1),
            reloading: tokio::sync::Mutex::new(()),
            reload_error: Mutex::new(None),
            bodies: BodyBudget::new(limits.body_memory),
            limits,
            active: AtomicUsize::new(0),
            held: held::Held::default(),
            pager: Notify::new(),
            schedule_hint: AtomicBool::new(true),
            backlog: AtomicBool::new(false),
            routes: routes::Sources::default(),
            sessions: AtomicUsize::new(0),
            sessions_done: Notify::new(),
        })
    }

    /// Starts the pager, which brings scheduled messages in as they fall due.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(pager::run(self.clone()));
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Changes to true when reception stops (listeners stop taking mail).
    pub fn reception_signal(&self) -> watch::Receiver<bool> {
        self.reception_closed.subscribe()
    }

    pub fn is_receiving(&self) -> bool {
        !*self.reception_closed.borrow()
    }

    /// Listeners stop taking mail; delivery goes on.
    pub fn close_reception(&self) {
        self.reception_closed.send_replace(true);
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn known_queue(&self, label: &str) -> Option<Arc<Queue>> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            .cloned()
    }

    /// Until the routes are known, new mail is refused temporarily and
    /// nothing spooled is delivered, so a relay that starts before its routes
    /// arrive holds mail instead of bouncing it. `sources`: bit and name of
    /// each source the routes come from.
    pub fn wait_for_routes(&self, sources: &[(u8, &'static str)]) {
        self.routes.wait_for(sources);
    }

    /// One source of the routes has been read (and a policy with it runs).
    pub fn routes_read(&self, source: u8) {
        if self.routes.read(source) {
            tracing::info!("routes are in: delivering");
            self.held.clear();
            self.wake_pager();
        }
    }

    pub fn routes_ready(&self) -> bool {
        self.routes.ready()
    }

    /// The API has not answered for these sources within the bound: the
    /// running policy, loaded from their mounted copies, serves.
    pub fn serve_mounted_routes(&self, sources: u8) {
        for source in (0..8).map(|i| 1u8 << i).filter(|b| sources & b != 0) {
            self.routes.mounted(source);
            self.routes_read(source);
        }
        self.metrics
            .routes_from_mount
            .set(self.routes.from_mount().count_ones() as i64);
    }

    /// A source came through the API (again).
    pub fn routes_via_api(&self, source: u8) {
        if self.routes.via_api(source) {
            tracing::info!(
                source = ?self.routes.names(source),
                "the source answers: serving its copy instead of the mounted one"
            );
        }
        self.metrics
            .routes_from_mount
            .set(self.routes.from_mount().count_ones() as i64);
    }

    /// The queue for a name, created on first use from the policy's
    /// `get_queue_config`; only `custom_lua` queues exist here.
    pub async fn queue(self: &Arc<Self>, name: &QueueName) -> Result<Arc<Queue>, Refusal> {
        let label = name.to_string();
        if let Some(q) = self.known_queue(&label) {
            return Ok(q);
        }
        if let Some(r) = self.held.refusal(&label) {
            return Err(r);
        }
        let _creating = self.creating.lock().await;
        if let Some(q) = self.known_queue(&label) {
            return Ok(q);
        }
        let policy = self.policy();
        let about = format!("queue {label}");
        let policy_refusal = |e| Refusal::policy(e, Some(&about));
        let config = policy.queue_config(name).await.map_err(policy_refusal)?;
        let custom = match &config.protocol {
            Protocol::CustomLua(c) => c.clone(),
            Protocol::Smtp => return Err(unrouted(&label)),
        };
        let egress = policy
            .egress_path_config(name)
            .await
            .map_err(policy_refusal)?;
        let q = Arc::new(Queue::new(
            name.clone(),
            queue::QueueSettings::new(config, custom, egress),
        ));
        q.suspended
            .store(self.is_suspended_name(name), Ordering::Release);
        self.held.release(&label);
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label, q.clone());
        Ok(q)
    }

    /// Accepts messages: each gets its queue, then all go into the spool in
    /// one durable commit. Returns one result per message, in order; `Ok`
    /// only for messages that are durable.
    pub async fn receive(self: &Arc<Self>, msgs: Vec<MessageRef>) -> Vec<Result<(), Refusal>> {
        let mut results = Vec::with_capacity(msgs.len());
        let mut routed = Vec::new();
        let mut slots = Vec::new();
        for msg in msgs {
            match self.route(&msg).await {
                Ok(q) => {
                    slots.push(results.len());
                    routed.push((msg, q));
                    results.push(Ok(()));
                }
                Err(r) => results.push(Err(r)),
            }
        }
        if let Err(refusal) = self.store(routed).await {
            for i in slots {
                results[i] = Err(refusal.clone());
            }
        }
        results
    }

    /// Accepts all messages or none (SMTP's one reply to DATA covers every
    /// recipient): each must have a queue, then all go into one durable commit.
    pub async fn receive_all(self: &Arc<Self>, msgs: Vec<MessageRef>) -> Result<(), Refusal> {
        let mut routed = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let q = self.route(&msg).await?;
            routed.push((msg, q));
        }
        self.store(routed).await
    }

    async fn route(self: &Arc<Self>, msg: &Message) -> Result<Arc<Queue>, Refusal> {
        if !self.routes_ready() {
            return Err(Refusal {
                code: 451,
                reason: "4.3.0 the relay is waiting for its routes, try again later".into(),
            });
        }
        let name = msg.queue_name().map_err(|reason| Refusal {
            code: 550,
            reason: format!("5.1.3 {reason}"),
        })?;
        self.queue(&name).await
    }

    /// Makes routed messages durable in one commit; those the engine has
    /// room for stay in memory, the others wait on the schedule.
    async fn store(self: &Arc<Self>, routed: Vec<(MessageRef, Arc<Queue>)>) -> Result<(), Refusal> {
        if routed.is_empty() {
            return Ok(());
        }
        let active: Vec<bool> = routed.iter().map(|(_, q)| self.admit(q)).collect();
        let news: Vec<NewMessage> = routed
            .iter()
            .zip(&active)
            .map(|((m, q), &active)| NewMessage {
                msg: m,
                queue: &q.label,
                active,
            })
            .collect();
        let stored = self.spool.insert(&news).await;
        drop(news);
        if let Err(e) = stored {
            let admitted = active.iter().filter(|a| **a).count();
            self.active.fetch_sub(admitted, Ordering::AcqRel);
            return Err(spool_refusal(&e));
        }
        self.metrics.received.inc_by(routed.len() as u64);
        let mut scheduled = false;
        for ((m, q), active) in routed.into_iter().zip(active) {
            // KumoMTA records a reception as a bare 250 with no text.
            self.log(RecordType::Reception, &m, &q.label, &Response::new(250, ""));
            if active {
                m.keep_body_within(&self.bodies);
                self.place(&q, m);
            } else {
                q.backlogged.store(true, Ordering::Release);
                scheduled = true;
            }
        }
        if scheduled {
            self.wake_pager();
        }
        Ok(())
    }

    /// Takes a place in memory for a new message of `q`, if there is one.
    fn admit(&self, q: &Queue) -> bool {
        q.takes_new_mail() && self.reserve_active(1) == 1
    }

    /// Reserves up to `n` places in memory; returns how many.
    fn reserve_active(&self, n: usize) -> usize {
        let mut cur = self.active.load(Ordering::Acquire);
        loop {
            let take = n.min(self.limits.max_active.saturating_sub(cur));
            if take == 0 {
                return 0;
            }
            match self.active.compare_exchange_weak(
                cur,
                cur + take,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }

    /// An active message goes to its queue's ready list; if the queue was
    /// closed meanwhile, back on the schedule.
    fn place(self: &Arc<Self>, q: &Arc<Queue>, m: MessageRef) {
        match q.insert(m) {
            Ok(()) => dispatcher::ensure_sessions(self, q),
            Err(m) => self.unload(&q.label, &m),
        }
    }

    /// An active message leaves memory for the schedule, unchanged but for
    /// what its envelope says (its retry time, its attempts).
    fn unload(&self, label: &str, m: &Message) {
        self.spool.schedule(m, label);
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.wake_pager();
    }

    /// A message taken from `q` that was not attempted goes back: to ready,
    /// or to the schedule when the queue is closed or suspended.
    pub(crate) fn hand_back(self: &Arc<Self>, q: &Arc<Queue>, m: MessageRef) {
        q.done(1);
        m.drop_uncharged_body();
        if q.is_suspended() {
            self.unload(&q.label, &m);
        } else {
            self.place(q, m);
        }
    }

    /// Applies a delivery outcome to a message that was taken from `q`.
    pub fn complete(&self, q: &Queue, msg: &MessageRef, outcome: Outcome) {
        match outcome {
            Outcome::Delivered(resp) => {
                tracing::debug!(id = %msg.id(), queue = %q.label, response = %resp, "delivered");
                self.log_delivery(RecordType::Delivery, q, msg, &resp);
                self.metrics.delivered.inc();
                self.spool.remove(msg.id());
                self.released(q);
            }
            Outcome::Bounced(resp) => {
                tracing::warn!(id = %msg.id(), queue = %q.label, response = %resp, "bounced");
                self.log_delivery(RecordType::Bounce, q, msg, &resp);
                self.finish_bounce(msg);
                self.released(q);
            }
            Outcome::Transient(resp) => {
                self.metrics.transient.inc();
                self.log_delivery(RecordType::TransientFailure, q, msg, &resp);
                let settings = q.settings();
                let delay = settings.config.retry_delay(msg.num_attempts());
                let next = now_ms() + delay.as_millis() as u64;
                let expires = msg.created_ms() + settings.config.max_age.as_millis() as u64;
                if next >= expires {
                    self.expire(&q.label, msg, &resp);
                    self.released(q);
                } else {
                    tracing::info!(id = %msg.id(), queue = %q.label, response = %resp, retry_in = ?delay, "transient failure");
                    msg.record_attempt(next);
                    q.done(1);
                    self.unload(&q.label, msg);
                }
            }
        }
    }

    /// A message taken from `q` left the spool.
    fn released(&self, q: &Queue) {
        q.done(1);
        self.active.fetch_sub(1, Ordering::AcqRel);
        if self.backlog.load(Ordering::Acquire) {
            self.pager.notify_one();
        }
    }

    fn wake_pager(&self) {
        self.schedule_hint.store(true, Ordering::Release);
        self.pager.notify_one();
    }

    fn finish_bounce(&self, msg: &Message) {
        self.metrics.bounced.inc();
        self.spool.remove(msg.id());
    }

    /// Logs and removes a message past its `max_age`.
    fn expire(&self, queue: &str, msg: &Message, last: &Response) {
        tracing::warn!(id = %msg.id(), %queue, last_response = %last, "expired: older than max_age");
        self.metrics.expired.inc();
        self.log(RecordType::Expiration, msg, queue, last);
        self.spool.remove(msg.id());
    }

    /// Logs a message already taken off the schedule as expired.
    fn expired_off_schedule(&self, queue: &str, msg: &Message, why: &Response) {
        self.metrics.expired.inc();
        self.log(RecordType::Expiration, msg, queue, why);
    }

    fn log(&self, kind: RecordType, msg: &Message, queue: &str, response: &Response) {
        if !self.logs.wanted() {
            return;
        }
        self.logs.emit(&log_record::Event {
            kind,
            msg,
            queue,
            response: response.clone(),
            lua_constructor: None,
        });
    }

    /// A record of a custom_lua delivery attempt, naming its constructor.
    fn log_delivery(&self, kind: RecordType, q: &Queue, msg: &Message, response: &Response) {
        if !self.logs.wanted() {
            return;
        }
        let settings = q.settings();
        self.logs.emit(&log_record::Event {
            kind,
            msg,
            queue: &q.label,
            response: response.clone(),
            lua_constructor: Some(&settings.custom_lua.constructor),
        });
    }

    /// Reads the bodies of messages about to be delivered.
    pub(crate) async fn load_bodies(&self, msgs: &[MessageRef]) -> Result<(), SpoolError> {
        self.spool.load_bodies(msgs).await
    }

    /// Messages in memory now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Stops reception and new sends; returns at once.
    pub fn begin_shutdown(&self) {
        self.close_reception();
        let _ = self.shutdown.send(true);
        self.sessions_done.notify_waiters();
    }

    /// Waits until every delivery session has ended, or `limit` passed;
    /// returns how many still run.
    pub async fn drain_sessions(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.sessions_done.notified();
            let running = self.sessions.load(Ordering::Acquire);
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return self.sessions.load(Ordering::Acquire);
            }
        }
    }

    /// Spools what the log hooks still have, closes the local logs, makes
    /// every spool operation durable and closes the spool; returns what the
    /// spool holds (after `drain`, how the drain ended).
    pub async fn finish(
        &self,
        drain: Option<drain::DrainEnd>,
    ) -> Result<drain::SpoolReport, SpoolError> {
        self.logs.drain_hooks().await;
        self.logs.close().await;
        let report = self.spool_report(drain).await;
        self.spool.close().await?;
        report
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::AcqRel);
    }

    fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
        self.sessions_done.notify_waiters();
    }
}

fn unrouted(label: &str) -> Refusal {
    Refusal {
        code: 550,
        reason: format!(
            "5.1.2 queue {label}: the policy's get_queue_config gives no custom_lua \
             protocol for it, and this relay delivers only through custom_lua"
        ),
    }
}

fn spool_refusal(e: &SpoolError) -> Refusal {
    if e.is_full() {
        Refusal {
            code: 452,
            reason: format!("4.3.1 spool is out of space, try again later: {e}"),
        }
    } else {
        Refusal {
            code: 451,
            reason: format!("4.3.0 {e}"),
        }
    }
}
