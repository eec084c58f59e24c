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

/// The rendered route over `urls` publishing to `exchange` with routing key
/// `key`, no delivery settings (the defaults).
fn route(dir: &std::path::Path, urls: &[String], exchange: &str, key: &str) -> std::path::PathBuf {
    let list: Vec<String> = urls.iter().map(|u| yaml_str(u)).collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: rabbit-user, namespace: team}}\nstringData: {{username: guest, password: guest}}\n---\n\
         apiVersion: amqprelay.io/v1alpha1\nkind: AmqpRoute\nmetadata: {{name: cluster, namespace: team}}\nspec:\n  match: {{domain: amqp}}\n  broker:\n    urls: [{}]\n    credentialsSecretRef: {{name: rabbit-user}}\n  publish: {{exchange: {exchange:?}, routingKey: {key}}}\n",
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
    let mut stream_q = FieldTable::default();
    stream_q.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    declare_queue(&first, "fo-stream", stream_q).await;
    let ch = first.create_channel().await.unwrap();
    ch.exchange_declare(
        "fo-fanout".into(),
        lapin::ExchangeKind::Fanout,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in ["fo-quorum", "fo-stream"] {
        ch.queue_bind(
            q.into(),
            "fo-fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("amqp://127.0.0.1:{}/%2f", n.port))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let policy = route(dir.path(), &urls, "fo-fanout", "fo");
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let http = Arc::new(Mutex::new(relay.http.to_string()));
    let stream = Stream::start(http, "fo", 10);
    wait_acked(&stream, 300).await;

    let killed_at = Instant::now();
    let victim = &nodes[0];
    std::thread::scope(|s| {
        s.spawn(|| victim.kill9());
    });
    // The stream goes on through the broker's unsettled seconds after the kill.
    let before = stream.acked();
    wait_acked(&stream, before + 300).await;
    while killed_at.elapsed() < Duration::from_secs(3) {
        let now = stream.acked();
        wait_acked(&stream, now + 10).await;
    }
    let acked = stream.finish().await;
    let streamed_for = killed_at.elapsed();

    // Everything arrives on the surviving nodes, within seconds of the kill
    // (duplicates counted apart: at-least-once).
    let survivor = nodes[1].connect().await;
    let (lost, duplicates, delivered_after) =
        collect(&survivor, "fo-quorum", &acked, killed_at).await;
    let (stream_lost, stream_dups) = read_stream(&survivor, "fo-stream", &acked).await;
    eprintln!(
        "stream: {} lost, {stream_dups} duplicates",
        stream_lost.len()
    );
    assert!(
        stream_lost.is_empty(),
        "{} acknowledged but not in the stream",
        stream_lost.len()
    );
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

    // The killed node comes back; then the node the relay now uses is
    // stopped gracefully (`stop_app`, as in a rolling restart).
    nodes[0].restart();
    let using = nodes
        .iter()
        .position(|n| {
            n.ctl_output(&["list_connections", "client_properties"])
                .contains("amqp-relay")
        })
        .expect("the relay is connected to a node");
    let http = Arc::new(Mutex::new(relay.http.to_string()));
    let stream = Stream::start(http, "gs", 10);
    wait_acked(&stream, 300).await;
    let stopped_at = Instant::now();
    nodes[using].ctl(&["stop_app"]);
    while stopped_at.elapsed() < Duration::from_secs(3) {
        let now = stream.acked();
        wait_acked(&stream, now + 10).await;
    }
    let acked = stream.finish().await;
    let other = nodes[(using + 1) % 3].connect().await;
    let (lost, duplicates, delivered_after) =
        collect(&other, "fo-quorum", &acked, stopped_at).await;
    eprintln!(
        "graceful stop of node {using}: {} acknowledged, {} lost, {duplicates} duplicates, all delivered {:.1} s after the stop",
        acked.len(),
        lost.len(),
        delivered_after.as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{} lost after a graceful stop:\n{}",
        lost.len(),
        relay.log_text()
    );
    assert!(
        delivered_after < Duration::from_secs(15),
        "{delivered_after:?}"
    );
}

/// Consumes from `queue` until every one of `acked` was seen (or a minute
/// passed); the ones never seen, the duplicates, and the time since `since`.
async fn collect(
    conn: &lapin::Connection,
    queue: &str,
    acked: &[String],
    since: Instant,
) -> (Vec<String>, usize, Duration) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = since.elapsed();
    while acked.iter().any(|a| !seen.contains_key(a)) && Instant::now() < deadline {
        let missing = acked.iter().filter(|a| !seen.contains_key(*a)).count();
        for d in consume(conn, queue, missing, Duration::from_secs(5)).await {
            *seen
                .entry(String::from_utf8(d.data.clone()).unwrap())
                .or_default() += 1;
        }
        after = since.elapsed();
    }
    for d in consume(conn, queue, 1, Duration::from_millis(500)).await {
        *seen
            .entry(String::from_utf8(d.data.clone()).unwrap())
            .or_default() += 1;
    }
    let lost = acked
        .iter()
        .filter(|a| !seen.contains_key(*a))
        .cloned()
        .collect();
    let duplicates = seen.values().map(|n| n - 1).sum();
    (lost, duplicates, after)
}

/// Reads a stream from its first offset until every one of `acked` was seen
/// (or a minute passed); the ones never seen and the duplicates.
async fn read_stream(
    conn: &lapin::Connection,
    queue: &str,
    acked: &[String],
) -> (Vec<String>, usize) {
    use futures_util::StreamExt;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, Default::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(queue.into(), "".into(), Default::default(), args)
        .await
        .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.iter().any(|a| !seen.contains_key(a)) {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack(Default::default()).await.unwrap();
                *seen
                    .entry(String::from_utf8(d.data.clone()).unwrap())
                    .or_default() += 1;
            }
            _ => break,
        }
    }
    let _ = ch.close(200, "done".into()).await;
    let lost = acked
        .iter()
        .filter(|a| !seen.contains_key(*a))
        .cloned()
        .collect();
    (lost, seen.values().map(|n| n - 1).sum())
}

/// A real broker's nack (a full queue that rejects publishes) is tried again
/// promptly on a fresh channel: once room is made, the message goes out in
/// seconds, not after the route's default retry interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_is_retried_promptly_on_a_fresh_channel() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_queue(&conn, "fo-full", full).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = route(
        dir.path(),
        &[format!("amqp://127.0.0.1:{}/%2f", broker.port)],
        "",
        "fo-full",
    );
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let (status, resp) = relay.inject("s@x.com", &["a@amqp".into()], "first").await;
    assert_eq!(status, 200, "{resp}");
    relay
        .await_metric("amqp_relay_delivered_total", 1.0, Duration::from_secs(30))
        .await;
    // The queue is full: the broker nacks the second message.
    let (status, resp) = relay.inject("s@x.com", &["b@amqp".into()], "second").await;
    assert_eq!(status, 200, "{resp}");
    relay
        .await_metric(
            "amqp_relay_broker_nacks_total{broker=\"127.0.0.1:5672\"}",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    // Room is made; the prompt retry (on a fresh channel) delivers it.
    let made_room = Instant::now();
    let got = consume(&conn, "fo-full", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].data, b"first");
    let got = consume(&conn, "fo-full", 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    assert_eq!(got[0].data, b"second");
    assert!(
        made_room.elapsed() < Duration::from_secs(10),
        "{:?}",
        made_room.elapsed()
    );
    assert!(
        relay
            .metric("amqp_relay_broker_channels_retired_total{broker=\"127.0.0.1:5672\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        relay.metric("amqp_relay_transient_failures_total").await,
        0.0,
        "not left to the retry interval"
    );
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 2.0);
}
