//! How custom_lua sessions form: per-connection limits, and batches.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashMap;
use std::time::Duration;

fn header(d: &lapin::message::Delivery, key: &str) -> AMQPValue {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
        .unwrap_or_else(|| panic!("header {key} missing"))
}

fn int(v: AMQPValue) -> i64 {
    match v {
        AMQPValue::LongLongInt(i) => i,
        other => panic!("not an integer: {other:?}"),
    }
}

async fn run(
    queue: &str,
    batch: usize,
    max: usize,
    n: usize,
) -> (Relay, Vec<lapin::message::Delivery>, tempfile::TempDir) {
    run_on(Broker::shared(), queue, batch, max, n).await
}

async fn run_on(
    broker: &Broker,
    queue: &str,
    batch: usize,
    max: usize,
    n: usize,
) -> (Relay, Vec<lapin::message::Delivery>, tempfile::TempDir) {
    let conn = broker.connect().await;
    declare_queue(&conn, queue, FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (b, m) = (batch.to_string(), max.to_string());
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("sessions.lua"),
        &[
            ("QUEUE", queue),
            ("URL", &broker.url()),
            ("BATCH", &b),
            ("MAX", &m),
        ],
    );
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let (status, resp) = relay
        .inject("s@example.com", &recipients(queue, "amqp", n), "body")
        .await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, queue, n, Duration::from_secs(60)).await;
    assert_eq!(got.len(), n, "relay log:\n{}", relay.log_text());
    (relay, got, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_after_max_deliveries_per_connection() {
    const MAX: usize = 7;
    let (_relay, got, _dir) = run("sessions-max", 1, MAX, 50).await;
    let mut per_session: HashMap<String, usize> = HashMap::new();
    for d in &got {
        let AMQPValue::LongString(sid) = header(d, "session") else {
            panic!()
        };
        *per_session.entry(sid.to_string()).or_default() += 1;
        assert!(int(header(d, "n")) as usize <= MAX);
        assert_eq!(
            int(header(d, "batch")),
            1,
            "batch_size 1 calls send, one message each"
        );
    }
    assert!(per_session.values().all(|&c| c <= MAX), "{per_session:?}");
    assert!(
        per_session.len() >= 50usize.div_ceil(MAX),
        "{per_session:?}"
    );
}

/// The sessions of one queue publish on one shared confirm-mode channel, so
/// the broker acknowledges their messages together (`multiple` acks), and
/// each `confirm:wait()` still returns its own message's result: every
/// message arrives once, each session's running count is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_sessions_share_one_channel() {
    let broker = Broker::private();
    let (_relay, got, _dir) = run_on(&broker, "sessions-shared", 1, 1000, 300).await;
    let mut per_session: HashMap<String, Vec<i64>> = HashMap::new();
    for d in &got {
        let AMQPValue::LongString(sid) = header(d, "session") else {
            panic!()
        };
        per_session
            .entry(sid.to_string())
            .or_default()
            .push(int(header(d, "n")));
    }
    assert_eq!(
        per_session.len(),
        2,
        "connection_limit 2: two sessions at once"
    );
    for counts in per_session.values_mut() {
        counts.sort();
        assert_eq!(*counts, (1..=counts.len() as i64).collect::<Vec<_>>());
    }
    let channels = broker.ctl_output(&["list_channels", "confirm"]);
    let confirming = channels.lines().filter(|l| l.trim() == "true").count();
    assert_eq!(
        confirming, 1,
        "one confirm channel for the queue's sessions:\n{channels}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_calls_send_batch() {
    let (_relay, got, _dir) = run("sessions-batch", 10, 1000, 100).await;
    let sizes: Vec<i64> = got.iter().map(|d| int(header(d, "batch"))).collect();
    assert!(sizes.iter().all(|&s| (1..=10).contains(&s)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&s| s > 1),
        "messages waiting together go in one batch: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_start_fails_only_what_it_took() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "flaky-start-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let dir_name = dir.path().display().to_string();
    let setup = Setup::in_dir(
        dir,
        &crate::policy_template("flaky_start.lua"),
        &[
            ("QUEUE", "flaky-start-q"),
            ("URL", &broker.url()),
            ("DIR", &dir_name),
        ],
    );
    let relay = setup.relay().start();
    // One session connects and stays (idle_timeout 60s).
    let (status, _) = relay
        .inject("s@example.com", &["warm@amqp".to_string()], "warm")
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric("amqp_relay_delivered_total", 1.0, Duration::from_secs(30))
        .await;
    // The next session to start fails; the others keep delivering.
    std::fs::write(setup.path().join("fail-next"), "").unwrap();
    let (status, _) = relay
        .inject("s@example.com", &recipients("flaky", "amqp", 200), "many")
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric("amqp_relay_delivered_total", 200.0, Duration::from_secs(30))
        .await;
    assert!(
        !setup.path().join("fail-next").exists(),
        "a session start failed: the test exercised it"
    );
    assert_eq!(
        relay.metric("amqp_relay_transient_failures_total").await,
        1.0,
        "only the message the failed session took is deferred; log:\n{}",
        relay.log_text()
    );
}
