use super::*;
use crate::operator::render::DIGESTS_PREFIX;

fn t(s: &str) -> Time {
    Time(s.parse().unwrap())
}

/// A policy text holding these route digests, and its content hash.
fn policy(routes: &[(&str, &str)]) -> (String, String) {
    let map: BTreeMap<&str, &str> = routes.iter().copied().collect();
    let text = format!(
        "{DIGESTS_PREFIX}{}\nlocal ROUTES = {{}}\n",
        serde_json::to_string(&map).unwrap()
    );
    let hash = crate::model::digest::plain(text.as_bytes());
    (text, hash)
}

fn relay(pod: &str, running: &[&str], rejected: Option<(&[&str], &str)>) -> RelayView {
    RelayView {
        pod: pod.into(),
        running: running.iter().map(|s| s.to_string()).collect(),
        rejected: rejected.map(|(f, e)| (f.iter().map(|s| s.to_string()).collect(), e.to_string())),
        secrets: None,
    }
}

fn v<'a>(route: &'a str, digest: &'a str) -> Version<'a> {
    Version {
        route,
        digest,
        credentials: &[],
    }
}

#[test]
fn a_relay_runs_a_route_only_with_its_current_credentials() {
    let (p, h) = policy(&[("ns/a", "a1")]);
    let mut history = History::default();
    history.record(&p);
    let creds = [("ns.a.url".to_string(), "new".to_string())];
    let version = Version {
        route: "ns/a",
        digest: "a1",
        credentials: &creds,
    };
    let with = |held: Option<&str>| RelayView {
        pod: "x".into(),
        running: vec![h.clone()],
        rejected: None,
        secrets: Some(
            held.map(|d| [("ns.a.url".to_string(), d.to_string())].into())
                .unwrap_or_default(),
        ),
    };
    let propagating = Propagation::Propagating { done: 0, total: 1 };
    assert_eq!(
        propagation(&version, &[with(Some("old"))], &history),
        propagating
    );
    assert_eq!(propagation(&version, &[with(None)], &history), propagating);
    assert_eq!(
        propagation(&version, &[with(Some("new"))], &history),
        Propagation::Done { total: 1 }
    );
    // A relay that cannot report credentials (a mounted Secret) is judged by its policy alone.
    let unreported = RelayView {
        secrets: None,
        ..with(None)
    };
    assert_eq!(
        propagation(&version, &[unreported], &history),
        Propagation::Done { total: 1 }
    );
}

#[test]
fn each_route_is_judged_by_its_own_version() {
    let (p1, h1) = policy(&[("ns/a", "a1"), ("ns/b", "b1")]);
    let (p2, h2) = policy(&[("ns/a", "a2"), ("ns/b", "b1")]);
    let mut history = History::default();
    history.record(&p1);
    history.record(&p2);
    // One relay still runs the old policy: the edited route is propagating,
    // the untouched one is on every relay all along.
    let relays = [
        relay("x", &["base", &h1], None),
        relay("y", &["base", &h2], None),
    ];
    assert_eq!(
        propagation(&v("ns/a", "a2"), &relays, &history),
        Propagation::Propagating { done: 1, total: 2 }
    );
    assert_eq!(
        propagation(&v("ns/b", "b1"), &relays, &history),
        Propagation::Done { total: 2 }
    );
    // A relay refusing the new policy is named on the edited route only.
    let refused = [
        relay(
            "x",
            &["base", &h1],
            Some((&["base", &h2], "routes.lua:3: boom")),
        ),
        relay("y", &["base", &h2], None),
    ];
    assert!(matches!(
        propagation(&v("ns/a", "a2"), &refused, &history),
        Propagation::Rejected { ref pod, done: 1, total: 2, .. } if pod == "x"
    ));
    assert_eq!(
        propagation(&v("ns/b", "b1"), &refused, &history),
        Propagation::Done { total: 2 }
    );
    // A policy this operator never saw runs no route it knows of.
    let unknown = [relay("x", &["base", "elsewhere"], None)];
    assert_eq!(
        propagation(&v("ns/b", "b1"), &unknown, &history),
        Propagation::Propagating { done: 0, total: 1 }
    );
    assert_eq!(
        propagation(&v("ns/b", "b1"), &[], &history),
        Propagation::NoRelays
    );
}

#[test]
fn history_is_bounded() {
    let mut history = History::default();
    let (first, h_first) = policy(&[("ns/a", "v0")]);
    history.record(&first);
    for i in 1..=HISTORY {
        history.record(&policy(&[("ns/a", &format!("v{i}"))]).0);
    }
    let relays = [relay("x", &[&h_first], None)];
    assert_eq!(
        propagation(&v("ns/a", "v0"), &relays, &history),
        Propagation::Propagating { done: 0, total: 1 },
        "the oldest version was forgotten"
    );
}

#[test]
fn reasons_and_relay_counts() {
    let now = t("2026-01-01T00:00:00Z");
    for (p, reason, ready, total) in [
        (
            Propagation::Propagating { done: 1, total: 3 },
            "Propagating",
            1,
            3,
        ),
        (
            Propagation::Rejected {
                pod: "b".into(),
                error: "boom".into(),
                done: 0,
                total: 1,
            },
            "RelayRejected",
            0,
            1,
        ),
        (Propagation::Done { total: 3 }, "Published", 3, 3),
        (Propagation::NoRelays, "NoRelays", 0, 0),
    ] {
        let s = desired(None, Some(4), &Verdict::Accepted, &p, "ns/cm", now.clone());
        assert_eq!(s.conditions[1].reason, reason);
        let ok = if reason == "Published" {
            "True"
        } else {
            "False"
        };
        assert_eq!(s.conditions[1].status, ok);
        assert!(
            s.conditions[1].message.contains("generation 4"),
            "{}",
            s.conditions[1].message
        );
        assert_eq!(s.relays, Some(RelayCount { ready, total }));
    }
    let failed = desired(
        None,
        Some(2),
        &Verdict::CompileFailed("routes.lua:9: boom".into()),
        &Propagation::NoRelays,
        "ns/cm",
        now,
    );
    assert_eq!(failed.conditions[0].status, "True");
    assert_eq!(failed.conditions[1].reason, "CompileFailed");
    assert!(failed.conditions[1].message.contains("routes.lua:9: boom"));
    assert_eq!(failed.relays, None);
}

#[test]
fn transition_time_moves_only_when_status_changes_and_stale_fields_go() {
    let done = Propagation::Done { total: 2 };
    let first = desired(
        None,
        Some(1),
        &Verdict::Accepted,
        &done,
        "cm",
        t("2026-01-01T00:00:00Z"),
    );
    assert_eq!(accepted(Some(&first)), Some("True"));
    assert!(first.relays.is_some());
    let again = desired(
        Some(&first),
        Some(2),
        &Verdict::Accepted,
        &done,
        "cm",
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
        &done,
        "cm",
        t("2026-01-03T00:00:00Z"),
    );
    assert_eq!(bad.conditions[0].status, "False");
    assert_eq!(bad.conditions[0].reason, "Conflict");
    assert_eq!(
        bad.conditions[0].last_transition_time,
        t("2026-01-03T00:00:00Z")
    );
    assert_eq!(bad.conditions[1].reason, "NotAccepted");
    assert_eq!(bad.relays, None, "a rejected route has no relay count");
}

#[test]
fn same_inputs_same_status() {
    let done = Propagation::Done { total: 1 };
    let a = desired(
        None,
        Some(1),
        &Verdict::Accepted,
        &done,
        "cm",
        t("2026-01-01T00:00:00Z"),
    );
    let b = desired(
        Some(&a),
        Some(1),
        &Verdict::Accepted,
        &done,
        "cm",
        t("2026-05-01T00:00:00Z"),
    );
    assert_eq!(a, b, "nothing changed, so nothing to write");
}

/// Counts are in status.relays only: the Ready message does not change with
/// the number of relay pods, so a pod count moving does not rewrite the
/// message of every route (the count field still says it).
#[test]
fn ready_messages_carry_no_counts() {
    let now = t("2026-01-01T00:00:00Z");
    let msg = |p: Propagation| {
        let s = desired(None, Some(4), &Verdict::Accepted, &p, "ns/cm", now.clone());
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        (ready.message, s.relays)
    };
    let (a, ra) = msg(Propagation::Done { total: 2 });
    let (b, rb) = msg(Propagation::Done { total: 3 });
    assert_eq!(a, b);
    assert_ne!(ra, rb, "the counts still tell");
    let (c, _) = msg(Propagation::Propagating { done: 1, total: 3 });
    let (d, _) = msg(Propagation::Propagating { done: 2, total: 4 });
    assert_eq!(c, d);
    assert!(!c.contains("1/3") && !a.contains(" 2 "), "{a} / {c}");
}

/// `kubectl get amqpr` shows ready/total in the Relays column.
#[test]
fn the_relays_column_reads_ready_over_total() {
    let now = t("2026-01-01T00:00:00Z");
    let p = Propagation::Propagating { done: 2, total: 3 };
    let s = desired(None, Some(1), &Verdict::Accepted, &p, "ns/cm", now);
    assert_eq!(s.relays_ready.as_deref(), Some("2/3"));
    let crd = crate::operator::crd::crd_yaml();
    assert!(crd.contains("jsonPath: .status.relaysReady"), "{crd}");
}
