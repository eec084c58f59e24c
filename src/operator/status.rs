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

/// What one ready relay pod reported on `/api/policy`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RelayView {
    pub pod: String,
    /// Content hashes of the files its running policy is made of.
    pub running: Vec<String>,
    /// The last policy it refused: its files' hashes and the error.
    pub rejected: Option<(Vec<String>, String)>,
}

/// How far the published policy has reached the relay pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Propagation {
    NoRelays,
    Propagating {
        done: usize,
        total: usize,
    },
    Rejected {
        pod: String,
        error: String,
        done: usize,
        total: usize,
    },
    Done {
        total: usize,
    },
}

/// Whether every ready relay runs the routes file with hash `routes_hash`.
pub fn propagation(routes_hash: &str, relays: &[RelayView]) -> Propagation {
    let total = relays.len();
    if total == 0 {
        return Propagation::NoRelays;
    }
    let done = relays
        .iter()
        .filter(|r| r.running.iter().any(|h| h == routes_hash))
        .count();
    if done == total {
        return Propagation::Done { total };
    }
    let refused = relays.iter().find(|r| {
        !r.running.iter().any(|h| h == routes_hash)
            && r.rejected
                .as_ref()
                .is_some_and(|(files, _)| files.iter().any(|h| h == routes_hash))
    });
    match refused {
        Some(r) => Propagation::Rejected {
            pod: r.pod.clone(),
            error: r
                .rejected
                .as_ref()
                .map(|(_, e)| e.clone())
                .unwrap_or_default(),
            done,
            total,
        },
        None => Propagation::Propagating { done, total },
    }
}

/// Facts about the policy the sync published.
pub struct Published<'a> {
    pub hash: &'a str,
    pub configmap: &'a str,
    pub propagation: &'a Propagation,
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
    let policy = short(published.hash);
    let cm = published.configmap;
    let (accepted, ready, relays) = match verdict {
        Verdict::Accepted => {
            let accepted = condition(
                "Accepted",
                true,
                "Valid",
                "the route is valid and serves its queue".into(),
                generation,
                &now,
            );
            let (ok, reason, message, relays) = match published.propagation {
                Propagation::Done { total } => (
                    true,
                    "Propagated",
                    format!(
                        "all {total} ready relay pod(s) run policy {policy} from ConfigMap {cm}"
                    ),
                    Some(format!("{total}/{total}")),
                ),
                Propagation::Propagating { done, total } => (
                    false,
                    "Propagating",
                    format!(
                        "{done}/{total} ready relay pod(s) run policy {policy} from ConfigMap {cm}"
                    ),
                    Some(format!("{done}/{total}")),
                ),
                Propagation::Rejected {
                    pod,
                    error,
                    done,
                    total,
                } => (
                    false,
                    "RelayRejected",
                    format!("relay pod {pod} refused policy {policy}: {error}"),
                    Some(format!("{done}/{total}")),
                ),
                Propagation::NoRelays => (
                    false,
                    "NoRelays",
                    format!("policy {policy} is in ConfigMap {cm}, but no relay pod is ready"),
                    Some("0/0".into()),
                ),
            };
            (
                accepted,
                condition("Ready", ok, reason, message, generation, &now),
                relays,
            )
        }
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
            None,
        ),
    };
    AmqpRouteStatus {
        observed_generation: generation,
        conditions: vec![carry_over(accepted, prev), carry_over(ready, prev)],
        policy_hash: Some(published.hash.to_owned()),
        relays,
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

    const DONE: Propagation = Propagation::Done { total: 2 };
    const PUB: Published = Published {
        hash: "abcdef0123456789",
        configmap: "ns/relay-policy",
        propagation: &DONE,
    };

    fn relay(pod: &str, running: &[&str], rejected: Option<(&[&str], &str)>) -> RelayView {
        RelayView {
            pod: pod.into(),
            running: running.iter().map(|s| s.to_string()).collect(),
            rejected: rejected
                .map(|(f, e)| (f.iter().map(|s| s.to_string()).collect(), e.to_string())),
        }
    }

    #[test]
    fn ready_only_when_every_relay_runs_the_routes() {
        let all = [
            relay("a", &["base", "r2"], None),
            relay("b", &["base", "r2"], None),
        ];
        assert_eq!(propagation("r2", &all), Propagation::Done { total: 2 });
        let half = [
            relay("a", &["base", "r2"], None),
            relay("b", &["base", "r1"], None),
        ];
        assert_eq!(
            propagation("r2", &half),
            Propagation::Propagating { done: 1, total: 2 }
        );
        let refused = [
            relay("a", &["base", "r2"], None),
            relay(
                "b",
                &["base", "r1"],
                Some((&["base", "r2"], "routes.lua:3: boom")),
            ),
        ];
        assert!(
            matches!(propagation("r2", &refused), Propagation::Rejected { ref pod, done: 1, total: 2, .. } if pod == "b")
        );
        // An old refusal of another version does not count against this one.
        let old_refusal = [relay("b", &["base", "r1"], Some((&["r0"], "old")))];
        assert_eq!(
            propagation("r2", &old_refusal),
            Propagation::Propagating { done: 0, total: 1 }
        );
        assert_eq!(propagation("r2", &[]), Propagation::NoRelays);

        let t = Time("2026-01-01T00:00:00Z".parse().unwrap());
        for (p, reason, relays) in [
            (
                Propagation::Propagating { done: 1, total: 3 },
                "Propagating",
                "1/3",
            ),
            (
                Propagation::Rejected {
                    pod: "b".into(),
                    error: "boom".into(),
                    done: 0,
                    total: 1,
                },
                "RelayRejected",
                "0/1",
            ),
            (Propagation::Done { total: 3 }, "Propagated", "3/3"),
            (Propagation::NoRelays, "NoRelays", "0/0"),
        ] {
            let published = Published {
                hash: "h",
                configmap: "ns/cm",
                propagation: &p,
            };
            let s = desired(None, Some(1), &Verdict::Accepted, &published, t.clone());
            assert_eq!(s.conditions[1].reason, reason);
            assert_eq!(
                s.conditions[1].status,
                if reason == "Propagated" {
                    "True"
                } else {
                    "False"
                }
            );
            assert_eq!(s.relays.as_deref(), Some(relays));
        }
    }

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
