//! The operator at scale: 1,000 AmqpRoutes in 100 namespaces (each naming a
//! credentials Secret), synced through kube's client against an in-process
//! fake API server over HTTP. Prints the first full sync, a sync with
//! nothing new, one route edit (time and writes), and the process's RSS,
//! against a baseline measured in the same run: rendering alone (the pure
//! part), so the rest is what the API round trips and status cost.
//!
//! Run: `cargo bench --bench operator`

use amqp_relay::operator::crd::{AmqpRoute, AmqpRouteSpec};
use amqp_relay::operator::render::{DEFAULT_SECRETS_DIR, render};
use amqp_relay::operator::sync::{Ctx, MANAGER, sync};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Recorder, Reporter};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUTES: usize = 1000;
const NAMESPACES: usize = 100;

/// Objects by path; what was written, by method and path.
#[derive(Default)]
struct Api {
    objects: Mutex<BTreeMap<String, serde_json::Value>>,
    writes: Mutex<Vec<String>>,
}

async fn serve(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> impl IntoResponse {
    let path = uri.path().to_owned();
    let json = |s: StatusCode, v: &serde_json::Value| {
        (s, [("content-type", "application/json")], v.to_string())
    };
    if method == Method::GET && path.ends_with("/pods") {
        let empty =
            serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []});
        return json(StatusCode::OK, &empty);
    }
    let mut objects = api.objects.lock().unwrap();
    if method == Method::GET {
        return match objects.get(&path) {
            Some(o) => json(StatusCode::OK, o),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        };
    }
    api.writes.lock().unwrap().push(format!("{method} {path}"));
    let patch: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if method == Method::POST {
        return json(StatusCode::CREATED, &patch);
    }
    // Server-side apply with one manager: what it applies is what it owns.
    let key = path.trim_end_matches("/status").to_owned();
    let obj = objects.entry(key).or_insert(serde_json::json!({}));
    if path.ends_with("/status") {
        obj["status"] = patch["status"].clone();
    } else {
        *obj = patch;
    }
    json(StatusCode::OK, obj)
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
fn cached(api: &Api, routes: &[AmqpRoute]) -> Vec<Arc<AmqpRoute>> {
    let mut objects = api.objects.lock().unwrap();
    routes
        .iter()
        .map(|r| {
            let path = format!(
                "/apis/amqprelay.io/v1alpha1/namespaces/{}/amqproutes/{}",
                r.metadata.namespace.as_deref().unwrap(),
                r.metadata.name.as_deref().unwrap()
            );
            let stored = objects
                .entry(path)
                .or_insert_with(|| serde_json::to_value(r).unwrap());
            let mut fresh = serde_json::to_value(r).unwrap();
            fresh["status"] = stored["status"].clone();
            *stored = fresh.clone();
            Arc::new(serde_json::from_value(fresh).unwrap())
        })
        .collect()
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
    let api = Arc::new(Api::default());
    let app = axum::Router::new().fallback(serve).with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
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
        relay_port: 8000,
        http: reqwest::Client::new(),
        relay: "edge".into(),
        namespace: "mail".into(),
        secrets_dir: DEFAULT_SECRETS_DIR.into(),
        ownership: Default::default(),
        serve_unreferenced: true,
        shared_cluster_namespaces: vec![],
        history: Default::default(),
        conflicts: Default::default(),
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
    api.writes.lock().unwrap().clear();

    let started = Instant::now();
    let idle = sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    let nothing_new = started.elapsed();
    let idle_writes = api.writes.lock().unwrap().len();

    routes[417].spec.publish.routing_key = "rk.edited".into();
    routes[417].metadata.generation = Some(2);
    api.writes.lock().unwrap().clear();
    let started = Instant::now();
    let edit = sync(&ctx, &cached(&api, &routes), &secrets).await.unwrap();
    let one_edit = started.elapsed();
    let edit_writes = api.writes.lock().unwrap().clone();
    let status_writes = edit_writes
        .iter()
        .filter(|w| w.ends_with("/status"))
        .count();
    let rss_end = rss_kib();

    let (cm_bytes, secret_keys) = {
        let objects = api.objects.lock().unwrap();
        let cm = &objects["/api/v1/namespaces/mail/configmaps/edge-policy"];
        let secret = &objects["/api/v1/namespaces/mail/secrets/edge-routes"];
        (
            cm["data"]["routes.lua"].as_str().unwrap().len(),
            secret["data"].as_object().map_or(0, |d| d.len()),
        )
    };
    println!(
        "operator bench: {ROUTES} routes in {NAMESPACES} namespaces, {NAMESPACES} credential Secrets, fake API over HTTP"
    );
    println!(
        "  baseline: render alone                       {:8.1} ms",
        ms(render_only)
    );
    println!(
        "  first full sync (render, compile, publish, {} statuses) {:8.1} ms",
        first.statuses_written,
        ms(full)
    );
    println!(
        "  sync with nothing new                        {:8.1} ms, {idle_writes} writes ({} statuses)",
        ms(nothing_new),
        idle.statuses_written
    );
    println!(
        "  one route edited                             {:8.1} ms, {} writes: {status_writes} status, {} other ({:?})",
        ms(one_edit),
        edit_writes.len(),
        edit_writes.len() - status_writes,
        edit_writes
            .iter()
            .filter(|w| !w.ends_with("/status"))
            .collect::<Vec<_>>(),
    );
    assert_eq!(edit.statuses_written, 1, "one edit, one status write");
    println!(
        "  policy ConfigMap {cm_bytes} bytes; routes Secret {secret_keys} keys (one per distinct credential URL)"
    );
    println!(
        "  RSS: {} KiB at start, {} KiB after rendering, {} KiB after the syncs (process includes the fake API and its copy of every object)",
        rss_start, rss_before_sync, rss_end
    );
}
