//! The relay's own log records: through a log hook to RabbitMQ, and into
//! rotated local log segments (plain and zstd).

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

async fn send_mail(addr: std::net::SocketAddr, n: usize) {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build();
    for i in 0..n {
        let m = Message::builder()
            .from("sender@example.com".parse().unwrap())
            .to(format!("user{i}@amqp").parse().unwrap())
            .subject(format!("hooked {i}"))
            .body(String::from("body\n"))
            .unwrap();
        t.send(m).await.expect("SMTP accepted");
    }
}

/// Records from the hook queue, by message id → types seen.
fn records(got: &[lapin::message::Delivery]) -> HashMap<String, Vec<serde_json::Value>> {
    let mut by_id: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for d in got {
        assert_eq!(
            d.data.last(),
            Some(&b'\n'),
            "a record is JSON plus a newline"
        );
        let r: serde_json::Value = serde_json::from_slice(&d.data).expect("valid JSON");
        by_id
            .entry(r["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    by_id
}

fn read_segments(dir: &Path) -> (usize, Vec<serde_json::Value>) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let text = if f.extension().is_some_and(|e| e == "zst") {
            zstd::decode_all(raw.as_slice()).expect("a complete zstd segment")
        } else {
            raw
        };
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).expect("a JSON line"));
        }
    }
    (files.len(), out)
}

async fn run(level: &str, broker: &Broker, queues: (&str, &str)) -> (tempfile::TempDir, Relay) {
    let conn = broker.connect().await;
    declare_queue(&conn, queues.0, FieldTable::default()).await;
    declare_queue(&conn, queues.1, FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs").display().to_string();
    let port = broker.port.to_string();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("log_hook.lua"),
        &[
            ("MAIL_Q", queues.0),
            ("LOG_Q", queues.1),
            ("LOGS", &logs),
            ("PORT", &port),
            ("LEVEL", level),
        ],
    );
    let relay = Relay::start_init(&policy, &dir.path().join("spool"), 1);
    (dir, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reception_and_delivery_records_reach_rabbitmq_and_local_logs() {
    const N: usize = 3;
    let broker = Broker::shared();
    let (dir, relay) = run("3", broker, ("hook-mail-q", "hook-log-q")).await;
    send_mail(relay.smtp[0], N).await;
    let conn = broker.connect().await;
    let mail = consume(&conn, "hook-mail-q", N, Duration::from_secs(30)).await;
    assert_eq!(mail.len(), N);
    // Exactly two records per message: the hook's own messages are not hooked again.
    let got = consume(&conn, "hook-log-q", 2 * N, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2 * N, "relay log:\n{}", relay.log_text());
    assert!(
        got.iter()
            .all(|d| d.properties.content_type().as_ref().map(|c| c.as_str())
                == Some("application/json"))
    );
    let by_id = records(&got);
    assert_eq!(by_id.len(), N);
    for recs in by_id.values() {
        let types: Vec<&str> = recs.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert!(
            types.contains(&"Reception") && types.contains(&"Delivery"),
            "{types:?}"
        );
        for r in recs {
            assert_eq!(r["sender"], "sender@example.com");
            assert!(r["recipient"].as_str().unwrap().ends_with("@amqp"));
            assert_eq!(r["queue"], "amqp");
            assert_eq!(r["reception_protocol"], "ESMTP");
            assert!(
                r["headers"]["Subject"]
                    .as_str()
                    .unwrap()
                    .starts_with("hooked ")
            );
            assert_eq!(r["meta"]["reception_protocol"], "ESMTP");
            assert!(r["timestamp"].is_u64() && r["created"].is_u64() && r["size"].is_u64());
            assert!(r["nodeid"].is_string(), "{r}");
        }
        // As KumoMTA's custom_lua path logs a delivery (its lua_deliver.rs):
        // code 200, the text send returned, the Lua peer.
        let delivery = recs.iter().find(|r| r["type"] == "Delivery").unwrap();
        assert_eq!(delivery["response"]["code"], 200, "{delivery}");
        assert_eq!(delivery["response"]["content"], "250 mail published");
        assert_eq!(delivery["delivery_protocol"], "Lua");
        assert_eq!(delivery["peer_address"]["name"], "Lua via make.mail");
        // And a reception as its SMTP listener does: the EHLO name and the peer.
        let reception = recs.iter().find(|r| r["type"] == "Reception").unwrap();
        assert_eq!(reception["response"]["code"], 250);
        assert_eq!(
            reception["peer_address"]["addr"], "127.0.0.1",
            "{reception}"
        );
        assert!(
            !reception["peer_address"]["name"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        for r in recs {
            let t: jiff::Timestamp = r["event_time"].as_str().unwrap().parse().unwrap();
            assert_eq!(t.as_second() as u64, r["timestamp"].as_u64().unwrap());
            assert!(
                r["created_time"]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .is_ok()
            );
        }
    }
    relay
        .await_metric(
            "amqp_relay_delivered_total",
            (3 * N) as f64,
            Duration::from_secs(10),
        )
        .await;
    let extra = consume(&conn, "hook-log-q", 1, Duration::from_secs(2)).await;
    assert!(
        extra.is_empty(),
        "records about hook messages were hooked: {extra:?}"
    );
    assert!(relay.stop(), "clean shutdown closes the last segment");

    // Local logs: small segments rotated, each a complete zstd frame, every event there.
    let (segments, lines) = read_segments(&dir.path().join("logs"));
    assert!(segments > 1, "rotated into {segments} segment(s)");
    let count = |t: &str| lines.iter().filter(|r| r["type"] == t).count();
    // N mails and 2N hook messages, each received and delivered.
    assert_eq!(count("Reception"), 3 * N, "{lines:?}");
    assert_eq!(count("Delivery"), 3 * N, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_only_delays_log_records() {
    const N: usize = 2;
    let broker = tokio::task::spawn_blocking(Broker::private).await.unwrap();
    let (dir, relay) = run("0", &broker, ("outage-mail-q", "outage-log-q")).await;
    let broker = kill_broker(broker).await;
    send_mail(relay.smtp[0], N).await;
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    let broker = restart_broker(broker).await;
    let conn = broker.connect().await;
    assert_eq!(
        consume(&conn, "outage-mail-q", N, Duration::from_secs(60))
            .await
            .len(),
        N
    );
    let got = consume(&conn, "outage-log-q", 2 * N, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2 * N, "relay log:\n{}", relay.log_text());
    let by_id = records(&got);
    assert_eq!(by_id.len(), N);
    // Plain segments are readable as they are.
    assert!(relay.stop());
    let (_, lines) = read_segments(&dir.path().join("logs"));
    assert!(
        lines.iter().any(|r| r["type"] == "TransientFailure"),
        "the outage is in the local log"
    );
}
