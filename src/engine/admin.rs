//! Administrative actions on queues: bounce what waits, suspend and resume.

use super::Engine;
use super::log_record::RecordType;
use super::metrics::QueueLabel;
use super::spool::SpoolError;
use crate::model::queue_name::QueueName;
use crate::model::response::Response;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Which queues an action applies to; an absent field matches anything.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Criteria {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_domain: Option<String>,
}

impl Criteria {
    pub fn matches(&self, q: &QueueName) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(w) => have.is_some_and(|h| h.eq_ignore_ascii_case(w)),
        };
        eq(&self.domain, Some(&q.domain))
            && eq(&self.tenant, q.tenant.as_deref())
            && eq(&self.campaign, q.campaign.as_deref())
            && eq(&self.routing_domain, q.routing_domain.as_deref())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Suspension {
    pub id: String,
    #[serde(flatten)]
    pub criteria: Criteria,
    pub reason: String,
    /// Unix seconds when it lapses; absent means until resumed.
    pub expires: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct BounceReport {
    pub id: String,
    pub bounced: BTreeMap<String, usize>,
    pub total_bounced: usize,
}

#[derive(Debug, Serialize)]
pub struct QueueSummary {
    pub name: String,
    /// Waiting on the spool's schedule (not in memory): for a later attempt,
    /// behind a full ready queue, or held.
    pub scheduled: u64,
    pub ready: usize,
    pub in_flight: usize,
    pub sessions: usize,
    pub suspended: bool,
    /// The running policy cannot deliver this queue now; its messages wait.
    pub held: bool,
}

/// Scheduled messages taken from the spool per step of an administrative bounce.
const BOUNCE_STEP: usize = 1000;

impl Engine {
    pub async fn queue_summary(&self) -> Result<Vec<QueueSummary>, SpoolError> {
        let counts = self.spool.counts().await?;
        let mut out: BTreeMap<String, QueueSummary> = BTreeMap::new();
        let blank = |name: &str| QueueSummary {
            name: name.to_owned(),
            scheduled: 0,
            ready: 0,
            in_flight: 0,
            sessions: 0,
            suspended: false,
            held: false,
        };
        for q in self.queues() {
            let e = out
                .entry(q.label.clone())
                .or_insert_with(|| blank(&q.label));
            e.ready = q.ready_len();
            e.in_flight = q.in_flight.load(Ordering::Relaxed);
            e.sessions = q.sessions.load(Ordering::Relaxed);
            e.suspended = q.is_suspended();
        }
        for (label, n) in counts.scheduled {
            let e = out.entry(label.clone()).or_insert_with(|| blank(&label));
            e.scheduled = n;
            e.suspended |= self.is_suspended_label(&label);
            e.held = self.held.is_held(&label);
        }
        Ok(out.into_values().collect())
    }

    /// Bounces every waiting message of the matching queues (AdminBounce):
    /// those ready in memory and those on the schedule.
    pub async fn admin_bounce(
        &self,
        criteria: &Criteria,
        reason: &str,
    ) -> Result<BounceReport, SpoolError> {
        let mut bounced = BTreeMap::new();
        let response = Response::parse(&format!("551 5.6.0 administratively bounced: {reason}"));
        for q in self.queues().iter().filter(|q| criteria.matches(&q.name)) {
            let msgs = q.take_all_waiting();
            if let Err(e) = self.spool.load_bodies(&msgs).await {
                tracing::warn!(error = %e, "admin bounce: bodies not readable; log records without headers");
            }
            for m in &msgs {
                self.log(RecordType::AdminBounce, m, &q.label, &response);
                self.finish_bounce(m);
                self.released(q);
            }
            if !msgs.is_empty() {
                *bounced.entry(q.label.clone()).or_default() += msgs.len();
            }
        }
        let counts = self.spool.counts().await?;
        for (label, _) in counts.scheduled {
            let matches = QueueName::parse(&label).is_ok_and(|n| criteria.matches(&n));
            if !matches {
                continue;
            }
            loop {
                let msgs = self.spool.take_scheduled(&label, BOUNCE_STEP).await?;
                for m in &msgs {
                    self.log(RecordType::AdminBounce, m, &label, &response);
                    self.metrics.bounced.inc();
                }
                if msgs.is_empty() {
                    break;
                }
                *bounced.entry(label.clone()).or_default() += msgs.len();
            }
        }
        let total_bounced = bounced.values().sum();
        tracing::warn!(?criteria, reason, total_bounced, "admin bounce");
        Ok(BounceReport {
            id: uuid::Uuid::now_v7().to_string(),
            bounced,
            total_bounced,
        })
    }

    pub fn suspend(
        self: &Arc<Self>,
        criteria: Criteria,
        reason: String,
        duration: Option<Duration>,
    ) -> Suspension {
        let s = Suspension {
            id: uuid::Uuid::now_v7().to_string(),
            criteria,
            reason,
            expires: duration.map(|d| crate::model::message::now_ms() / 1000 + d.as_secs()),
        };
        self.suspensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.clone());
        self.apply_suspensions();
        if let Some(d) = duration {
            let engine = self.clone();
            let id = s.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                engine.resume(&id);
            });
        }
        tracing::warn!(id = %s.id, criteria = ?s.criteria, reason = %s.reason, "queues suspended");
        s
    }

    /// Ends a suspension; returns whether it existed.
    pub fn resume(self: &Arc<Self>, id: &str) -> bool {
        let removed = {
            let mut all = self.suspensions.lock().unwrap_or_else(|e| e.into_inner());
            let before = all.len();
            all.retain(|s| s.id != id);
            all.len() != before
        };
        if removed {
            tracing::info!(%id, "suspension ended");
            self.apply_suspensions();
        }
        removed
    }

    pub fn suspensions(&self) -> Vec<Suspension> {
        self.suspensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn is_suspended_name(&self, name: &QueueName) -> bool {
        self.suspensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s.criteria.matches(name))
    }

    pub(super) fn is_suspended_label(&self, label: &str) -> bool {
        let suspensions = self.suspensions.lock().unwrap_or_else(|e| e.into_inner());
        !suspensions.is_empty()
            && QueueName::parse(label)
                .is_ok_and(|n| suspensions.iter().any(|s| s.criteria.matches(&n)))
    }

    /// Suspended queues give their waiting messages back to the schedule
    /// (memory is for queues that deliver); resumed ones get the pager's attention.
    fn apply_suspensions(self: &Arc<Self>) {
        for q in self.queues() {
            let now = self.is_suspended_name(&q.name);
            let was = q.suspended.swap(now, Ordering::AcqRel);
            if now && !was {
                for m in q.take_all_waiting() {
                    q.done(1);
                    m.drop_uncharged_body();
                    self.unload(&q.label, &m);
                }
            }
            if was && !now {
                super::dispatcher::ensure_sessions(self, &q);
            }
        }
        self.wake_pager();
    }

    /// Sets the gauges that describe the spool and the queues.
    pub async fn refresh_gauges(&self) -> Result<(), SpoolError> {
        let counts = self.spool.counts().await?;
        let m = &self.metrics;
        m.spooled.set(counts.messages as i64);
        m.active.set(self.active() as i64);
        m.ready
            .set((self.is_receiving() && self.routes_ready()) as i64);
        m.queue_depth.clear();
        let queues = self.queues();
        m.queues.set(queues.len() as i64);
        m.tasks.set(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as i64,
        );
        for q in queues {
            m.queue_depth
                .get_or_create(&QueueLabel {
                    queue: q.label.clone(),
                })
                .set(q.depth() as i64);
        }
        m.held.clear();
        for (label, n) in counts.scheduled {
            if self.held.is_held(&label) {
                m.held
                    .get_or_create(&QueueLabel { queue: label })
                    .set(n as i64);
            }
        }
        Ok(())
    }

    /// Drops queues that have had nothing to do for `queue_idle`.
    pub(super) fn reap_idle(&self) {
        let idle = self.limits.queue_idle;
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let before = queues.len();
        queues.retain(|_, q| !q.close_if_idle(idle));
        let reaped = before - queues.len();
        if reaped > 0 {
            tracing::debug!(
                reaped,
                left = queues.len(),
                "idle queues dropped from memory"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_match() {
        let q = QueueName::new("Amqp", Some("t"), Some("c"), None);
        assert!(Criteria::default().matches(&q));
        let c = |d: Option<&str>, t: Option<&str>| Criteria {
            domain: d.map(Into::into),
            tenant: t.map(Into::into),
            ..Criteria::default()
        };
        assert!(c(Some("AMQP"), None).matches(&q));
        assert!(c(Some("amqp"), Some("t")).matches(&q));
        assert!(!c(Some("amqp"), Some("other")).matches(&q));
        assert!(!c(Some("x"), None).matches(&q));
        assert!(!c(None, Some("t")).matches(&QueueName::new("amqp", None, None, None)));
    }
}
