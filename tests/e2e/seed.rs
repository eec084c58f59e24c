//! The seed page's Lua, byte for byte.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

const MESSAGES: usize = 1000;
const PER_REQUEST: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policy_verbatim_delivers_then_bounces_a_nack() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "logging", FieldTable::default()).await;

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("seed.lua");
    std::fs::write(&policy, crate::seed_policy()).unwrap();
    let relay = Relay::start_smtp(&policy, &dir.path().join("spool"));

    // Distinct bodies (with a non-ASCII byte sequence) so content can be compared.
    let mut sent = Vec::new();
    let mut requests = Vec::new();
    for i in 0..MESSAGES / PER_REQUEST {
        let body = format!("Subject: seed {i}\r\nX-Test: é\r\n\r\nbody {i}\r\n");
        for _ in 0..PER_REQUEST {
            sent.push(body.clone());
        }
        requests.push((body, recipients(&format!("u{i}-"), "amqp", PER_REQUEST)));
    }
    let relay = std::sync::Arc::new(relay);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in requests.chunks(MESSAGES / PER_REQUEST / 4) {
        let chunk = chunk.to_vec();
        let relay = relay.clone();
        tasks.spawn(async move {
            for (body, rcpts) in chunk {
                let (status, resp) = relay.inject("sender@example.com", &rcpts, &body).await;
                assert_eq!(status, 200, "{resp}");
                assert_eq!(resp["success_count"], PER_REQUEST, "{resp}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    let got = consume(&conn, "logging", MESSAGES, Duration::from_secs(120)).await;
    let mut received: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    assert_eq!(received.len(), MESSAGES, "relay log:\n{}", relay.log_text());
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
    relay
        .await_metric(
            "amqp_relay_delivered_total",
            MESSAGES as f64,
            Duration::from_secs(10),
        )
        .await;

    // The same over SMTP, from a standard client.
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let smtp = relay.smtp[0];
    let mail = Message::builder()
        .from("sender@example.com".parse().unwrap())
        .to("user@amqp".parse().unwrap())
        .subject("seed over smtp")
        .body(String::from(
            "delivered by the seed policy
",
        ))
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .build()
        .send(mail)
        .await
        .expect("SMTP delivery accepted");
    let got = consume(&conn, "logging", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let body = String::from_utf8_lossy(&got[0].data);
    assert!(
        body.contains("Subject: seed over smtp")
            && body.contains("delivered by the seed policy\r\n"),
        "{body}"
    );
    // A domain the seed does not route is refused at DATA (the queue is
    // decided after the reception event, as in KumoMTA), naming the queue.
    let mut c = crate::smtp::Raw::connect(smtp).await;
    assert_eq!(c.cmd("HELO x").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<u@example.org>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let (code, text) = c.cmd("Subject: x\r\n\r\nx\r\n.").await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("queue example.org"), "{text}");

    // Other domains get the seed's `make_queue_config {}`: SMTP, which is refused at once.
    let (status, resp) = relay
        .inject(
            "s@example.com",
            &["who@example.net".to_string()],
            "Subject: x\r\n\r\nx",
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["errors"][0]
            .as_str()
            .unwrap()
            .contains("queue example.net"),
        "{resp}"
    );

    // A queue that refuses every publish: the broker Nacks, the seed rejects with 500 → bounce.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_queue(&conn, "logging", args).await;
    let (status, _) = relay
        .inject(
            "s@example.com",
            &["nack@amqp".to_string()],
            "Subject: nack\r\n\r\nx",
        )
        .await;
    assert_eq!(status, 200);
    relay
        .await_metric("amqp_relay_bounced_total", 1.0, Duration::from_secs(30))
        .await;
    // The bounce's log line names the Nack.
    relay.await_log(&["Nack"], Duration::from_secs(10)).await;
    assert_eq!(
        relay.metric("amqp_relay_delivered_total").await,
        (MESSAGES + 1) as f64
    );

    declare_queue(&conn, "logging", FieldTable::default()).await;
}
