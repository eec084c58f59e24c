//! Temporary failures are retried; old messages expire.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_and_lua_errors_are_retried_then_delivered() {
    const N: usize = 20;
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "retry-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "retry-q"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    let relay = setup.relay().start();
    for mode in ["reject-once", "error-once", "with-timeout"] {
        let body = format!("X-Mode: {mode}\r\n\r\n{mode}");
        let (status, resp) = relay
            .inject("s@example.com", &recipients(mode, "amqp", N), &body)
            .await;
        assert_eq!(status, 200, "{resp}");
    }
    let got = consume(&conn, "retry-q", 3 * N, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 3 * N, "relay log:\n{}", relay.log_text());
    // Each message failed exactly once before it went through.
    assert_eq!(
        relay.metric("amqp_relay_transient_failures_total").await,
        (2 * N) as f64
    );
    relay
        .await_metric(
            "amqp_relay_delivered_total",
            (3 * N) as f64,
            Duration::from_secs(10),
        )
        .await;
    let log = relay.log_text();
    assert!(
        log.contains("not yet") && log.contains("boom on the first try"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_older_than_max_age_expires() {
    const N: usize = 5;
    let broker = Broker::shared();
    let setup = Setup::new(
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "never"),
            ("URL", &broker.url()),
            ("MAX_AGE", "3s"),
        ],
    );
    let relay = setup.relay().start();
    let (status, _) = relay
        .inject(
            "s@example.com",
            &recipients("old", "amqp", N),
            "X-Mode: always-reject\r\n\r\nx",
        )
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric(
            "amqp_relay_expired_total",
            N as f64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 0.0);
    assert!(relay.metric("amqp_relay_transient_failures_total").await >= N as f64);
}
