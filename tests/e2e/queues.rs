//! Queues come and go: 100,000 distinct queue names passing through leave
//! the relay's memory, its task count and its queue count where they were.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

/// Injects `n` messages, each to a domain of its own, and waits until all
/// are delivered and every queue has been dropped as idle.
async fn pass_through(relay: &Relay, from: usize, n: usize) {
    // The relay's own client: one keep-alive connection, so no connection
    // task of a dropped client is still winding down when tasks are counted.
    for start in (from..from + n).step_by(100) {
        let rcpts: Vec<_> = (start..start + 100)
            .map(|i| serde_json::json!({"email": format!("u@d{i}.q")}))
            .collect();
        let req = serde_json::json!({"envelope_sender": "s@example.com", "content": "x", "recipients": rcpts});
        let (status, resp) = relay.inject_raw(req.to_string()).await;
        assert_eq!(status, 200, "{resp}");
    }
    relay
        .await_metric(
            "amqp_relay_delivered_total",
            (from + n) as f64,
            Duration::from_secs(600),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.metric("amqp_relay_queues").await > 0.0 {
        assert!(Instant::now() < deadline, "idle queues were not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_queues_pass_through_and_leave_nothing_behind() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "many-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("any_domain.lua"),
        &[("URL", &broker.url()), ("QUEUE", "many-q")],
    );
    let relay = Relay::start_with_env(
        &policy,
        &dir.path().join("spool"),
        &[("AMQP_RELAY_QUEUE_IDLE", "500ms")],
    );
    let idle_tasks = relay.metric("amqp_relay_tasks").await;
    pass_through(&relay, 0, 20_000).await;
    let (rss_20k, tasks_20k) = (relay.rss_kib(), relay.metric("amqp_relay_tasks").await);
    pass_through(&relay, 20_000, 80_000).await;
    let (rss_100k, tasks_100k) = (relay.rss_kib(), relay.metric("amqp_relay_tasks").await);
    eprintln!(
        "idle tasks {idle_tasks}; after 20,000 queues: RSS {rss_20k} KiB, {tasks_20k} tasks; \
         after 100,000: RSS {rss_100k} KiB, {tasks_100k} tasks"
    );
    assert!(
        tasks_100k <= tasks_20k + 2.0,
        "tasks grow with queues seen: {tasks_20k} -> {tasks_100k}"
    );
    assert!(
        tasks_100k <= idle_tasks + 4.0,
        "tasks left behind: {idle_tasks} -> {tasks_100k}"
    );
    // The spool's page cache (16 MiB) is still filling after 20,000
    // messages; beyond it 8 MiB of slack, so a leak of ~100 bytes per queue
    // seen still fails.
    assert!(
        rss_100k <= rss_20k + 24 * 1024,
        "memory grows with queues seen: {rss_20k} -> {rss_100k} KiB"
    );
    let got = consume(&conn, "many-q", 100_000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 100_000);
}
