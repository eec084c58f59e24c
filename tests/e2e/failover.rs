//! Broker failover in seconds whatever the route's retry interval: a route
//! listing the three nodes of a real RabbitMQ cluster (started by the
//! harness), a quorum queue whose leader is on the node the relay uses, and
//! that node killed mid-stream. A nack from the broker right after the
//! leader moves, or a publish lost with the connection, is retried promptly
//! on a fresh channel or node — not after the route's default retry interval
//! (KumoMTA's 20 minutes).

use crate::broker::Broker;
use crate::harness::*;
use crate::held::Stream;
use crate::render::{mount, render_objects, yaml_str};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The rendered route over `urls`, no delivery settings (the defaults).
fn route(dir: &std::path::Path, urls: &[String], queue: &str) -> std::path::PathBuf {
    let list: Vec<String> = urls.iter().map(|u| yaml_str(u)).collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: rabbit-user, namespace: team}}\nstringData: {{username: guest, password: guest}}\n---\n\
         apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {{name: cluster, namespace: team}}\nspec:\n  match: {{domain: amqp}}\n  broker:\n    urls: [{}]\n    credentialsSecretRef: {{name: rabbit-user}}\n  publish: {{routingKey: {queue}}}\n",
        list.join(", ")
    );
    let secrets_dir = dir.join("secrets");
    let (policy, secret) = render_objects(dir, &yaml, &secrets_dir);
    mount(&secrets_dir, secret);
    let path = dir.join("routes.lua");
    std::fs::write(&path, policy).unwrap();
    path
}

async fn wait_acked(stream: &Stream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.acked() < n {
        assert!(
            Instant::now() < deadline,
            "the stream stalled at {}",
            stream.acked()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_cluster_node_fails_over_in_seconds_with_the_default_retry_interval() {
    let nodes = tokio::task::spawn_blocking(|| Broker::cluster(3))
        .await
        .unwrap();
    let first = nodes[0].connect().await;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    // Declared on the first node: the queue's leader is there, where the relay connects.
    declare_queue(&first, "fo-quorum", quorum).await;
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("amqp://127.0.0.1:{}/%2f", n.port))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let policy = route(dir.path(), &urls, "fo-quorum");
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let http = Arc::new(Mutex::new(relay.http.to_string()));
    let stream = Stream::start(http, "fo", 10);
    wait_acked(&stream, 300).await;

    let killed_at = Instant::now();
    let victim = &nodes[0];
    std::thread::scope(|s| {
        s.spawn(|| victim.kill9());
    });
    let before = stream.acked();
    wait_acked(&stream, before + 300).await;
    let acked = stream.finish().await;
    let streamed_for = killed_at.elapsed();

    // Everything arrives on the surviving nodes, within seconds of the kill.
    let survivor = nodes[1].connect().await;
    let got = consume(&survivor, "fo-quorum", acked.len(), Duration::from_secs(60)).await;
    let delivered_after = killed_at.elapsed();
    let extra = consume(&survivor, "fo-quorum", 1, Duration::from_millis(500)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in got.iter().chain(&extra) {
        *seen
            .entry(String::from_utf8(d.data.clone()).unwrap())
            .or_default() += 1;
    }
    let lost: Vec<&String> = acked.iter().filter(|a| !seen.contains_key(*a)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let nacks = relay.metric("amqp_relay_broker_nacks_total").await;
    let retired = relay
        .metric("amqp_relay_broker_channels_retired_total")
        .await;
    eprintln!(
        "failover: {} acknowledged, {} lost, {duplicates} duplicates; stream went on {:.1} s after the kill, \
         all delivered {:.1} s after it; {nacks} nacks, {retired} channels retired",
        acked.len(),
        lost.len(),
        streamed_for.as_secs_f64(),
        delivered_after.as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged but lost, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        relay.log_text()
    );
    assert!(
        delivered_after < streamed_for.max(Duration::from_secs(10)) + Duration::from_secs(5),
        "delivered {delivered_after:?} after the kill (the stream went on {streamed_for:?})"
    );
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 0.0);
}
