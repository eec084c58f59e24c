//! A relay restarted while the Kubernetes API does not answer (control plane
//! down, RBAC broken) serves the kubelet's mounted copy of its routes after a
//! bounded wait, says so, and goes back to the API's copy when it answers.

use crate::broker::Broker;
use crate::fake_kube::FakeKube;
use crate::harness::*;
use crate::held::{base_requiring_routes, bodies_of, routed_policy, spool_five};
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::time::{Duration, Instant};

async fn policy_report(relay: &Relay) -> serde_json::Value {
    reqwest::get(relay.url("/api/policy"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_the_mounted_routes_serve_until_it_answers() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "mounted-q", FieldTable::default()).await;
    declare_queue(&conn, "api-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // The mounted copy routes to mounted-q; the API's newer version to api-q.
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let mounted = routed_policy(&old, true, "mounted-q", &broker.url());
    let current = routed_policy(&new, true, "api-q", &broker.url());
    // Mail acknowledged before the restart.
    let bodies = spool_five(&mounted, &spool).await;

    let mount = dir.path().join("mount");
    let base = base_requiring_routes(dir.path(), &mount);
    std::fs::copy(&mounted, mount.join("routes.lua")).unwrap();
    let kube = FakeKube::start_down(dir.path(), "mail", "edge-policy");
    let env = [
        ("KUBECONFIG", kube.kubeconfig.to_str().unwrap()),
        ("AMQP_RELAY_POLICY_CONFIGMAP", "mail/edge-policy"),
        ("AMQP_RELAY_POLICY_CONFIGMAP_DIR", mount.to_str().unwrap()),
        ("AMQP_RELAY_API_WAIT_TIMEOUT", "2s"),
    ];
    let started = Instant::now();
    let relay = Relay::start_with_env(&base, &spool, &env);
    relay.await_ready(Duration::from_secs(20)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "ready after {waited:?}, before the bound"
    );
    let ready = reqwest::get(relay.url("/readyz")).await.unwrap();
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("mounted copy of the policy ConfigMap"),
        "{text}"
    );
    assert_eq!(
        policy_report(&relay).await["routes_from_mount"],
        serde_json::json!(["policy ConfigMap"])
    );
    assert_eq!(relay.metric("amqp_relay_routes_from_mount").await, 1.0);

    // The mounted routes deliver what was spooled and what comes now.
    let got = consume(&conn, "mounted-q", 5, Duration::from_secs(30)).await;
    let got: HashSet<String> = bodies_of(&got).into_iter().collect();
    assert_eq!(got, bodies, "relay log:\n{}", relay.log_text());
    let (status, resp) = relay
        .inject("s@example.com", &["during@amqp".to_string()], "during")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "mounted-q", 1, Duration::from_secs(30)).await;
    assert_eq!(bodies_of(&got), ["during"]);

    // The API answers with a newer version: the relay takes it.
    kube.update(
        [(
            "routes.lua".to_string(),
            std::fs::read_to_string(&current).unwrap(),
        )]
        .into(),
    );
    kube.come_up().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.metric("amqp_relay_routes_from_mount").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "still on the mount:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        policy_report(&relay)
            .await
            .get("routes_from_mount")
            .is_none()
    );
    assert_eq!(
        reqwest::get(relay.url("/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ready\n"
    );
    let (status, resp) = relay
        .inject("s@example.com", &["after@amqp".to_string()], "after")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "api-q", 1, Duration::from_secs(30)).await;
    assert_eq!(bodies_of(&got), ["after"]);
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
    assert!(relay.stop());
}

/// No mounted copy (the ConfigMap does not exist) and no API: mail waits,
/// whatever the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_and_without_a_mounted_copy_mail_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mount");
    let base = base_requiring_routes(dir.path(), &mount);
    let kube = FakeKube::start_down(dir.path(), "mail", "edge-policy");
    let env = [
        ("KUBECONFIG", kube.kubeconfig.to_str().unwrap()),
        ("AMQP_RELAY_POLICY_CONFIGMAP", "mail/edge-policy"),
        ("AMQP_RELAY_POLICY_CONFIGMAP_DIR", mount.to_str().unwrap()),
        ("AMQP_RELAY_API_WAIT_TIMEOUT", "1s"),
    ];
    let relay = Relay::start_with_env(&base, &dir.path().join("spool"), &env);
    // The relay says when it has looked and found nothing mounted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !relay
        .log_text()
        .contains("nothing is mounted: holding mail")
    {
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = reqwest::get(relay.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let (status, resp) = relay
        .inject("s@example.com", &["x@amqp".to_string()], "x")
        .await;
    assert_eq!(status, 503, "deferred, never bounced: {resp}");
    assert!(relay.stop());
}
