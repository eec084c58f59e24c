//! A policy in the style of KumoMTA's current docs (`basic_publish`), and
//! the mandatory-return path of `client:publish`.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_publish_policy_delivers_1000() {
    const N: usize = 1000;
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "basic-publish", FieldTable::default()).await;
    let port = broker.port.to_string();
    let setup = Setup::new(
        &crate::policy_template("basic_publish.lua"),
        &[("QUEUE", "basic-publish"), ("PORT", &port)],
    );
    let relay = setup.relay().start();
    let mut sent = Vec::new();
    for i in 0..N / 100 {
        let body = format!("Subject: bp {i}\r\n\r\n{}\r\n", "x".repeat(i * 10));
        let (status, resp) = relay
            .inject(
                "s@example.com",
                &recipients(&format!("b{i}-"), "amqp", 100),
                &body,
            )
            .await;
        assert_eq!(status, 200, "{resp}");
        sent.extend(std::iter::repeat_n(body, 100));
    }
    let got = consume(&conn, "basic-publish", N, Duration::from_secs(120)).await;
    assert_eq!(got.len(), N, "relay log:\n{}", relay.log_text());
    let mut received: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
    // Properties from the policy reach the broker: persistent, with the relay's message id.
    assert!(got.iter().all(|d| d.properties.delivery_mode() == &Some(2)));
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|d| d.properties.message_id().clone().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), N, "every message carries its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_mandatory_publish_is_visible_to_lua() {
    let broker = Broker::shared();
    let setup = Setup::new(
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "unused"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    let relay = setup.relay().start();
    let (status, _) = relay
        .inject(
            "s@example.com",
            &["r@amqp".to_string()],
            "X-Mode: unroutable\r\n\r\nbody",
        )
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric("amqp_relay_bounced_total", 1.0, Duration::from_secs(30))
        .await;
    let log = relay.log_text();
    assert!(log.contains("NO_ROUTE") && log.contains("312"), "{log}");
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 0.0);
}
