//! The operator at scale: 1,000 AmqpRoutes in 100 namespaces (each naming a
//! credentials Secret) and three relay pods answering `/api/policy`, synced
//! through kube's client against the tests' fake API server (held to the
//! API's semantics: server-side apply, status subresource) over HTTP.
//! Prints the first full sync, the sync that sees every relay run the
//! policy, the writes of idle syncs (target 0), of a relay pod going
//! unready and ready again (target 0), of one route edit (target 1 status),
//! and the process's RSS, against a baseline measured in the same run:
//! rendering alone (the pure part), so the rest is what the API round trips
//! and status cost.
//!
//! Run: `cargo bench --bench operator`

use amqp_relay::operator::crd::{AmqpRoute, AmqpRouteSpec};
use amqp_relay::operator::render::{DEFAULT_SECRETS_DIR, render};
use amqp_relay::operator::sync::{Ctx, MANAGER, sync};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Recorder, Reporter};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUTES: usize = 1000;
const NAMESPACES: usize = 100;

#[allow(dead_code)]
#[path = "../src/operator/fake_api/mod.rs"]
mod fake_api;

use fake_api::{FakeApi, relay_pod};

const PODS: &str = "/api/v1/namespaces/mail/pods";

fn pod(name: &str, ip: &str, ready: bool) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "mail", "labels": {"app.kubernetes.io/component": "relay"}},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn route(i: usize) -> AmqpRoute {
    let spec: AmqpRouteSpec = serde_json::from_value(serde_json::json!({
        "match": {"domain": format!("d{i}.example")},
        "broker": {"urls": ["amqp://rabbit-0.mq:5672/%2f", "amqp://rabbit-1.mq:5672/%2f"],
                   "credentialsSecretRef": {"name": "rabbit-user"}},
        "publish": {"exchange": "events", "routingKey": format!("rk.{i}")},
        "delivery": {"retryInterval": "30s", "maxAge": "1d"}
    }))
    .unwrap();
    let mut r = AmqpRoute::new(&format!("route-{i}"), spec);
    r.metadata.namespace = Some(format!("ns{}", i % NAMESPACES));
    r.metadata.generation = Some(1);
    r.metadata.uid = Some(format!("uid-{i}"));
    r.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
    ));
    r
}

fn secret(ns: usize) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some("rabbit-user".into());
    s.metadata.namespace = Some(format!("ns{ns}"));
    s.metadata.uid = Some(format!("secret-{ns}"));
    s.metadata.resource_version = Some("1".into());
    s.data = Some(
        [
            ("username", format!("team{ns}")),
            ("password", format!("pw-{ns}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.into_bytes())))
        .collect(),
    );
    s
}

/// The routes as the informer cache shows them: with the status last written.
fn cached(api: &FakeApi, routes: &[AmqpRoute]) -> Vec<Arc<AmqpRoute>> {
    routes
        .iter()
        .map(|r| {
            let path = format!(
                "/apis/amqprelay.io/v1alpha1/namespaces/{}/amqproutes/{}",
                r.metadata.namespace.as_deref().unwrap(),
                r.metadata.name.as_deref().unwrap()
            );
            let mut fresh = serde_json::to_value(r).unwrap();
            if let Some(s) = api.at(&path).and_then(|o| o.get("status").cloned()) {
                fresh["status"] = s;
            }
            api.put_at(&path, fresh);
            Arc::new(serde_json::from_value(api.at(&path).unwrap()).unwrap())
        })
        .collect()
}

/// Writes since the last call, forgetting them.
fn take_writes(api: &FakeApi) -> Vec<String> {
    let w = api.writes();
    api.calls.lock().unwrap().clear();
    w
}

fn statuses(writes: &[String]) -> usize {
    writes.iter().filter(|w| w.ends_with("/status")).count()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rss_start = rss_kib();
    let api = Arc::new(FakeApi::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    api.serve(listener);
    let reports: Vec<_> = (0..3)
        .map(|_| Arc::new(Mutex::new(serde_json::json!({"files": {}}))))
        .collect();
    let mut port = 0;
    for (i, r) in reports.iter().enumerate() {
        port = relay_pod(&format!("127.0.0.{}", i + 2), port, r.clone()).await;
        api.put(
            PODS,
            pod(&format!("edge-{i}"), &format!("127.0.0.{}", i + 2), true),
        );
    }
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let ctx = Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ),
        client,
        relay_selector: "app.kubernetes.io/component=relay".into(),
        relay_port: port,
        http: reqwest::Client::new(),
        relay: "edge".into(),
        namespace: "mail".into(),
        secrets_dir: DEFAULT_SECRETS_DIR.into(),
        ownership: Default::default(),
        serve_unreferenced: true,
        shared_cluster_namespaces: vec![],
        history: Default::default(),
        conflicts: Default::default(),
        relay_views: Default::default(),
    };
    let mut routes: Vec<AmqpRoute> = (0..ROUTES).map(route).collect();
    let secrets: Vec<Arc<Secret>> = (0..NAMESPACES).map(|n| Arc::new(secret(n))).collect();
    let plain: Vec<Secret> = secrets.iter().map(|s| (**s).clone()).collect();

    let started = Instant::now();
    let out = render(&routes, &plain, DEFAULT_SECRETS_DIR);
    let render_only = started.elapsed();
    assert_eq!(out.accepted.len(), ROUTES, "{:?}", out.rejected.first());
    let rss_before_sync = rss_kib();

    let started = Instant::now();
    let first = sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    let full = started.elapsed();
    assert_eq!(first.statuses_written, ROUTES);
    take_writes(&api);

    // Every relay pod now runs the published policy.
    let policy = api
        .get("/api/v1/namespaces/mail/configmaps", "edge-policy")
        .unwrap();
    let hash =
        amqp_relay::model::digest::plain(policy["data"]["routes.lua"].as_str().unwrap().as_bytes());
    for r in &reports {
        *r.lock().unwrap() = serde_json::json!({"files": {"/routes/routes.lua": hash}});
    }
    let started = Instant::now();
    let published = sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    let to_published = started.elapsed();
    assert!(!published.propagating);
    take_writes(&api);

    let started = Instant::now();
    for _ in 0..3 {
        sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    }
    let nothing_new = started.elapsed() / 3;
    let idle_writes = take_writes(&api);

    // A relay pod goes unready and stops answering, then comes back.
    let ready = |ok: bool| {
        api.edit(PODS, "edge-1", |p| {
            p["status"]["conditions"][0]["status"] = if ok { "True" } else { "False" }.into();
            p["status"]["podIP"] = if ok { "127.0.0.3" } else { "127.0.0.250" }.into();
        })
    };
    ready(false);
    sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    ready(true);
    sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    let flap_writes = take_writes(&api);

    routes[417].spec.publish.routing_key = "rk.edited".into();
    routes[417].metadata.generation = Some(2);
    let started = Instant::now();
    let edit = sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    let one_edit = started.elapsed();
    let edit_writes = take_writes(&api);
    let rss_end = rss_kib();

    let cm = api
        .get("/api/v1/namespaces/mail/configmaps", "edge-policy")
        .unwrap();
    let secret = api
        .get("/api/v1/namespaces/mail/secrets", "edge-routes")
        .unwrap();
    let cm_bytes = cm["data"]["routes.lua"].as_str().unwrap().len();
    let secret_keys = secret["data"].as_object().map_or(0, |d| d.len());
    println!(
        "operator bench: {ROUTES} routes in {NAMESPACES} namespaces, {NAMESPACES} credential Secrets, 3 relay pods, fake API over HTTP"
    );
    println!(
        "  baseline: render alone                                  {:8.1} ms",
        ms(render_only)
    );
    println!(
        "  first full sync (render, compile, publish, {} statuses)  {:8.1} ms",
        first.statuses_written,
        ms(full)
    );
    println!(
        "  sync seeing every relay run it ({} statuses -> Published) {:8.1} ms",
        published.statuses_written,
        ms(to_published)
    );
    println!(
        "  idle sync (mean of 3)                                   {:8.1} ms, {} writes in 3 syncs (target 0)",
        ms(nothing_new),
        idle_writes.len()
    );
    println!(
        "  a relay pod unready then ready (2 syncs)                {} writes, {} route statuses (target 0)",
        flap_writes.len(),
        statuses(&flap_writes)
    );
    println!(
        "  one route edited                                        {:8.1} ms, {} writes: {} status (target 1), other {:?}",
        ms(one_edit),
        edit_writes.len(),
        statuses(&edit_writes),
        edit_writes
            .iter()
            .filter(|w| !w.ends_with("/status"))
            .collect::<Vec<_>>(),
    );
    println!(
        "  policy ConfigMap {cm_bytes} bytes; routes Secret {secret_keys} keys (one per route and URL, and the digest key)"
    );
    println!(
        "  RSS: {} KiB at start, {} KiB after rendering, {} KiB after the syncs (process includes the fake API and its copy of every object)",
        rss_start, rss_before_sync, rss_end
    );
    assert!(idle_writes.is_empty(), "idle syncs wrote {idle_writes:?}");
    assert!(
        flap_writes.is_empty(),
        "a readiness flap wrote {flap_writes:?}"
    );
    assert_eq!(edit.statuses_written, 1, "one edit, one status write");
}
