//! A route's status, as a pure function of what the last sync found.

use super::crd::AmqpRouteStatus;
use super::render::Rejected;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What the sync decided for one route.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accepted,
    Rejected(Rejected),
}

/// Facts about the policy the sync published.
pub struct Published<'a> {
    pub hash: &'a str,
    pub configmap: &'a str,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps `lastTransitionTime` of a condition whose status did not change.
fn carry_over(mut new: Condition, old: &[Condition]) -> Condition {
    if let Some(prev) = old.iter().find(|c| c.type_ == new.type_)
        && prev.status == new.status
    {
        new.last_transition_time = prev.last_transition_time.clone();
    }
    new
}

pub fn desired(
    old: Option<&AmqpRouteStatus>,
    generation: Option<i64>,
    verdict: &Verdict,
    published: &Published,
    now: Time,
) -> AmqpRouteStatus {
    let prev: &[Condition] = old.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let (accepted, ready) = match verdict {
        Verdict::Accepted => (
            condition(
                "Accepted",
                true,
                "Valid",
                "the route is valid and serves its queue".into(),
                generation,
                &now,
            ),
            condition(
                "Ready",
                true,
                "PolicyPublished",
                format!(
                    "policy {} is in ConfigMap {}",
                    short(published.hash),
                    published.configmap
                ),
                generation,
                &now,
            ),
        ),
        Verdict::Rejected(r) => (
            condition(
                "Accepted",
                false,
                r.reason,
                r.message.clone(),
                generation,
                &now,
            ),
            condition(
                "Ready",
                false,
                "NotAccepted",
                "the route is not in the published policy".into(),
                generation,
                &now,
            ),
        ),
    };
    AmqpRouteStatus {
        observed_generation: generation,
        conditions: vec![carry_over(accepted, prev), carry_over(ready, prev)],
        policy_hash: Some(published.hash.to_owned()),
        relays: old.and_then(|s| s.relays.clone()),
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// The Accepted condition's status, to see transitions worth an Event.
pub fn accepted(s: Option<&AmqpRouteStatus>) -> Option<&str> {
    s?.conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    const PUB: Published = Published {
        hash: "abcdef0123456789",
        configmap: "ns/relay-policy",
    };

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = desired(
            None,
            Some(1),
            &Verdict::Accepted,
            &PUB,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(accepted(Some(&first)), Some("True"));
        let again = desired(
            Some(&first),
            Some(2),
            &Verdict::Accepted,
            &PUB,
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(
            again.conditions[0].last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
        assert_eq!(again.observed_generation, Some(2));
        let rejected = Verdict::Rejected(Rejected {
            reason: "Conflict",
            message: "taken".into(),
        });
        let bad = desired(
            Some(&again),
            Some(3),
            &rejected,
            &PUB,
            t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(bad.conditions[0].status, "False");
        assert_eq!(bad.conditions[0].reason, "Conflict");
        assert_eq!(
            bad.conditions[0].last_transition_time,
            t("2026-01-03T00:00:00Z")
        );
        assert_eq!(bad.conditions[1].reason, "NotAccepted");
    }

    #[test]
    fn same_inputs_same_status() {
        let a = desired(
            None,
            Some(1),
            &Verdict::Accepted,
            &PUB,
            t("2026-01-01T00:00:00Z"),
        );
        let b = desired(
            Some(&a),
            Some(1),
            &Verdict::Accepted,
            &PUB,
            t("2026-05-01T00:00:00Z"),
        );
        assert_eq!(a, b, "nothing changed, so nothing to write");
    }
}
