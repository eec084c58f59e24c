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
    let setup = Setup::new(
        &crate::policy_template("templated.lua"),
        &[("URL", &broker.url()), ("QUEUE", "templated-q")],
    );
    let relay = setup.relay().start();

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

/// KumoMTA's builder form: a MIME message assembled per recipient, with
/// the origin KumoMTA records in the meta and a `Received:` header when
/// the request asks for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_content_reaches_the_queue_as_mime() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "builder-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("templated.lua"),
        &[("URL", &broker.url()), ("QUEUE", "builder-q")],
    );
    let relay = setup.relay().start();
    let req = serde_json::json!({
        "envelope_sender": "noreply@example.com",
        "content": {
            "text_body": "Hi {{ name }}",
            "html_body": "<p>Hi {{ name }}</p>",
            "subject": "For {{ name }}",
            "from": {"email": "news@example.com", "name": "News"},
            "headers": {"X-Want-Origin": "yes"},
            "attachments": [{"data": "aGVsbG8=", "base64": true, "content_type": "text/plain", "file_name": "hello.txt"}]
        },
        "recipients": [{"email": "ann@amqp", "name": "Ann"}],
        "trace_headers": {"received_header": true, "supplemental_header": false},
    });
    let (status, resp) = relay.inject_raw(req.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    let got = consume(&conn, "builder-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    let m = mailparse::parse_mail(&got[0].data).unwrap();
    let h = |n: &str| {
        m.headers
            .iter()
            .find(|h| h.get_key_ref() == n)
            .map(|h| h.get_value())
    };
    assert_eq!(h("Subject").as_deref(), Some("For Ann"));
    assert_eq!(h("To").as_deref(), Some("\"Ann\" <ann@amqp>"));
    assert_eq!(h("X-Origin").as_deref(), Some("HTTP 127.0.0.1 127.0.0.1"));
    assert!(
        h("Received").unwrap().contains("(127.0.0.1) by"),
        "{:?}",
        h("Received")
    );
    assert_eq!(m.ctype.mimetype, "multipart/mixed");
    let alt = &m.subparts[0];
    assert_eq!(alt.ctype.mimetype, "multipart/alternative");
    assert_eq!(alt.subparts[1].get_body().unwrap(), "<p>Hi Ann</p>");
    assert_eq!(m.subparts[1].get_body_raw().unwrap(), b"hello");
}
