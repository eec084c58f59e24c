//! The sync against kube's real client, talking to an in-process fake API
//! server (a tower-test mock service) that stores what is written.

use super::*;
use crate::operator::crd::AmqpRouteSpec;
use crate::operator::fake_api::{FakeApi, relay_pod};
use http::{Method, StatusCode};
use kube::runtime::events::Reporter;
use std::sync::Mutex;

type Fake = FakeApi;

fn ctx() -> (Ctx, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    (ctx_on(&fake, "edge"), fake)
}

/// The context of the operator of relay `relay`, on the API `fake` serves.
fn ctx_on(fake: &Arc<Fake>, relay: &str) -> Ctx {
    let client = fake.client("relay-ns");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
    );
    Ctx {
        client,
        relay_selector: "app.kubernetes.io/component=relay".into(),
        relay_port: 0,
        http: reqwest::Client::new(),
        recorder,
        relay: relay.into(),
        namespace: "relay-ns".into(),
        secrets_dir: "/etc/amqp-relay/routes".into(),
        ownership: Default::default(),
        serve_unreferenced: true,
        shared_cluster_namespaces: vec!["messaging".into()],
        history: Default::default(),
        conflicts: Default::default(),
        relay_views: Default::default(),
        refuse: None,
    }
}

fn route_path(ns: &str, name: &str) -> String {
    format!("/apis/amqprelay.io/v1alpha1/namespaces/{ns}/amqproutes/{name}")
}

const CM: &str = "/api/v1/namespaces/relay-ns/configmaps/edge-policy";
const PODS: &str = "/api/v1/namespaces/relay-ns/pods";
const SECRET: &str = "/api/v1/namespaces/relay-ns/secrets/edge-routes";

fn route(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> AmqpRoute {
    let spec: AmqpRouteSpec = serde_json::from_value(spec).unwrap();
    let mut r = AmqpRoute::new(name, spec);
    r.metadata.namespace = Some(ns.into());
    r.metadata.generation = Some(1);
    r.metadata.uid = Some(format!("uid-{name}"));
    r.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
    r
}

fn seed_route(name: &str, created: &str) -> AmqpRoute {
    route(
        "team",
        name,
        created,
        serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": {"urlSecretRef": {"name": "rabbit", "key": "url"}},
            "publish": {"routingKey": "logging"}
        }),
    )
}

fn rabbit_secret(url: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some("rabbit".into());
    s.metadata.namespace = Some("team".into());
    s.metadata.uid = Some("rabbit-uid".into());
    // As the API server would: a new version for new content.
    s.metadata.resource_version = Some(crate::model::digest::plain(url.as_bytes())[..8].into());
    s.data = Some(
        [(
            "url".to_string(),
            k8s_openapi::ByteString(url.as_bytes().to_vec()),
        )]
        .into(),
    );
    s
}

/// Stores the routes in the fake, then reads them back with the status the
/// operator wrote, as the informer cache would show them next time.
fn cache(fake: &Fake, routes: &[AmqpRoute]) -> Vec<Arc<AmqpRoute>> {
    routes
        .iter()
        .map(|r| {
            let path = route_path(&r.namespace().unwrap(), &r.name_any());
            let mut fresh = serde_json::to_value(r).unwrap();
            if let Some(s) = fake.at(&path).and_then(|o| o.get("status").cloned()) {
                fresh["status"] = s;
            }
            fake.put_at(&path, fresh);
            Arc::new(serde_json::from_value(fake.at(&path).unwrap()).unwrap())
        })
        .collect()
}

fn condition(fake: &Fake, ns: &str, name: &str, type_: &str) -> (String, String) {
    let r = fake.at(&route_path(ns, name)).unwrap();
    let c = r["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
        .clone();
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

#[tokio::test]
async fn create_then_idempotent() {
    let (ctx, fake) = ctx();
    let routes = [seed_route("seed", "2026-01-01T00:00:00Z")];
    let secrets = [Arc::new(rabbit_secret("amqp://u:p@rabbit:5672/%2f"))];
    let report = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(report.policy_written);
    assert_eq!(report.statuses_written, 1);
    let cm = fake.at(CM).unwrap();
    assert!(
        cm["data"]["routes.lua"]
            .as_str()
            .unwrap()
            .contains("\"logging\"")
    );
    assert!(
        !cm.to_string().contains("u:p@"),
        "no credentials in the ConfigMap"
    );
    assert_eq!(
        cm["metadata"]["annotations"][HASH_ANNOTATION],
        report.hash.as_str()
    );
    assert!(fake.at(SECRET).unwrap()["data"]["team.seed.url"].is_string());
    assert_eq!(
        condition(&fake, "team", "seed", "Accepted"),
        ("True".into(), "Valid".into())
    );
    // No relay pod runs it yet.
    assert_eq!(
        condition(&fake, "team", "seed", "Ready"),
        ("False".into(), "NoRelays".into())
    );
    assert!(report.propagating);
    let writes = fake.writes();
    assert!(
        writes
            .iter()
            .any(|w| w.starts_with("POST") && w.contains("events")),
        "{writes:?}"
    );
    // Secret before ConfigMap.
    let si = writes
        .iter()
        .position(|w| w.ends_with("/secrets/edge-routes"))
        .unwrap();
    let ci = writes
        .iter()
        .position(|w| w.ends_with("/configmaps/edge-policy"))
        .unwrap();
    assert!(si < ci, "{writes:?}");

    fake.calls.lock().unwrap().clear();
    let again = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(!again.policy_written);
    assert_eq!(again.statuses_written, 0);
    assert_eq!(
        fake.writes(),
        Vec::<String>::new(),
        "a second sync writes nothing"
    );
}

#[tokio::test]
async fn update_conflict_invalid_rotation_and_deletion() {
    let (ctx, fake) = ctx();
    let secrets = vec![Arc::new(rabbit_secret("amqp://u:p@rabbit:5672/%2f"))];
    let old = seed_route("old", "2026-01-01T00:00:00Z");
    let young = seed_route("young", "2026-02-01T00:00:00Z");
    let invalid = route(
        "team",
        "broken",
        "2026-01-01T00:00:00Z",
        serde_json::json!({"match": {"domain": "b"}, "broker": {"url": "amqp://u:p@h/"}, "publish": {"routingKey": "k"}}),
    );
    let first = sync(
        &ctx,
        &cache(&fake, &[old.clone(), young.clone(), invalid.clone()]),
        &secrets,
    )
    .await
    .unwrap();
    assert_eq!((first.accepted, first.rejected), (1, 2));
    assert_eq!(condition(&fake, "team", "old", "Accepted").0, "True");
    assert_eq!(
        condition(&fake, "team", "young", "Accepted"),
        ("False".into(), "Conflict".into())
    );
    assert_eq!(
        condition(&fake, "team", "broken", "Accepted"),
        ("False".into(), "Invalid".into())
    );
    assert_eq!(
        condition(&fake, "team", "broken", "Ready"),
        ("False".into(), "NotAccepted".into())
    );

    // Update: the route changes its routing key; the policy follows.
    let mut updated = old.clone();
    updated.spec.publish.routing_key = "events".into();
    updated.metadata.generation = Some(2);
    let second = sync(
        &ctx,
        &cache(&fake, &[updated.clone(), young.clone(), invalid.clone()]),
        &secrets,
    )
    .await
    .unwrap();
    assert!(second.policy_written);
    assert!(
        fake.at(CM).unwrap()["data"]["routes.lua"]
            .as_str()
            .unwrap()
            .contains("\"events\"")
    );
    let r = fake.at(&route_path("team", "old")).unwrap();
    assert_eq!(r["status"]["observedGeneration"], 2);

    // Secret rotation: same routes, new credentials → new Secret and hash.
    let rotated = vec![Arc::new(rabbit_secret("amqp://u:new@rabbit:5672/%2f"))];
    let third = sync(
        &ctx,
        &cache(&fake, &[updated.clone(), young.clone(), invalid.clone()]),
        &rotated,
    )
    .await
    .unwrap();
    assert!(third.policy_written);
    assert_ne!(third.hash, second.hash);
    let stored = fake.at(SECRET).unwrap();
    let b64 = stored["data"]["team.old.url"].as_str().unwrap();
    assert_eq!(b64, "YW1xcDovL3U6bmV3QHJhYmJpdDo1NjcyLyUyZg==");

    // Deletion: the winner goes; the younger route takes the queue.
    let fourth = sync(
        &ctx,
        &cache(&fake, &[young.clone(), invalid.clone()]),
        &rotated,
    )
    .await
    .unwrap();
    assert!(fourth.policy_written);
    assert_eq!(
        condition(&fake, "team", "young", "Accepted"),
        ("True".into(), "Valid".into())
    );

    // All routes gone: the policy is emptied, not left serving stale routes.
    let last = sync(&ctx, &[], &rotated).await.unwrap();
    assert!(last.policy_written);
    assert_eq!(last.accepted, 0);
    assert!(
        !fake.at(CM).unwrap()["data"]["routes.lua"]
            .as_str()
            .unwrap()
            .contains("logging")
    );
}

fn pod(name: &str, ip: &str, ready: bool) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "relay-ns", "labels": {"app.kubernetes.io/component": "relay"}},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

#[tokio::test]
async fn ready_only_when_every_ready_relay_runs_the_route() {
    let (mut ctx, fake) = ctx();
    let a = Arc::new(Mutex::new(serde_json::json!({"files": {"/base.lua": "b"}})));
    let b = Arc::new(Mutex::new(serde_json::json!({"files": {"/base.lua": "b"}})));
    let port = relay_pod("127.0.0.2", 0, a.clone()).await;
    relay_pod("127.0.0.3", port, b.clone()).await;
    ctx.relay_port = port;
    for p in [
        pod("relay-0", "127.0.0.2", true),
        pod("relay-1", "127.0.0.3", true),
        pod("relay-2", "127.0.0.4", false),
    ] {
        fake.put(PODS, p);
    }
    let routes = [seed_route("seed", "2026-01-01T00:00:00Z")];
    let secrets = [Arc::new(rabbit_secret("amqp://u:p@rabbit:5672/%2f"))];
    let first = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(first.propagating);
    assert_eq!(
        condition(&fake, "team", "seed", "Ready"),
        ("False".into(), "Propagating".into())
    );
    let relays =
        |fake: &Fake| fake.at(&route_path("team", "seed")).unwrap()["status"]["relays"].clone();
    assert_eq!(
        relays(&fake),
        serde_json::json!({"ready": 0, "total": 2}),
        "the pod that is not ready does not count"
    );

    let routes_hash = crate::model::digest::plain(
        fake.at(CM).unwrap()["data"]["routes.lua"]
            .as_str()
            .unwrap()
            .as_bytes(),
    );
    *a.lock().unwrap() =
        serde_json::json!({"files": {"/base.lua": "b", "/routes/routes.lua": routes_hash}});
    sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert_eq!(relays(&fake), serde_json::json!({"ready": 1, "total": 2}));
    assert_eq!(condition(&fake, "team", "seed", "Ready").1, "Propagating");

    *b.lock().unwrap() = serde_json::json!({"files": {"/base.lua": "b"}, "last_error": {"error": "routes.lua:9: boom", "files": {"/routes/routes.lua": routes_hash}}});
    sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert_eq!(
        condition(&fake, "team", "seed", "Ready"),
        ("False".into(), "RelayRejected".into())
    );

    *b.lock().unwrap() =
        serde_json::json!({"files": {"/base.lua": "b", "/routes/routes.lua": routes_hash}});
    let done = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(!done.propagating);
    assert_eq!(
        condition(&fake, "team", "seed", "Ready"),
        ("True".into(), "Published".into())
    );
    assert_eq!(relays(&fake), serde_json::json!({"ready": 2, "total": 2}));
}

fn domain_route(name: &str, domain: &str) -> AmqpRoute {
    route(
        "team",
        name,
        "2026-01-01T00:00:00Z",
        serde_json::json!({
            "match": {"domain": domain},
            "broker": {"url": "amqp://rabbit:5672/%2f"},
            "publish": {"routingKey": "logging"}
        }),
    )
}

/// Two ready relay pods whose reports the test sets.
async fn two_relays(ctx: &mut Ctx, fake: &Fake) -> [Arc<Mutex<serde_json::Value>>; 2] {
    let a = Arc::new(Mutex::new(serde_json::json!({"files": {}})));
    let b = Arc::new(Mutex::new(serde_json::json!({"files": {}})));
    let port = relay_pod("127.0.0.5", 0, a.clone()).await;
    relay_pod("127.0.0.6", port, b.clone()).await;
    ctx.relay_port = port;
    for p in [
        pod("relay-0", "127.0.0.5", true),
        pod("relay-1", "127.0.0.6", true),
    ] {
        fake.put(PODS, p);
    }
    [a, b]
}

fn run_published(fake: &Fake, relays: &[Arc<Mutex<serde_json::Value>>]) {
    let policy = fake.at(CM).unwrap()["data"]["routes.lua"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = crate::model::digest::plain(policy.as_bytes());
    for r in relays {
        *r.lock().unwrap() = serde_json::json!({"files": {"/routes/routes.lua": hash}});
    }
}

fn assert_no_status_writes(fake: &Fake, why: &str) {
    let writes = status_writes(fake);
    assert!(writes.is_empty(), "{why}: {writes:?}");
}

fn status_writes(fake: &Fake) -> Vec<String> {
    fake.writes()
        .into_iter()
        .filter(|w| w.ends_with("/status"))
        .collect()
}

#[tokio::test]
async fn one_route_edit_writes_only_that_routes_status() {
    let (mut ctx, fake) = ctx();
    let relays = two_relays(&mut ctx, &fake).await;
    let mut routes: Vec<AmqpRoute> = (0..10)
        .map(|i| domain_route(&format!("r{i}"), &format!("d{i}.example")))
        .collect();
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    run_published(&fake, &relays);
    let settled = sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert_eq!(settled.statuses_written, 10);
    assert!(!settled.propagating);
    for i in 0..10 {
        assert_eq!(
            condition(&fake, "team", &format!("r{i}"), "Ready").1,
            "Published"
        );
    }

    // Edit one route: the policy changes, but only its status is written
    // while the relays still run the previous policy.
    routes[3].spec.publish.routing_key = "events".into();
    routes[3].metadata.generation = Some(2);
    fake.calls.lock().unwrap().clear();
    let edited = sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert!(edited.policy_written);
    assert_eq!(
        status_writes(&fake),
        vec![format!("PATCH {}/status", route_path("team", "r3"))]
    );
    assert_eq!(condition(&fake, "team", "r3", "Ready").1, "Propagating");
    assert_eq!(condition(&fake, "team", "r4", "Ready").1, "Published");

    // The relays take the new policy: again one write, for that route.
    run_published(&fake, &relays);
    fake.calls.lock().unwrap().clear();
    let done = sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert_eq!(done.statuses_written, 1);
    assert_eq!(status_writes(&fake).len(), 1);
    assert_eq!(
        condition(&fake, "team", "r3", "Ready"),
        ("True".into(), "Published".into())
    );
}

#[tokio::test]
async fn a_route_turning_invalid_loses_its_relay_count() {
    let (mut ctx, fake) = ctx();
    let relays = two_relays(&mut ctx, &fake).await;
    let mut routes = vec![domain_route("r", "d.example")];
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    run_published(&fake, &relays);
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    let stored = fake.at(&route_path("team", "r")).unwrap();
    assert_eq!(
        stored["status"]["relays"],
        serde_json::json!({"ready": 2, "total": 2})
    );

    routes[0].spec.broker.url = Some("amqp://user:pw@rabbit/".into());
    routes[0].metadata.generation = Some(2);
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    let stored = fake.at(&route_path("team", "r")).unwrap();
    assert_eq!(
        condition(&fake, "team", "r", "Accepted"),
        ("False".into(), "Invalid".into())
    );
    assert!(
        stored["status"].get("relays").is_none(),
        "a stale relay count stayed: {}",
        stored["status"]
    );
    // And the next sync finds nothing to write.
    fake.calls.lock().unwrap().clear();
    let again = sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert_eq!(again.statuses_written, 0);
}

#[tokio::test]
async fn a_failed_status_write_does_not_stop_the_others() {
    let (ctx, fake) = ctx();
    let routes: Vec<AmqpRoute> = ["a", "b", "c"]
        .iter()
        .map(|n| domain_route(n, &format!("{n}.example")))
        .collect();
    fake.fail_writes_to("/a/status", StatusCode::INTERNAL_SERVER_ERROR);
    let err = sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap_err();
    assert!(matches!(err, Error::Status { failed: 1, .. }), "{err}");
    assert!(
        fake.at(&route_path("team", "a"))
            .unwrap()
            .get("status")
            .is_none()
    );
    for n in ["b", "c"] {
        assert_eq!(condition(&fake, "team", n, "Accepted").0, "True");
    }
}

#[tokio::test]
async fn a_policy_that_does_not_load_is_reported_on_the_routes_it_concerns() {
    let (mut ctx, fake) = ctx();
    let relays = two_relays(&mut ctx, &fake).await;
    ctx.refuse = Some("POISON");
    let mut routes = vec![domain_route("good", "good.example")];
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    run_published(&fake, &relays);
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    let published = fake.at(CM).unwrap();

    let mut bad = domain_route("bad", "bad.example");
    bad.spec.publish.routing_key = "POISON".into();
    routes.push(bad);
    let report = sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert!(report.compile_error.is_some());
    assert!(!report.policy_written);
    assert_eq!(fake.at(CM).unwrap(), published, "the previous policy stays");
    let (status, reason) = condition(&fake, "team", "bad", "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CompileFailed")
    );
    assert_eq!(
        condition(&fake, "team", "good", "Ready"),
        ("True".into(), "Published".into()),
        "the routes the relays still run keep their status"
    );
}

/// What a relay holding the published policy and the Secret as stored in
/// the fake reports on `/api/policy` (its credential digests computed by the
/// relay's own code). `with_secret: false` keeps its credentials from `before`.
fn relay_holding(fake: &Fake, secret: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let policy = fake.at(CM).unwrap()["data"]["routes.lua"]
        .as_str()
        .unwrap()
        .to_owned();
    let overlay = crate::policy::Overlay::default();
    let dir = std::path::Path::new("/etc/amqp-relay/routes");
    let data = secret["data"].as_object().unwrap();
    let files = data
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (dir.join(k), bytes)
        })
        .collect();
    overlay.set_secrets(dir, files);
    serde_json::json!({
        "files": {"/routes/routes.lua": crate::model::digest::plain(policy.as_bytes())},
        "secrets": overlay.secret_digests().unwrap(),
    })
}

#[tokio::test]
async fn a_rotated_secret_reaches_the_relay_and_ready_follows_it() {
    let (mut ctx, fake) = ctx();
    let relays = two_relays(&mut ctx, &fake).await;
    let routes = [seed_route("seed", "2026-01-01T00:00:00Z")];
    let old = [Arc::new(rabbit_secret("amqp://u:old@rabbit:5672/%2f"))];
    sync(&ctx, &cache(&fake, &routes), &old).await.unwrap();
    let old_secret = fake.at(SECRET).unwrap();
    assert!(
        old_secret["data"]["digest-key"].is_string(),
        "the operator keeps a digest key in the routes Secret"
    );
    for r in &relays {
        *r.lock().unwrap() = relay_holding(&fake, &old_secret);
    }
    sync(&ctx, &cache(&fake, &routes), &old).await.unwrap();
    assert_eq!(condition(&fake, "team", "seed", "Ready").1, "Published");

    // Rotation: the Secret the route names changes.
    let new = [Arc::new(rabbit_secret("amqp://u:new@rabbit:5672/%2f"))];
    let rotated = sync(&ctx, &cache(&fake, &routes), &new).await.unwrap();
    assert!(rotated.policy_written);
    let new_secret = fake.at(SECRET).unwrap();
    assert_eq!(
        new_secret["data"]["digest-key"], old_secret["data"]["digest-key"],
        "the digest key is kept"
    );
    assert_eq!(condition(&fake, "team", "seed", "Ready").1, "Propagating");

    // A relay with the new policy but the old credentials does not count.
    let mut stale = relay_holding(&fake, &new_secret);
    stale["secrets"] = relay_holding(&fake, &old_secret)["secrets"].clone();
    for r in &relays {
        *r.lock().unwrap() = stale.clone();
    }
    sync(&ctx, &cache(&fake, &routes), &new).await.unwrap();
    assert_eq!(condition(&fake, "team", "seed", "Ready").1, "Propagating");

    for r in &relays {
        *r.lock().unwrap() = relay_holding(&fake, &new_secret);
    }
    sync(&ctx, &cache(&fake, &routes), &new).await.unwrap();
    assert_eq!(
        condition(&fake, "team", "seed", "Ready"),
        ("True".into(), "Published".into())
    );
}

#[tokio::test]
async fn a_changed_or_deleted_routes_secret_is_repaired() {
    let (ctx, fake) = ctx();
    let routes = [seed_route("seed", "2026-01-01T00:00:00Z")];
    let secrets = [Arc::new(rabbit_secret("amqp://u:p@rabbit:5672/%2f"))];
    sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    let good = fake.at(SECRET).unwrap();

    // Someone edits a key by hand: the ConfigMap's hash still matches.
    let mut edited = good.clone();
    edited["data"]["team.seed.url"] = "ZXZpbA==".into();
    fake.put_at(SECRET, edited);
    let repaired = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(repaired.policy_written);
    assert_eq!(fake.at(SECRET).unwrap()["data"], good["data"]);

    fake.remove_at(SECRET);
    let recreated = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(recreated.policy_written);
    let back = fake.at(SECRET).unwrap();
    assert_eq!(back["data"]["team.seed.url"], good["data"]["team.seed.url"]);

    fake.calls.lock().unwrap().clear();
    let settled = sync(&ctx, &cache(&fake, &routes), &secrets).await.unwrap();
    assert!(!settled.policy_written);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

#[tokio::test]
async fn an_over_budget_route_is_too_large_while_the_rest_ship() {
    let (ctx, fake) = ctx();
    let small = domain_route("small", "small.example");
    // 64 headers of 17 KB: over 1 MiB on its own, and younger than `small`.
    let headers: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|i| (format!("h{i}"), "x".repeat(17_000).into()))
        .collect();
    let huge = route(
        "team",
        "huge",
        "2026-02-01T00:00:00Z",
        serde_json::json!({
            "match": {"domain": "huge.example"},
            "broker": {"url": "amqp://rabbit:5672/%2f"},
            "publish": {"routingKey": "k", "headers": headers}
        }),
    );
    sync(&ctx, &cache(&fake, &[small, huge]), &[])
        .await
        .unwrap();
    assert_eq!(
        condition(&fake, "team", "huge", "Accepted"),
        ("False".into(), "TooLarge".into())
    );
    assert_eq!(condition(&fake, "team", "small", "Accepted").0, "True");
    let cm = fake.at(CM).expect("the policy was written");
    let policy = cm["data"]["routes.lua"].as_str().unwrap();
    assert!(policy.contains("small.example") && !policy.contains("huge.example"));
    assert!(policy.len() < render::OBJECT_LIMIT);
}

#[tokio::test]
async fn two_relays_with_their_own_relay_refs_each_serve_their_own() {
    let fake = Arc::new(Fake::default());
    let edge = ctx_on(&fake, "edge");
    let mut other = ctx_on(&fake, "other");
    other.serve_unreferenced = false;
    let with_ref = |name: &str, relay: serde_json::Value| {
        let mut r = domain_route(name, &format!("{name}.example"));
        r.spec.relay_ref = serde_json::from_value(relay).unwrap();
        r
    };
    let routes = [
        with_ref(
            "for-edge",
            serde_json::json!({"name": "edge", "namespace": "relay-ns"}),
        ),
        // No namespace: a relay named edge in the route's own namespace
        // (team), which is not relay-ns/edge.
        with_ref("own-namespace", serde_json::json!({"name": "edge"})),
        with_ref(
            "for-other",
            serde_json::json!({"name": "other", "namespace": "relay-ns"}),
        ),
        with_ref("unreferenced", serde_json::Value::Null),
        with_ref("for-nobody", serde_json::json!({"name": "gone"})),
        with_ref(
            "elsewhere",
            serde_json::json!({"name": "other", "namespace": "mail"}),
        ),
    ];
    // Each sees every route, as both watch the same namespace, and syncs twice.
    for _ in 0..2 {
        sync(&edge, &cache(&fake, &routes), &[]).await.unwrap();
        sync(&other, &cache(&fake, &routes), &[]).await.unwrap();
    }
    let policy = |relay: &str| {
        fake.at(&format!(
            "/api/v1/namespaces/relay-ns/configmaps/{relay}-policy"
        ))
        .unwrap()["data"]["routes.lua"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (edge_policy, other_policy) = (policy("edge"), policy("other"));
    for (name, served_by) in [
        ("for-edge", Some("relay-ns/edge")),
        ("unreferenced", Some("relay-ns/edge")),
        ("for-other", Some("relay-ns/other")),
        ("for-nobody", None),
        ("elsewhere", None),
        ("own-namespace", None),
    ] {
        let stored = fake.at(&route_path("team", name)).unwrap();
        assert_eq!(
            stored["status"]["relay"].as_str(),
            served_by,
            "{name}: {stored}"
        );
        let domain = format!("\"{name}.example\"");
        assert_eq!(
            edge_policy.contains(&domain),
            served_by == Some("relay-ns/edge"),
            "{name}"
        );
        assert_eq!(
            other_policy.contains(&domain),
            served_by == Some("relay-ns/other"),
            "{name}"
        );
    }
    // Nobody writes a route it does not serve: one writer per route, no fight.
    fake.calls.lock().unwrap().clear();
    sync(&edge, &cache(&fake, &routes), &[]).await.unwrap();
    sync(&other, &cache(&fake, &routes), &[]).await.unwrap();
    assert_no_status_writes(&fake, "a route this install does not serve");
}

#[tokio::test]
async fn a_rabbitmq_cluster_ref_is_resolved_through_the_api() {
    let (ctx, fake) = ctx();
    let cluster = "/apis/rabbitmq.com/v1beta1/namespaces/messaging/rabbitmqclusters/rabbit";
    let user = "/api/v1/namespaces/messaging/secrets/rabbit-default-user";
    let route = route(
        "team",
        "via-cluster",
        "2026-01-01T00:00:00Z",
        serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": {"rabbitmqClusterRef": {"name": "rabbit", "namespace": "messaging"}},
            "publish": {"routingKey": "logging"}
        }),
    );
    // Not there yet: the route says so, nothing else is held up.
    sync(&ctx, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    assert_eq!(
        condition(&fake, "team", "via-cluster", "Accepted"),
        ("False".into(), "Invalid".into())
    );
    let set_user = |password: &str, version: &str| {
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        fake.put_at(
            user,
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "rabbit-default-user", "namespace": "messaging", "uid": "u1", "resourceVersion": version},
                "data": {"username": b64("default_user_x"), "password": b64(password),
                         "host": b64("rabbit.messaging.svc"), "port": b64("5672")}}),
        );
    };
    let put_cluster = |annotations: serde_json::Value| {
        fake.put_at(
            cluster,
            serde_json::json!({"apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster",
                "metadata": {"name": "rabbit", "namespace": "messaging", "annotations": annotations},
                "status": {"defaultUser": {
                    "secretReference": {"name": "rabbit-default-user", "namespace": "messaging",
                                        "keys": {"username": "username", "password": "password"}},
                    "serviceReference": {"name": "rabbit", "namespace": "messaging"}}}}),
        )
    };
    set_user("first", "1");
    // The cluster's owner has not admitted team: the default user's Secret
    // is not even read.
    put_cluster(serde_json::json!({}));
    fake.calls.lock().unwrap().clear();
    sync(&ctx, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    assert_eq!(
        condition(&fake, "team", "via-cluster", "Accepted"),
        ("False".into(), "Invalid".into())
    );
    assert!(
        !fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p)| p.starts_with(user)),
        "{:?}",
        fake.calls.lock().unwrap()
    );
    put_cluster(serde_json::json!({"rabbitmq.com/topology-allowed-namespaces": "team"}));
    sync(&ctx, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    assert_eq!(
        condition(&fake, "team", "via-cluster", "Accepted").0,
        "True"
    );
    let url = |fake: &Fake| {
        use base64::Engine;
        let data = &fake.at(SECRET).unwrap()["data"]["team.via-cluster.url"];
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        url(&fake),
        "amqp://default_user_x:first@rabbit.messaging.svc:5672/%2f"
    );
    // The cluster operator rotates the password: the next sync carries it.
    set_user("second", "2");
    sync(&ctx, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    assert_eq!(
        url(&fake),
        "amqp://default_user_x:second@rabbit.messaging.svc:5672/%2f"
    );
}

/// Kubernetes refuses an Event note over 1 KiB of bytes: a message of
/// multi-byte characters is cut within that, never inside a character.
#[test]
fn event_notes_are_cut_within_a_kibibyte_on_a_character_boundary() {
    let ascii = "x".repeat(5000);
    assert_eq!(cut(&ascii, NOTE_LIMIT).len(), 1024);
    // 1,000 characters of 3 bytes each: 3,000 bytes, which "1,000 characters" let through.
    let wide = "€".repeat(1000);
    let c = cut(&wide, NOTE_LIMIT);
    assert!(c.len() <= 1024 && c.len() > 1020, "{}", c.len());
    assert!(c.chars().all(|ch| ch == '€'));
    assert_eq!(cut("short", NOTE_LIMIT), "short");
}

/// A route naming a RabbitmqCluster in a namespace the operator does not
/// share reads nothing there: not the cluster, not a Secret.
#[tokio::test]
async fn nothing_is_read_from_a_namespace_the_operator_does_not_share() {
    let (ctx, fake) = ctx();
    let route = route(
        "team",
        "peek",
        "2026-01-01T00:00:00Z",
        serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": {"rabbitmqClusterRef": {"name": "db", "namespace": "payments"}},
            "publish": {"routingKey": "k"}
        }),
    );
    fake.calls.lock().unwrap().clear();
    sync(&ctx, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|(_, p)| p.contains("/namespaces/payments/")),
        "{calls:?}"
    );
    assert_eq!(
        condition(&fake, "team", "peek", "Accepted"),
        ("False".into(), "Invalid".into())
    );
}

/// A route whose relayRef is edited to name another install leaves this
/// one: this install clears the status it wrote (no stale Ready=True naming
/// a relay that dropped the route), once; a route another install serves is
/// never touched.
#[tokio::test]
async fn a_route_that_leaves_an_install_has_its_status_cleared_by_it() {
    let fake = Arc::new(Fake::default());
    let edge = ctx_on(&fake, "edge");
    let mut route = domain_route("moving", "moving.example");
    sync(&edge, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    let status = |fake: &Fake| fake.at(&route_path("team", "moving")).unwrap()["status"].clone();
    assert_eq!(status(&fake)["relay"], "relay-ns/edge");
    route.spec.relay_ref =
        serde_json::from_value(serde_json::json!({"name": "other", "namespace": "relay-ns"}))
            .unwrap();
    let report = sync(&edge, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    assert_eq!(report.statuses_written, 1);
    assert!(status(&fake).get("relay").is_none(), "{}", status(&fake));
    assert!(
        status(&fake).get("conditions").is_none(),
        "{}",
        status(&fake)
    );
    // Cleared once: the next sync writes nothing for it.
    let report = sync(&edge, &cache(&fake, std::slice::from_ref(&route)), &[])
        .await
        .unwrap();
    assert_eq!(report.statuses_written, 0);
    // Another install's route (its status names that install) is left alone.
    let mut theirs = domain_route("theirs", "theirs.example");
    theirs.spec.relay_ref = route.spec.relay_ref.clone();
    theirs.status = serde_json::from_value(serde_json::json!({"relay": "relay-ns/other"})).unwrap();
    fake.calls.lock().unwrap().clear();
    sync(&edge, &cache(&fake, &[route, theirs]), &[])
        .await
        .unwrap();
    assert_no_status_writes(&fake, "a route this install does not serve");
}

#[tokio::test]
async fn a_status_write_for_a_route_deleted_mid_sync_is_a_404_not_a_failed_sync() {
    let (ctx, fake) = ctx();
    let routes = cache(&fake, &[domain_route("going", "going.example")]);
    // Deleted after the cache saw it, before its status is written.
    fake.remove_at(&route_path("team", "going"));
    let report = sync(&ctx, &routes, &[])
        .await
        .expect("a 404 does not fail the sync");
    assert_eq!(report.statuses_written, 0);
    assert!(
        fake.at(&route_path("team", "going")).is_none(),
        "not re-created by /status"
    );
}

/// Other field managers' fields survive the operator's applies (a key added
/// to the routes Secret with kubectl, a condition another controller keeps
/// on a route), and the operator does not fight them: after one sync, the
/// next syncs write nothing at all.
#[tokio::test]
async fn other_managers_fields_survive_and_cause_no_write_loop() {
    let (ctx, fake) = ctx();
    let routes = [domain_route("r", "r.example")];
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    fake.apply(
        SECRET,
        "kubectl-edit",
        &serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "edge-routes", "namespace": "relay-ns"},
            "data": {"note": "aGFuZHM="}}),
        false,
    );
    fake.apply(
        &route_path("team", "r"),
        "audit-controller",
        &serde_json::json!({"status": {"conditions": [{"type": "Audited", "status": "True",
            "reason": "Ok", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        true,
    );
    fake.calls.lock().unwrap().clear();
    for _ in 0..3 {
        sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    }
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(fake.at(SECRET).unwrap()["data"]["note"], "aGFuZHM=");
    let conditions = fake.at(&route_path("team", "r")).unwrap()["status"]["conditions"].clone();
    assert!(
        conditions
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Audited"),
        "{conditions}"
    );
}

/// Events of `reason` recorded on routes in `ns`.
fn events(fake: &Fake, ns: &str, reason: &str) -> Vec<serde_json::Value> {
    let coll = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
    fake.names(&coll)
        .iter()
        .filter_map(|n| fake.get(&coll, n))
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// Two installs that both claim routes without relayRef (two releases
/// named alike in two namespaces, at their defaults before this release):
/// the first to serve a route keeps it; the other leaves it out of its
/// policy and Secret, writes nothing to it and says so once, instead of
/// both rewriting its status in turn forever.
#[tokio::test]
async fn two_installs_claiming_unreferenced_routes_do_not_fight() {
    let fake = Arc::new(Fake::default());
    let mut a = ctx_on(&fake, "edge");
    let mut b = ctx_on(&fake, "edge");
    b.namespace = "other-ns".into();
    (a.serve_unreferenced, b.serve_unreferenced) = (true, true);
    let routes = [seed_route("seed", "2026-01-01T00:00:00Z")];
    let secrets = [Arc::new(rabbit_secret("amqp://u:p@rabbit:5672/%2f"))];
    sync(&a, &cache(&fake, &routes), &secrets).await.unwrap();
    fake.calls.lock().unwrap().clear();
    for _ in 0..3 {
        sync(&b, &cache(&fake, &routes), &secrets).await.unwrap();
        sync(&a, &cache(&fake, &routes), &secrets).await.unwrap();
    }
    let route = fake.at(&route_path("team", "seed")).unwrap();
    assert_eq!(route["status"]["relay"], "relay-ns/edge");
    assert_no_status_writes(&fake, "nobody rewrote the route's status");
    let b_policy = fake.get("/api/v1/namespaces/other-ns/configmaps", "edge-policy");
    let b_secret = fake.get("/api/v1/namespaces/other-ns/secrets", "edge-routes");
    assert!(
        !b_policy.unwrap()["data"]["routes.lua"]
            .as_str()
            .unwrap()
            .contains("logging"),
        "the second install does not render the route"
    );
    assert!(
        b_secret.unwrap()["data"]
            .as_object()
            .is_none_or(|d| d.keys().all(|k| !k.starts_with("team."))),
        "nor copy its credentials"
    );
    let conflicts = events(&fake, "team", "Conflict");
    assert_eq!(conflicts.len(), 1, "reported once: {conflicts:?}");
    let note = conflicts[0]["note"].as_str().unwrap();
    assert!(
        note.contains("relay-ns/edge")
            && note.contains("other-ns/edge")
            && note.contains("relayRef"),
        "{note}"
    );
}

/// Each install applies as its own field manager, so one install's apply
/// never removes or claims what another wrote as if they were one owner.
#[tokio::test]
async fn each_install_applies_as_its_own_field_manager() {
    let (ctx, fake) = ctx();
    sync(&ctx, &cache(&fake, &[domain_route("r", "r.example")]), &[])
        .await
        .unwrap();
    let managers: std::collections::BTreeSet<String> = fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m == Method::PATCH)
        .filter_map(|(_, p)| {
            url::form_urlencoded::parse(p.split_once('?')?.1.as_bytes())
                .find(|(k, _)| k == "fieldManager")
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    assert_eq!(managers, ["amqp-relay/relay-ns/edge".to_string()].into());
    let long = field_manager(&"n".repeat(63), &"r".repeat(63));
    assert!(
        long.len() <= 128 && long.starts_with("amqp-relay/"),
        "{long}"
    );
    assert_ne!(long, field_manager(&"n".repeat(63), &"s".repeat(63)));
}

/// A relay pod that goes unready and stops answering (a readiness flap, a
/// container restart in place), then comes back: no route's truth changed,
/// so no route status is written either way; a pod that is gone is.
#[tokio::test]
async fn a_relay_pod_flapping_unready_writes_no_route_status() {
    let (mut ctx, fake) = ctx();
    let relays = two_relays(&mut ctx, &fake).await;
    let routes: Vec<AmqpRoute> = (0..5)
        .map(|i| domain_route(&format!("r{i}"), &format!("d{i}.example")))
        .collect();
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    run_published(&fake, &relays);
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert_eq!(condition(&fake, "team", "r0", "Ready").1, "Published");
    fake.calls.lock().unwrap().clear();
    // Unready, and nothing answers at its address.
    fake.edit(PODS, "relay-1", |p| {
        p["status"]["conditions"][0]["status"] = "False".into();
        p["status"]["podIP"] = "127.0.0.9".into();
    });
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    fake.edit(PODS, "relay-1", |p| {
        p["status"]["conditions"][0]["status"] = "True".into();
        p["status"]["podIP"] = "127.0.0.6".into();
    });
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert_no_status_writes(&fake, "a readiness flap");
    assert_eq!(
        fake.at(&route_path("team", "r0")).unwrap()["status"]["relays"],
        serde_json::json!({"ready": 2, "total": 2})
    );
    // Scaled in: the pod is gone, and every route says so.
    fake.remove(PODS, "relay-1");
    sync(&ctx, &cache(&fake, &routes), &[]).await.unwrap();
    assert_eq!(status_writes(&fake).len(), 5);
    assert_eq!(
        fake.at(&route_path("team", "r0")).unwrap()["status"]["relays"],
        serde_json::json!({"ready": 1, "total": 1})
    );
}

/// Relay pods that accept connections and never answer (a wedged process,
/// a pod still starting) are asked at the same time as the others: a sync
/// waits one timeout for all of them, not one each.
#[tokio::test]
async fn relay_pods_that_hang_cost_one_timeout_together() {
    let (mut ctx, fake) = ctx();
    two_relays(&mut ctx, &fake).await;
    let mut hanging = Vec::new();
    for (i, ip) in ["127.0.0.7", "127.0.0.8", "127.0.0.9"]
        .into_iter()
        .enumerate()
    {
        let l = tokio::net::TcpListener::bind((ip, ctx.relay_port))
            .await
            .unwrap();
        hanging.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = l.accept().await {
                held.push(conn);
            }
        }));
        fake.put(PODS, pod(&format!("hung-{i}"), ip, false));
    }
    let started = std::time::Instant::now();
    let views = observe_relays(&ctx).await.unwrap();
    let took = started.elapsed();
    let mut pods: Vec<_> = views.iter().map(|v| v.pod.as_str()).collect();
    pods.sort();
    assert_eq!(
        pods,
        ["relay-0", "relay-1"],
        "unready and silent: not counted"
    );
    // One 2 s timeout; asked one after another, three would take 6 s.
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
    for h in hanging {
        h.abort();
    }
}
