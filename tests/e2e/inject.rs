//! The injection API's templating, as KumoMTA's: rendered per recipient
//! into the queue, and a broken template refused with 422.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templated_content_reaches_the_queue_rendered_per_recipient() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "templated-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("templated.lua"),
        &[("URL", &broker.url()), ("QUEUE", "templated-q")],
    );
    let relay = Relay::start(&policy, &dir.path().join("spool"));

    let broken = serde_json::json!({
        "envelope_sender": "noreply@example.com",
        "content": "Subject: {% if %}\r\n\r\nx",
        "recipients": [{"email": "a@amqp"}],
    });
    let (status, resp) = relay.inject_raw(broken.to_string()).await;
    assert_eq!(status, 422, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("syntax error"),
        "{resp}"
    );

    let req = serde_json::json!({
        "envelope_sender": "noreply@example.com",
        "content": "Subject: order {{ order }}\r\n\r\nHello {{ name }}, order {{ order }} for {{ email }}.\r\n",
        "substitutions": {"order": "A-1"},
        "recipients": [
            {"email": "ann@amqp", "name": "Ann", "metadata": {"cid": 42}},
            {"email": "bob@amqp", "name": "Bob", "substitutions": {"order": "B-2"}},
        ],
    });
    let (status, resp) = relay.inject_raw(req.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["success_count"], 2);
    let got = consume(&conn, "templated-q", 2, Duration::from_secs(30)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "Subject: order B-2\r\n\r\nHello Bob, order B-2 for bob@amqp.\r\n",
            "X-Cid: 42\r\nSubject: order A-1\r\n\r\nHello Ann, order A-1 for ann@amqp.\r\n",
        ],
        "relay log:\n{}",
        relay.log_text()
    );
    // Only the two rendered messages: the 422 queued nothing.
    assert!(
        consume(&conn, "templated-q", 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
}
