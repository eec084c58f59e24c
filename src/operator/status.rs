//! A route's status, as a pure function of what the last sync found. Each
//! route is judged by its own version (its digest in the rendered policy),
//! so a change to one route never touches another's status.

use super::crd::{AmqpRouteStatus, RelayCount};
use super::render::{Rejected, route_digests};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::{BTreeMap, VecDeque};

/// What the sync decided for one route.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accepted,
    Rejected(Rejected),
    /// Valid, but the policy rendered with this version does not load, so
    /// no relay runs it (relays keep the previous policy).
    CompileFailed(String),
}

/// What one ready relay pod reported on `/api/policy`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RelayView {
    pub pod: String,
    /// Content hashes of the files its running policy is made of.
    pub running: Vec<String>,
    /// The last policy it refused: its files' hashes and the error.
    pub rejected: Option<(Vec<String>, String)>,
    /// Keyed digests of the routes Secret it holds, by key; `None` when it
    /// reads credentials from a mounted Secret it cannot report on.
    pub secrets: Option<BTreeMap<String, String>>,
}

/// One route's current version: its digest in the policy and the keyed
/// digests of the credentials it reads.
pub struct Version<'a> {
    pub route: &'a str,
    pub digest: &'a str,
    pub credentials: &'a [(String, String)],
}

impl Version<'_> {
    fn runs_on(&self, r: &RelayView, history: &History) -> bool {
        let credentials = match &r.secrets {
            None => true,
            Some(held) => self.credentials.iter().all(|(k, d)| held.get(k) == Some(d)),
        };
        credentials && history.holds(&r.running, self.route, self.digest)
    }
}

/// The route digests of the policies this operator has published or found
/// published, by the policy file's content hash: what a relay reporting that
/// hash runs. Bounded: relays older than this many versions count as not
/// running any current route.
#[derive(Default)]
pub struct History {
    versions: VecDeque<(String, BTreeMap<String, String>)>,
}

const HISTORY: usize = 32;

impl History {
    pub fn record(&mut self, policy: &str) {
        let hash = crate::model::digest::plain(policy.as_bytes());
        if self.versions.iter().any(|(h, _)| *h == hash) {
            return;
        }
        if self.versions.len() == HISTORY {
            self.versions.pop_front();
        }
        self.versions.push_back((hash, route_digests(policy)));
    }

    /// Whether any of `files` is a policy holding `route` at `digest`.
    fn holds(&self, files: &[String], route: &str, digest: &str) -> bool {
        self.versions
            .iter()
            .any(|(h, routes)| files.contains(h) && routes.get(route).is_some_and(|d| d == digest))
    }
}

/// How far one route's current version has reached the relay pods.
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

/// Whether every ready relay runs this version of the route.
pub fn propagation(v: &Version, relays: &[RelayView], history: &History) -> Propagation {
    let total = relays.len();
    if total == 0 {
        return Propagation::NoRelays;
    }
    let done = relays.iter().filter(|r| v.runs_on(r, history)).count();
    if done == total {
        return Propagation::Done { total };
    }
    let refused = relays.iter().find_map(|r| match &r.rejected {
        Some((files, error))
            if !v.runs_on(r, history) && history.holds(files, v.route, v.digest) =>
        {
            Some((r.pod.clone(), error.clone()))
        }
        _ => None,
    });
    match refused {
        Some((pod, error)) => Propagation::Rejected {
            pod,
            error,
            done,
            total,
        },
        None => Propagation::Propagating { done, total },
    }
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

fn count(done: usize, total: usize) -> Option<RelayCount> {
    Some(RelayCount {
        ready: done as u32,
        total: total as u32,
    })
}

/// The Ready condition's (status, reason, message) and the relay count of
/// an accepted route.
fn readiness(
    p: &Propagation,
    generation: Option<i64>,
    configmap: &str,
) -> (bool, &'static str, String, Option<RelayCount>) {
    let version = match generation {
        Some(g) => format!("generation {g} of this route"),
        None => "this route".to_owned(),
    };
    match p {
        Propagation::Done { total } => (
            true,
            "Published",
            // Counts live in status.relays only: a message that changes
            // with every pod count would rewrite every route's status.
            format!("every ready relay pod runs {version} (from ConfigMap {configmap})"),
            count(*total, *total),
        ),
        Propagation::Propagating { done, total } => (
            false,
            "Propagating",
            format!(
                "not every ready relay pod runs {version} yet (from ConfigMap {configmap}; status.relays counts them)"
            ),
            count(*done, *total),
        ),
        Propagation::Rejected {
            pod,
            error,
            done,
            total,
        } => (
            false,
            "RelayRejected",
            format!("relay pod {pod} refused the policy with {version}: {error}"),
            count(*done, *total),
        ),
        Propagation::NoRelays => (
            false,
            "NoRelays",
            format!("{version} is in ConfigMap {configmap}, but no relay pod is ready"),
            count(0, 0),
        ),
    }
}

/// The status to write. `propagation` matters only for an accepted route;
/// fields that do not apply are absent, so applying it removes them.
pub fn desired(
    old: Option<&AmqpRouteStatus>,
    generation: Option<i64>,
    verdict: &Verdict,
    propagation: &Propagation,
    configmap: &str,
    now: Time,
) -> AmqpRouteStatus {
    let prev: &[Condition] = old.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let valid = || {
        condition(
            "Accepted",
            true,
            "Valid",
            "the route is valid and serves its queue".into(),
            generation,
            &now,
        )
    };
    let (accepted, ready, relays) = match verdict {
        Verdict::Accepted => {
            let (ok, reason, message, relays) = readiness(propagation, generation, configmap);
            let ready = condition("Ready", ok, reason, message, generation, &now);
            (valid(), ready, relays)
        }
        Verdict::CompileFailed(error) => {
            let message = format!(
                "the policy rendered with this version does not load; relays keep the previous one: {error}"
            );
            let ready = condition("Ready", false, "CompileFailed", message, generation, &now);
            (valid(), ready, None)
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
        relays_ready: relays.map(|r| format!("{}/{}", r.ready, r.total)),
        relays,
        relay: None,
    }
}

/// The part of a route's status this operator writes: its own conditions
/// (Accepted, Ready), not those other controllers keep there.
pub fn ours(s: &AmqpRouteStatus) -> AmqpRouteStatus {
    AmqpRouteStatus {
        conditions: s
            .conditions
            .iter()
            .filter(|c| matches!(c.type_.as_str(), "Accepted" | "Ready"))
            .cloned()
            .collect(),
        ..s.clone()
    }
}

/// The Accepted condition's status, to see transitions worth an Event.
pub fn accepted(s: Option<&AmqpRouteStatus>) -> Option<&str> {
    s?.conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests;
