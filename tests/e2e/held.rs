//! Configuration gaps hold mail, they never bounce it: a restart before the
//! routes arrive, a route removed and restored under load, a routes
//! ConfigMap that does not exist yet.

use crate::broker::{Broker, free_port};
use crate::harness::*;
use lapin::types::FieldTable;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn routed_policy(dir: &Path, routed: bool, queue: &str, url: &str) -> PathBuf {
    routed_policy_retrying(dir, routed, queue, url, "1s")
}

/// As `routed_policy`, retrying after `retry` (at most twice that).
pub fn routed_policy_retrying(
    dir: &Path,
    routed: bool,
    queue: &str,
    url: &str,
    retry: &str,
) -> PathBuf {
    // A number and a unit (`1s`, `1h`): the cap is twice the interval.
    let split = retry
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(retry.len());
    let max = format!(
        "{}{}",
        2 * retry[..split].parse::<u64>().unwrap(),
        &retry[split..]
    );
    write_policy(
        dir,
        "policy.lua",
        &crate::policy_template("routed.lua"),
        &[
            ("ROUTED", if routed { "true" } else { "false" }),
            ("QUEUE", queue),
            ("URL", url),
            ("BATCH", "1"),
            ("RETRY", retry),
            ("MAX_RETRY", &max),
        ],
    )
}

fn nowhere() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port())
}

/// Five messages acknowledged while the broker is unreachable.
pub async fn spool_five(policy: &Path, spool: &Path) -> HashSet<String> {
    let relay = Relay::start_with_env(policy, spool, &[("BROKER_URL", &nowhere())]);
    let mut bodies = HashSet::new();
    for i in 0..5 {
        let body = format!("held {i}");
        let (status, resp) = relay
            .inject("s@example.com", &[format!("h{i}@amqp")], &body)
            .await;
        assert_eq!(status, 200, "{resp}");
        bodies.insert(body);
    }
    assert!(relay.stop(), "clean exit on SIGTERM");
    bodies
}

/// The chart's shape: a base policy that requires `routes` from the policy
/// ConfigMap's mount directory `mount` (created empty), if it is there.
pub fn base_requiring_routes(dir: &Path, mount: &Path) -> PathBuf {
    std::fs::create_dir_all(mount).unwrap();
    let base = dir.join("base.lua");
    std::fs::write(
        &base,
        format!(
            "package.path = '{}/?.lua;' .. package.path\n\
             local ok, err = pcall(require, 'routes')\n\
             if not ok and not string.find(tostring(err), \"module 'routes' not found\", 1, true) then error(err, 0) end\n",
            mount.display()
        ),
    )
    .unwrap();
    base
}

pub fn bodies_of(got: &[lapin::message::Delivery]) -> Vec<String> {
    got.iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_route_holds_mail_until_it_returns() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "held-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let routed = routed_policy(dir.path(), true, "held-q", &broker.url());
    let bodies = spool_five(&routed, &spool).await;

    // The relay comes back on a policy that does not route 'amqp' (the
    // routes are not there yet, or the route is briefly deleted).
    let unrouted = routed_policy(dir.path(), false, "held-q", &broker.url());
    let relay = Relay::start(&unrouted, &spool);
    relay
        .await_metric(
            "amqp_relay_held_messages{queue=\"amqp\"}",
            5.0,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
    assert_eq!(relay.metric("amqp_relay_spooled_messages").await, 5.0);
    // Its log (a pipe here, a file or a collector in a pod) is plain text.
    let log = relay.log_text();
    assert!(log.contains("holding the spooled messages"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "ANSI colour codes in the log: {log:?}"
    );
    let summary: serde_json::Value = reqwest::get(relay.url("/api/admin/queue-summary/v1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let q = &summary["queues"][0];
    assert_eq!(
        (q["name"].as_str(), q["held"].as_bool()),
        (Some("amqp"), Some(true))
    );
    assert_eq!(q["scheduled"], 5);
    // New mail for the unrouted queue is refused (the seed's semantics), not held.
    let (status, resp) = relay
        .inject("s@example.com", &["new@amqp".to_string()], "new")
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["errors"][0].as_str().unwrap().contains("550 5.1.2"),
        "{resp}"
    );
    assert!(relay.stop());

    // The route is back: every held message is delivered, none bounced.
    let routed = routed_policy(dir.path(), true, "held-q", &broker.url());
    let relay = Relay::start(&routed, &spool);
    let got = consume(&conn, "held-q", 5, Duration::from_secs(30)).await;
    let got: HashSet<String> = bodies_of(&got).into_iter().collect();
    assert_eq!(got, bodies, "relay log:\n{}", relay.log_text());
    relay
        .await_metric("amqp_relay_delivered_total", 5.0, Duration::from_secs(10))
        .await;
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
}

/// Held mail does not live forever: a route deleted for good leaves its
/// queue's mail held; an operator bounces it, or it expires at the held max age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_mail_is_bounced_on_request_and_expires_at_the_held_max_age() {
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let (on, off) = (dir.path().join("on"), dir.path().join("off"));
    std::fs::create_dir_all(&on).unwrap();
    std::fs::create_dir_all(&off).unwrap();
    let routed = routed_policy(&on, true, "held-x", &broker.url());
    let unrouted = routed_policy(&off, false, "held-x", &broker.url());

    // Bounced on request (the held max age far away).
    let spool = dir.path().join("spool-bounce");
    spool_five(&routed, &spool).await;
    let relay = Relay::start_with_env(&unrouted, &spool, &[("AMQP_RELAY_HELD_MAX_AGE", "1h")]);
    let held = "amqp_relay_held_messages{queue=\"amqp\"}";
    relay.await_metric(held, 5.0, Duration::from_secs(30)).await;
    let resp = reqwest::Client::new()
        .post(relay.url("/api/admin/bounce/v1"))
        .json(&serde_json::json!({"domain": "amqp", "reason": "route retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(report["bounced"]["amqp"], 5, "{report}");
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 5.0);
    assert_eq!(relay.metric("amqp_relay_spooled_messages").await, 0.0);
    assert_eq!(relay.metric(held).await, 0.0);
    assert_eq!(relay.metric("amqp_relay_expired_total").await, 0.0);
    assert!(relay.stop());

    // Expired at the held max age, with an Expiration each, never bounced.
    let spool = dir.path().join("spool-expire");
    spool_five(&routed, &spool).await;
    let relay = Relay::start_with_env(&unrouted, &spool, &[("AMQP_RELAY_HELD_MAX_AGE", "3s")]);
    relay.await_metric(held, 5.0, Duration::from_secs(30)).await;
    relay
        .await_metric("amqp_relay_expired_total", 5.0, Duration::from_secs(30))
        .await;
    assert_eq!(relay.metric("amqp_relay_spooled_messages").await, 0.0);
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
    relay
        .await_log(&["held for longer than 3s"], Duration::from_secs(10))
        .await;
    assert!(relay.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_the_routes_configmap_is_read_mail_waits_and_new_mail_is_deferred() {
    use crate::fake_kube::FakeKube;
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "cm-held-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let routes = routed_policy(dir.path(), true, "cm-held-q", &broker.url());
    let routes_text = std::fs::read_to_string(&routes).unwrap();
    let bodies = spool_five(&routes, &spool).await;

    // The chart's shape: a base policy that requires the routes from the
    // ConfigMap's mount, which is empty until the kubelet fills it.
    let mount = dir.path().join("mount");
    let base = base_requiring_routes(dir.path(), &mount);
    let kube = FakeKube::start_without(dir.path(), "mail", "edge-policy").await;
    let env = [
        ("KUBECONFIG", kube.kubeconfig.to_str().unwrap()),
        ("AMQP_RELAY_POLICY_CONFIGMAP", "mail/edge-policy"),
        ("AMQP_RELAY_POLICY_CONFIGMAP_DIR", mount.to_str().unwrap()),
    ];
    let relay = Relay::start_with_env(&base, &spool, &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kube.watchers() == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log_text());
        tokio::task::yield_now().await;
    }
    let ready = reqwest::get(relay.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains("waiting for the routes")
    );
    let (status, resp) = relay
        .inject("s@example.com", &["early@amqp".to_string()], "early")
        .await;
    assert_eq!(status, 503, "a temporary refusal, never a bounce: {resp}");
    assert!(
        resp["errors"][0].as_str().unwrap().contains("451 4.3.0"),
        "{resp}"
    );
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 0.0);
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);

    // The operator writes the routes: the spooled mail goes out, new mail is taken.
    kube.update([("routes.lua".to_string(), routes_text)].into());
    let got = consume(&conn, "cm-held-q", 5, Duration::from_secs(30)).await;
    let got: HashSet<String> = bodies_of(&got).into_iter().collect();
    assert_eq!(got, bodies, "relay log:\n{}", relay.log_text());
    let ready = reqwest::get(relay.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let (status, resp) = relay
        .inject("s@example.com", &["late@amqp".to_string()], "late")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "cm-held-q", 1, Duration::from_secs(30)).await;
    assert_eq!(bodies_of(&got), vec!["late".to_string()]);
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
}

/// Injects numbered messages until told to stop; records which were acknowledged.
pub struct Stream {
    pub acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Stream {
    /// `http` is read before each request, so a restarted relay is picked up.
    pub fn start(http: Arc<Mutex<String>>, tag: &'static str, per_request: usize) -> Stream {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let bodies: Vec<String> =
                    (0..per_request).map(|i| format!("{tag}-{n}-{i}")).collect();
                n += 1;
                // One request per body: every message has its own content.
                let mut ok = Vec::new();
                for b in &bodies {
                    let url = format!("http://{}/api/inject/v1", http.lock().unwrap());
                    let req = serde_json::json!({
                        "envelope_sender": "s@example.com",
                        "content": b,
                        "recipients": [{"email": "stream@amqp"}],
                    });
                    match client.post(url).json(&req).send().await {
                        Ok(r) if r.status() == 200 => ok.push(b.clone()),
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                a.lock().unwrap().extend(ok);
            }
            n
        });
        Stream { acked, stop, task }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        self.acked.lock().unwrap().clone()
    }
}

/// Every acknowledged body delivered exactly once, nothing else delivered.
pub fn assert_exactly_once(acked: &[String], delivered: &[String], tag: &str) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in delivered {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|a| !counts.contains_key(a.as_str()))
        .collect();
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let stray: Vec<_> = counts.keys().filter(|d| !d.starts_with(tag)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged but lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        dups.is_empty(),
        "{} delivered more than once, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    assert!(stray.is_empty(), "unexpected deliveries: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_removed_and_restored_under_a_stream_loses_nothing() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "flap-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = routed_policy(dir.path(), true, "flap-q", &broker.url());
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let stream = Stream::start(Arc::new(Mutex::new(relay.http.to_string())), "flap", 10);
    let wait_acked = |n: usize| {
        let acked = stream.acked.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while acked.lock().unwrap().len() < n {
                assert!(std::time::Instant::now() < deadline, "the stream stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_acked(100).await;
    routed_policy(dir.path(), false, "flap-q", &broker.url());
    relay
        .await_metric("amqp_relay_policy_epoch", 2.0, Duration::from_secs(10))
        .await;
    // While the route is gone, new mail is refused; what was taken stays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = stream.acked();
    routed_policy(dir.path(), true, "flap-q", &broker.url());
    relay
        .await_metric("amqp_relay_policy_epoch", 3.0, Duration::from_secs(10))
        .await;
    wait_acked(during + 100).await;
    let acked = stream.finish().await;
    let got = consume(&conn, "flap-q", acked.len(), Duration::from_secs(60)).await;
    // Anything more than acknowledged would show up here.
    let extra = consume(&conn, "flap-q", 1, Duration::from_millis(500)).await;
    let mut delivered = bodies_of(&got);
    delivered.extend(bodies_of(&extra));
    assert_exactly_once(&acked, &delivered, "flap");
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
}
