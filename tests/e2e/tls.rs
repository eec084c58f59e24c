//! kumo.amqp over TLS, with a CA file, and refusing an untrusted certificate.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_ca_file_delivers_and_an_unknown_ca_is_refused() {
    let broker = tokio::task::spawn_blocking(Broker::private_tls)
        .await
        .unwrap();
    let conn = broker.connect().await;
    declare_queue(&conn, "tls-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let tls_port = broker.tls_port.unwrap().to_string();
    let ca = broker.ca_file().display().to_string();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("tls.lua"),
        &[("QUEUE", "tls-q"), ("TLS_PORT", &tls_port), ("CA", &ca)],
    );
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    for domain in ["client", "basic"] {
        let (status, resp) = relay
            .inject(
                "s@example.com",
                &recipients(domain, domain, 5),
                &format!("via {domain}"),
            )
            .await;
        assert_eq!(status, 200, "{resp}");
    }
    let got = consume(&conn, "tls-q", 10, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 10, "relay log:\n{}", relay.log_text());

    let (status, _) = relay
        .inject("s@example.com", &["u@untrusted".to_string()], "x")
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 10.0);
    let log = relay.log_text();
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    assert!(
        !log.contains("guest:guest"),
        "passwords are redacted in logs"
    );
}
