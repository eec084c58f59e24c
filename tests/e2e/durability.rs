//! Nothing acknowledged is lost: not by kill -9 of the relay, not by a broker outage.

use crate::broker::{Broker, free_port};
use crate::harness::*;
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_ack_loses_nothing() {
    const N: usize = 300;
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "kill9-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "kill9-q"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    // First life: the broker URL points at a closed port, so nothing can be delivered.
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let relay = Relay::start_with_env(&policy, &spool, &[("BROKER_URL", &nowhere)]);
    let mut bodies = HashSet::new();
    for i in 0..N / 50 {
        let body = format!("Subject: k{i}\r\n\r\nkill9 {i}");
        let (status, resp) = relay
            .inject(
                "s@example.com",
                &recipients(&format!("k{i}-"), "amqp", 50),
                &body,
            )
            .await;
        assert_eq!(status, 200, "{resp}");
        bodies.insert(body);
    }
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 0.0);
    relay.kill9();

    // Second life, same spool, reachable broker: every acknowledged message arrives.
    let relay = Relay::start(&policy, &spool);
    let got = consume(&conn, "kill9-q", N, Duration::from_secs(60)).await;
    assert_eq!(got.len(), N, "relay log:\n{}", relay.log_text());
    let seen: HashSet<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    assert_eq!(seen, bodies);
    assert!(relay.stop(), "relay exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_delays_but_loses_nothing() {
    const N: usize = 200;
    let broker = tokio::task::spawn_blocking(Broker::private).await.unwrap();
    let conn = broker.connect().await;
    declare_queue(&conn, "outage-q", FieldTable::default()).await;
    drop(conn);
    let setup = Setup::new(
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "outage-q"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    let relay = setup.relay().start();
    // Warm up: one message through, so a pooled connection exists and must break.
    let (status, _) = relay
        .inject("s@example.com", &["warm@amqp".to_string()], "warm")
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric("amqp_relay_delivered_total", 1.0, Duration::from_secs(30))
        .await;
    assert_eq!(
        relay.metric("amqp_relay_delivery_send_seconds_count").await,
        1.0,
        "one message, one send timed"
    );

    let broker = kill_broker(broker).await;
    for i in 0..N / 50 {
        let (status, resp) = relay
            .inject(
                "s@example.com",
                &recipients(&format!("o{i}-"), "amqp", 50),
                &format!("outage {i}"),
            )
            .await;
        assert_eq!(status, 200, "accepted while the broker is down: {resp}");
    }
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 1.0);

    let broker = restart_broker(broker).await;
    let conn = broker.connect().await;
    let got = consume(&conn, "outage-q", N + 1, Duration::from_secs(90)).await;
    assert_eq!(got.len(), N + 1, "relay log:\n{}", relay.log_text());
    relay
        .await_metric(
            "amqp_relay_delivered_total",
            (N + 1) as f64,
            Duration::from_secs(10),
        )
        .await;
}
