//! End to end without a cluster: AmqpRoute YAML → `amqp-relay render` →
//! the relay runs the rendered policy → messages arrive in RabbitMQ as the
//! route says.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::AMQPValue;
use std::process::Command;
use std::time::Duration;

const HOSTILE_KEY: &str = "\"]] os.exit(1) --[[ '); os.execute('touch PWNED') -- \\ end";

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap() // JSON strings are valid YAML flow scalars
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_route_publishes_as_declared_and_hostile_keys_run_no_code() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_bound(&conn, "relay-x", "render-q", &["rk.one"]).await;
    declare_bound(&conn, "relay-x", "hostile-q", &[HOSTILE_KEY]).await;

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("PWNED");
    let routes = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: rabbit, namespace: team}}
stringData:
  url: {url}
---
apiVersion: amqprelay.io/v1alpha1
kind: AmqpRoute
metadata: {{name: seed, namespace: team}}
spec:
  match: {{domain: amqp}}
  broker:
    urlSecretRef: {{name: rabbit, key: url}}
  publish:
    exchange: relay-x
    routingKey: rk.one
    contentType: application/json
    headers: {{x-source: amqp-relay, x-quote: "it's \"quoted\""}}
---
apiVersion: amqprelay.io/v1alpha1
kind: AmqpRoute
metadata: {{name: hostile, namespace: team}}
spec:
  match: {{domain: evil}}
  broker:
    urlSecretRef: {{name: rabbit, key: url}}
  publish:
    exchange: relay-x
    routingKey: {key}
    persistent: false
"#,
        url = yaml_str(&broker.url()),
        key = yaml_str(HOSTILE_KEY),
    );
    std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
    let secrets_dir = dir.path().join("secrets");
    let out = Command::new(BIN)
        .args(["render", "--namespace", "team", "--relay", "edge", "-f"])
        .arg(dir.path().join("routes.yaml"))
        .arg("--secrets-dir")
        .arg(&secrets_dir)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("route team/hostile: accepted"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !stdout.contains("guest:guest"),
        "credentials never in the ConfigMap"
    );

    // Lay the objects out as the kubelet mounts them.
    let mut docs = stdout.split("---\n");
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_norway::from_str(docs.next().unwrap()).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_norway::from_str(docs.next().unwrap()).unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("edge-policy"));
    assert_eq!(secret.metadata.name.as_deref(), Some("edge-routes"));
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let policy = policy_dir.join("routes.lua");
    std::fs::write(&policy, &cm.data.unwrap()["routes.lua"]).unwrap();
    for (k, v) in secret.data.unwrap() {
        std::fs::write(secrets_dir.join(k), v.0).unwrap();
    }

    let relay = Relay::start(&policy, &dir.path().join("spool"));
    for (rcpt, body) in [("u@amqp", "{\"n\": 1}"), ("u@evil", "hostile body")] {
        let (status, resp) = relay
            .inject("s@example.com", &[rcpt.to_string()], body)
            .await;
        assert_eq!(status, 200, "{resp}");
    }
    // A domain without a route is refused, naming the queue.
    let (status, resp) = relay
        .inject("s@example.com", &["u@other".to_string()], "x")
        .await;
    assert_eq!(status, 400, "{resp}");

    let got = consume(&conn, "render-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    let d = &got[0];
    assert_eq!(d.data, b"{\"n\": 1}");
    assert_eq!(d.exchange.as_str(), "relay-x");
    assert_eq!(d.routing_key.as_str(), "rk.one");
    assert_eq!(
        d.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(d.properties.delivery_mode(), &Some(2));
    let headers = d.properties.headers().clone().unwrap();
    let h = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(h("x-source"), "amqp-relay");
    assert_eq!(h("x-quote"), "it's \"quoted\"");

    let got = consume(&conn, "hostile-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    assert_eq!(got[0].routing_key.as_str(), HOSTILE_KEY);
    assert_eq!(got[0].properties.delivery_mode(), &Some(1));
    assert!(!marker.exists(), "no code from a route ran");
    assert!(!std::path::Path::new("PWNED").exists());
}
