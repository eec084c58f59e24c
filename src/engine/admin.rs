//! Administrative actions on queues: bounce what waits, suspend and resume.

use super::Engine;
use super::log_record::RecordType;
use super::queue::Queue;
use crate::model::queue_name::QueueName;
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
    pub scheduled: usize,
    pub ready: usize,
    pub in_flight: usize,
    pub sessions: usize,
    pub suspended: bool,
}

impl Engine {
    pub fn queue_summary(&self) -> Vec<QueueSummary> {
        let mut out: Vec<_> = self
            .queues()
            .iter()
            .map(|q| QueueSummary {
                name: q.label.clone(),
                scheduled: q.scheduled_len(),
                ready: q.ready_len(),
                in_flight: q.in_flight.load(Ordering::Relaxed),
                sessions: q.sessions.load(Ordering::Relaxed),
                suspended: q.is_suspended(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Bounces every waiting message of the matching queues (AdminBounce).
    pub fn admin_bounce(&self, criteria: &Criteria, reason: &str) -> BounceReport {
        let mut bounced = BTreeMap::new();
        let response = format!("551 5.6.0 administratively bounced: {reason}");
        for q in self.queues().iter().filter(|q| criteria.matches(&q.name)) {
            let msgs = q.take_all_waiting();
            for m in &msgs {
                self.log(RecordType::AdminBounce, m, &q.label, &response, None);
                self.finish_bounce(m, response.clone());
                q.done(1);
            }
            if !msgs.is_empty() {
                bounced.insert(q.label.clone(), msgs.len());
            }
        }
        let total_bounced = bounced.values().sum();
        tracing::warn!(?criteria, reason, total_bounced, "admin bounce");
        BounceReport {
            id: uuid::Uuid::now_v7().to_string(),
            bounced,
            total_bounced,
        }
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

    fn apply_suspensions(self: &Arc<Self>) {
        for q in self.queues() {
            let now = self.is_suspended_name(&q.name);
            let was = q.suspended.swap(now, Ordering::AcqRel);
            if was && !now {
                resume_queue(self, &q);
            }
        }
    }
}

fn resume_queue(engine: &Arc<Engine>, q: &Arc<Queue>) {
    q.schedule_notify.notify_one();
    super::dispatcher::ensure_sessions(engine, q);
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
