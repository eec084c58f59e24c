//! KumoMTA's `policy-extras.listener_domains` and `policy-extras.queue`
//! over SMTP, with a real client and broker: relaying decided per domain,
//! tenant and campaign taken from headers into the queue name.

use crate::broker::Broker;
use crate::harness::*;
use crate::smtp::Raw;
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

const LISTENER_DOMAINS: &str = r#"
["amqp"]
relay_to = true

["partner.example"]
relay_from = [ '127.0.0.1' ]

["www.amqp"]
relay_to = false
"#;

const QUEUE: &str = r#"
tenant_header = "X-Tenant"
remove_tenant_header = true
campaign_header = "X-Campaign"

[tenant.'acme']

[queue.default]
retry_interval = '1s'
protocol = { custom_lua = { constructor = 'make.amqp' } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_domains_and_queue_helper_drive_relaying_and_queue_names() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "helpers-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("listener_domains.toml"), LISTENER_DOMAINS).unwrap();
    std::fs::write(dir.path().join("queue.toml"), QUEUE).unwrap();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("kumo_helpers.lua"),
        &[
            ("DIR", dir.path().to_str().unwrap()),
            ("URL", &broker.url()),
            ("QUEUE", "helpers-q"),
        ],
    );
    let relay = Relay::start_init(&policy, &dir.path().join("spool"), 1);
    let mut c = Raw::connect(relay.smtp[0]).await;
    assert_eq!(c.cmd("EHLO client.test").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@elsewhere.example>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<one@amqp>").await.0, 250, "relay_to");
    let (code, text) = c.cmd("RCPT TO:<x@other.example>").await;
    assert_eq!(
        (code, text.contains("relaying denied")),
        (550, true),
        "{text}"
    );
    assert_eq!(
        c.cmd("RCPT TO:<x@www.amqp>").await.0,
        550,
        "relay_to = false"
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"X-Tenant: acme\r\nX-Campaign: spring\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    // relay_from: the sender's domain allows this client to relay anywhere.
    assert_eq!(c.cmd("MAIL FROM:<s@partner.example>").await.0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<x@other.example>").await.0,
        250,
        "relay_from"
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"X-Tenant: nobody\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 500, "an undefined tenant is refused: {text}");
    assert!(text.contains("tenant 'nobody'"), "{text}");

    let got = consume(&conn, "helpers-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    let queue = got[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("queue").cloned());
    assert_eq!(
        queue,
        Some(AMQPValue::LongString("spring:acme@amqp".into()))
    );
    let (_, sent) = split_received(&got[0].data);
    assert_eq!(sent, "X-Campaign: spring\r\nSubject: hi\r\n\r\nbody\r\n");
}
