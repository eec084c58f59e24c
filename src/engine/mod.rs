//! The engine: reception into the spool, queues, delivery sessions and outcomes.

pub mod admin;
pub mod configmap_watch;
pub mod dispatcher;
pub mod log_record;
pub mod logs;
pub mod metrics;
pub mod policy_watch;
pub mod queue;
pub mod reload;
pub mod spool;
pub mod throttle;

use crate::model::config::Protocol;
use crate::model::message::{Message, MessageRef, now_ms};
use crate::policy::delivery::Outcome;
use crate::policy::{Policy, PolicyError};
use log_record::RecordType;
use metrics::Metrics;
use queue::Queue;
use spool::{Spool, SpoolError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

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
    suspensions: Mutex<Vec<admin::Suspension>>,
    epoch: std::sync::atomic::AtomicU64,
    reloading: tokio::sync::Mutex<()>,
    reload_error: Mutex<Option<reload::ReloadError>>,
}

impl Engine {
    pub fn new(spool: Spool, policy: Arc<Policy>, logs: logs::Logs) -> Arc<Engine> {
        Arc::new(Engine {
            spool,
            logs,
            policy: RwLock::new(policy),
            queues: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            shutdown: watch::channel(false).0,
            suspensions: Mutex::new(Vec::new()),
            epoch: std::sync::atomic::AtomicU64::new(1),
            reloading: tokio::sync::Mutex::new(()),
            reload_error: Mutex::new(None),
        })
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

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The queue for a name, created on first use from the policy's
    /// `get_queue_config`; only `custom_lua` queues exist here.
    pub async fn queue(
        self: &Arc<Self>,
        name: &crate::model::queue_name::QueueName,
    ) -> Result<Arc<Queue>, Refusal> {
        let label = name.to_string();
        let known = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&label)
            .cloned();
        if let Some(q) = known {
            if q.unrouted.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Refusal {
                    code: 550,
                    reason: format!(
                        "5.1.2 queue {label}: the running policy no longer routes it \
                         (get_queue_config gives no custom_lua protocol)"
                    ),
                });
            }
            return Ok(q);
        }
        let _creating = self.creating.lock().await;
        if let Some(q) = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&label)
        {
            return Ok(q.clone());
        }
        let policy = self.policy();
        let policy_refusal = |e: PolicyError| match e {
            PolicyError::Rejected(r) => Refusal {
                code: r.code,
                reason: r.message,
            },
            other => Refusal {
                code: 451,
                reason: format!("4.3.0 queue {label}: policy error: {other}"),
            },
        };
        let config = policy.queue_config(name).await.map_err(policy_refusal)?;
        let custom = match &config.protocol {
            Protocol::CustomLua(c) => c.clone(),
            Protocol::Smtp => {
                return Err(Refusal {
                    code: 550,
                    reason: format!(
                        "5.1.2 queue {label}: the policy's get_queue_config gives no custom_lua \
                         protocol for it, and this relay delivers only through custom_lua"
                    ),
                });
            }
        };
        let egress = policy
            .egress_path_config(name)
            .await
            .map_err(policy_refusal)?;
        let q = Arc::new(Queue::new(
            name.clone(),
            queue::QueueSettings::new(config, custom, egress),
        ));
        q.suspended.store(
            self.is_suspended_name(name),
            std::sync::atomic::Ordering::Release,
        );
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label, q.clone());
        tokio::spawn(dispatcher::maintain(self.clone(), q.clone()));
        Ok(q)
    }

    /// Accepts messages: each gets its queue, then all go into the spool in
    /// one durable commit. Returns one result per message, in order; `Ok`
    /// only for messages that are durable.
    pub async fn receive(self: &Arc<Self>, msgs: Vec<MessageRef>) -> Vec<Result<(), Refusal>> {
        let mut results = Vec::with_capacity(msgs.len());
        let mut accepted: Vec<(usize, MessageRef, Arc<Queue>)> = Vec::new();
        for (i, msg) in msgs.into_iter().enumerate() {
            let routed = match msg.queue_name() {
                Ok(name) => self.queue(&name).await,
                Err(reason) => Err(Refusal {
                    code: 550,
                    reason: format!("5.1.3 {reason}"),
                }),
            };
            match routed {
                Ok(q) => {
                    accepted.push((i, msg, q));
                    results.push(Ok(()));
                }
                Err(r) => results.push(Err(r)),
            }
        }
        if accepted.is_empty() {
            return results;
        }
        let refs: Vec<&Message> = accepted.iter().map(|(_, m, _)| m.as_ref()).collect();
        if let Err(e) = self.spool.insert(&refs).await {
            let refusal = spool_refusal(&e);
            for (i, _, _) in &accepted {
                results[*i] = Err(refusal.clone());
            }
            return results;
        }
        self.metrics.received.inc_by(accepted.len() as u64);
        for (_, m, q) in accepted {
            self.log(RecordType::Reception, &m, &q.label, "250 OK", None);
            q.insert(m);
            dispatcher::ensure_sessions(self, &q);
        }
        results
    }

    /// Accepts all messages or none (SMTP's one reply to DATA covers every
    /// recipient): each must have a queue, then all go into one durable commit.
    pub async fn receive_all(self: &Arc<Self>, msgs: Vec<MessageRef>) -> Result<(), Refusal> {
        let mut routed = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let name = msg.queue_name().map_err(|reason| Refusal {
                code: 550,
                reason: format!("5.1.3 {reason}"),
            })?;
            let q = self.queue(&name).await?;
            routed.push((msg, q));
        }
        let refs: Vec<&Message> = routed.iter().map(|(m, _)| m.as_ref()).collect();
        self.spool
            .insert(&refs)
            .await
            .map_err(|e| spool_refusal(&e))?;
        self.metrics.received.inc_by(routed.len() as u64);
        for (m, q) in routed {
            self.log(RecordType::Reception, &m, &q.label, "250 OK", None);
            q.insert(m);
            dispatcher::ensure_sessions(self, &q);
        }
        Ok(())
    }

    /// Re-queues what the spool held at start. Messages the policy cannot
    /// place right now (a temporary error) are tried again every 30 s.
    pub async fn requeue(self: &Arc<Self>, msgs: Vec<MessageRef>) {
        let later = self.requeue_pass(msgs).await;
        if later.is_empty() {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            let mut later = later;
            while !later.is_empty() && !engine.is_shutting_down() {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                later = engine.requeue_pass(later).await;
            }
        });
    }

    async fn requeue_pass(self: &Arc<Self>, msgs: Vec<MessageRef>) -> Vec<MessageRef> {
        let mut later = Vec::new();
        for msg in msgs {
            let q = match msg.queue_name() {
                Ok(name) => self.queue(&name).await,
                Err(reason) => Err(Refusal { code: 550, reason }),
            };
            match q {
                Ok(q) => {
                    q.insert(msg);
                    dispatcher::ensure_sessions(self, &q);
                }
                Err(r) if r.is_temporary() => {
                    tracing::warn!(id = %msg.id(), reason = %r.reason, "spooled message cannot be queued yet; will try again in 30s");
                    later.push(msg);
                }
                Err(r) => {
                    let label = msg.queue_name().map(|q| q.to_string()).unwrap_or_default();
                    let resp = format!("{} {}", r.code, r.reason);
                    self.log(RecordType::Bounce, &msg, &label, &resp, None);
                    self.finish_bounce(&msg, resp);
                }
            }
        }
        later
    }

    /// Applies a delivery outcome to a message that was taken from `q`.
    pub fn complete(&self, q: &Queue, msg: &MessageRef, outcome: Outcome) {
        match outcome {
            Outcome::Delivered(resp) => {
                tracing::debug!(id = %msg.id(), queue = %q.label, response = %resp, "delivered");
                self.log(RecordType::Delivery, msg, &q.label, &resp, Some("Lua"));
                self.metrics.delivered.inc();
                self.spool.remove(msg.id());
            }
            Outcome::Bounced(resp) => {
                tracing::warn!(id = %msg.id(), queue = %q.label, response = %resp, "bounced");
                self.log(RecordType::Bounce, msg, &q.label, &resp, Some("Lua"));
                self.finish_bounce(msg, resp);
            }
            Outcome::Transient(resp) => {
                self.metrics.transient.inc();
                self.log(
                    RecordType::TransientFailure,
                    msg,
                    &q.label,
                    &resp,
                    Some("Lua"),
                );
                let settings = q.settings();
                let delay = settings.config.retry_delay(msg.num_attempts());
                let next = now_ms() + delay.as_millis() as u64;
                let expires = msg.created_ms() + settings.config.max_age.as_millis() as u64;
                if next >= expires {
                    self.expire(q, msg, &resp);
                } else {
                    tracing::info!(id = %msg.id(), queue = %q.label, response = %resp, retry_in = ?delay, "transient failure");
                    msg.record_attempt(next);
                    self.spool.update(msg);
                    q.insert(msg.clone());
                }
            }
        }
        q.done(1);
    }

    fn finish_bounce(&self, msg: &MessageRef, resp: String) {
        tracing::debug!(id = %msg.id(), response = %resp, "removed after bounce");
        self.metrics.bounced.inc();
        self.spool.remove(msg.id());
    }

    pub fn expire(&self, q: &Queue, msg: &MessageRef, last: &str) {
        tracing::warn!(id = %msg.id(), queue = %q.label, last_response = %last, "expired: older than max_age");
        self.metrics.expired.inc();
        self.log(RecordType::Expiration, msg, &q.label, last, None);
        self.spool.remove(msg.id());
    }

    fn log(
        &self,
        kind: RecordType,
        msg: &Message,
        queue: &str,
        response: &str,
        via: Option<&'static str>,
    ) {
        self.logs.emit(&log_record::Event {
            kind,
            msg,
            queue,
            response: log_record::Response::parse(response),
            delivery_protocol: via,
        });
    }

    /// Stops sessions from starting new sends and makes the spool durable.
    pub async fn shutdown(&self) -> Result<(), SpoolError> {
        let _ = self.shutdown.send(true);
        self.logs.close().await;
        self.spool.flush().await
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
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
