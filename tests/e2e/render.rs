//! End to end without a cluster: AmqpRoute YAML → `amqp-relay render` →
//! the relay runs the rendered policy → messages arrive in RabbitMQ as the
//! route says.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::AMQPValue;
use std::process::Command;
use std::time::Duration;

const HOSTILE_KEY: &str = "\"]] os.exit(1) --[[ '); os.execute('touch PWNED') -- \\ end";

pub fn yaml_str(s: &str) -> String {
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

/// Renders `yaml` as the operator would; returns the policy and the Secret's data.
pub fn render_objects(
    dir: &std::path::Path,
    yaml: &str,
    secrets_dir: &std::path::Path,
) -> (String, std::collections::BTreeMap<String, Vec<u8>>) {
    render_objects_with(dir, yaml, secrets_dir, &[])
}

/// Lays a rendered Secret out as the kubelet mounts it.
pub fn mount(dir: &std::path::Path, secret: std::collections::BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in secret {
        std::fs::write(dir.join(k), v).unwrap();
    }
}

/// As `render_objects`, with more `render` arguments.
fn render_objects_with(
    dir: &std::path::Path,
    yaml: &str,
    secrets_dir: &std::path::Path,
    extra: &[&str],
) -> (String, std::collections::BTreeMap<String, Vec<u8>>) {
    let file = dir.join("input.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["render", "--namespace", "team", "--relay", "edge"])
        .args(extra)
        .arg("-f")
        .arg(&file)
        .arg("--secrets-dir")
        .arg(secrets_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut docs = stdout.split("---\n");
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_norway::from_str(docs.next().unwrap()).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_norway::from_str(docs.next().unwrap()).unwrap();
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    (cm.data.unwrap()["routes.lua"].clone(), data)
}

fn rotating_route(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: rabbit, namespace: team, uid: u1, resourceVersion: '1'}}\nstringData:\n  url: {}\n---\n\
         apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {{name: rot, namespace: team}}\nspec:\n  match: {{domain: amqp}}\n  broker:\n    urlSecretRef: {{name: rabbit, key: url}}\n  publish: {{routingKey: rot-q}}\n  delivery: {{retryInterval: 1s}}\n",
        yaml_str(url)
    )
}

/// The relay's keyed digests of the routes Secret, from `/api/policy`.
async fn secret_digests(relay: &Relay) -> serde_json::Value {
    let report: serde_json::Value = reqwest::get(relay.url("/api/policy"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report["secrets"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_routes_secret_reaches_the_relay_through_the_api() {
    use crate::fake_kube::FakeKube;
    let broker = Broker::shared();
    let first = broker.url();
    let second = broker.vhost("rotated");
    let conn = broker.connect().await;
    declare_queue(&conn, "rot-q", Default::default()).await;
    let rotated_conn = lapin::Connection::connect(&second, Default::default())
        .await
        .unwrap();
    declare_queue(&rotated_conn, "rot-q", Default::default()).await;

    let dir = tempfile::tempdir().unwrap();
    // Nothing is ever written here: the credentials come through the API only.
    let secrets_dir = dir.path().join("routes-secret");
    let (policy, secret) = render_objects(dir.path(), &rotating_route(&first), &secrets_dir);
    let mount = dir.path().join("mount");
    let base = crate::held::base_requiring_routes(dir.path(), &mount);
    let kube = FakeKube::start(
        dir.path(),
        "mail",
        "edge-policy",
        [("routes.lua".to_string(), policy)].into(),
    )
    .await;
    // The operator adds the key its per-route credential digests are keyed with.
    let with_key = |mut s: std::collections::BTreeMap<String, Vec<u8>>| {
        s.insert("digest-key".into(), b"test-digest-key".to_vec());
        s
    };
    kube.update_secret("edge-routes", with_key(secret));
    let env = [
        ("KUBECONFIG", kube.kubeconfig.to_str().unwrap()),
        ("AMQP_RELAY_POLICY_CONFIGMAP", "mail/edge-policy"),
        ("AMQP_RELAY_POLICY_CONFIGMAP_DIR", mount.to_str().unwrap()),
        ("AMQP_RELAY_ROUTES_SECRET", "mail/edge-routes"),
        (
            "AMQP_RELAY_ROUTES_SECRET_DIR",
            secrets_dir.to_str().unwrap(),
        ),
    ];
    let relay = Relay::start_with_env(&base, &dir.path().join("spool"), &env);
    relay.await_ready(Duration::from_secs(30)).await;
    let before = secret_digests(&relay).await;
    assert!(before["team.rot.url"].is_string(), "{before}");
    let (status, resp) = relay
        .inject("s@x.com", &["a@amqp".to_string()], "first")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "rot-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());

    // Only the Secret changes (the ConfigMap stays): the relay reloads with
    // the new credentials and new sessions use them.
    let (_, rotated) = render_objects(dir.path(), &rotating_route(&second), &secrets_dir);
    kube.update_secret("edge-routes", with_key(rotated));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while secret_digests(&relay).await == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, resp) = relay
        .inject("s@x.com", &["b@amqp".to_string()], "second")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&rotated_conn, "rot-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    assert_eq!(got[0].data, b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_url_fails_over_to_the_next_with_credentials_from_a_secret() {
    let broker = tokio::task::spawn_blocking(Broker::private).await.unwrap();
    // A password that needs percent-encoding in a URL.
    let password = "p@ss:w/rd%";
    broker.ctl(&["add_user", "relay", password]);
    broker.ctl(&["set_permissions", "-p", "/", "relay", ".*", ".*", ".*"]);
    let conn = broker.connect().await;
    declare_queue(&conn, "failover-q", Default::default()).await;
    let dead = format!("amqp://127.0.0.1:{}/%2f", crate::broker::free_port());
    let live = format!("amqp://127.0.0.1:{}/%2f", broker.port);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: rabbit-user, namespace: team}}\nstringData:\n  username: relay\n  password: {}\n---\n\
         apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {{name: fo, namespace: team}}\nspec:\n  match: {{domain: amqp}}\n  broker:\n    urls: [{}, {}]\n    credentialsSecretRef: {{name: rabbit-user}}\n  publish: {{routingKey: failover-q}}\n  delivery: {{retryInterval: 1s}}\n",
        yaml_str(password),
        yaml_str(&dead),
        yaml_str(&live)
    );
    let dir = tempfile::tempdir().unwrap();
    let secrets_dir = dir.path().join("secrets");
    let (policy, secret) = render_objects(dir.path(), &yaml, &secrets_dir);
    assert!(!policy.contains(password));
    mount(&secrets_dir, secret);
    let policy_path = dir.path().join("routes.lua");
    std::fs::write(&policy_path, policy).unwrap();
    let relay = Relay::start(&policy_path, &dir.path().join("spool"));
    let (status, resp) = relay
        .inject("s@x.com", &recipients("fo", "amqp", 20), "over")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "failover-q", 20, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 20, "relay log:\n{}", relay.log_text());
    assert_eq!(
        relay.metric("amqp_relay_transient_failures_total").await,
        0.0
    );
    assert!(
        !relay.log_text().contains(password),
        "no credential in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_cluster_ref_route_delivers_to_the_clusters_default_user() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "cluster-ref-q", Default::default()).await;
    // As RabbitMQ's cluster operator leaves them: the cluster with its status,
    // and the default user's Secret (host and port keys, no URL).
    let yaml = format!(
        "apiVersion: rabbitmq.com/v1beta1\nkind: RabbitmqCluster\nmetadata: {{name: rabbit, namespace: messaging, annotations: {{rabbitmq.com/topology-allowed-namespaces: team}}}}\nspec: {{replicas: 1}}\n\
         status:\n  defaultUser:\n    secretReference: {{name: rabbit-default-user, namespace: messaging, keys: {{username: username, password: password}}}}\n    serviceReference: {{name: rabbit, namespace: messaging}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: rabbit-default-user, namespace: messaging}}\nstringData: {{username: guest, password: guest, host: 127.0.0.1, port: '{}'}}\n---\n\
         apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {{name: via-cluster, namespace: team}}\nspec:\n  match: {{domain: amqp}}\n  broker:\n    rabbitmqClusterRef: {{name: rabbit, namespace: messaging}}\n  publish: {{routingKey: cluster-ref-q}}\n",
        broker.port
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.yaml");
    std::fs::write(&file, &yaml).unwrap();
    // Another namespace's cluster: refused unless the operator shares it.
    let refused = Command::new(BIN)
        .args(["render", "--namespace", "team", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("sharedRabbitmqClusterNamespaces"),
        "{stderr}"
    );

    let secrets_dir = dir.path().join("secrets");
    let (rendered, secret) = render_objects_with(
        dir.path(),
        &yaml,
        &secrets_dir,
        &["--shared-rabbitmq-cluster-namespaces", "messaging"],
    );
    mount(&secrets_dir, secret);
    let policy = dir.path().join("routes.lua");
    std::fs::write(&policy, rendered).unwrap();
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let (status, resp) = relay
        .inject("s@x.com", &["u@amqp".to_string()], "through the cluster")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "cluster-ref-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    assert_eq!(got[0].data, b"through the cluster");
}
