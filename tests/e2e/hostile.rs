//! One request cannot exhaust a pod: the hostile requests of issue 24, each
//! sent several times at once, get a clear 4xx while the relay's peak RSS
//! stays under 128 MB and `/readyz` keeps answering within 100 ms.

use crate::broker::Broker;
use crate::harness::*;
use crate::held::routed_policy;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// 176 bytes of template: 100 MB made, then three times that.
const BOMB: &str = "{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a %}{{ b|length }}";

fn request(content: serde_json::Value, recipients: usize) -> String {
    let rcpts: Vec<_> = (0..recipients)
        .map(|i| serde_json::json!({"email": format!("h{i}@amqp")}))
        .collect();
    serde_json::json!({"envelope_sender": "s@example.com", "content": content, "recipients": rcpts})
        .to_string()
}

async fn post(relay: &Relay, body: String) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(relay.url("/api/inject/v1"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `/readyz` until `stop`; the slowest answer, in milliseconds.
fn probe(relay: &Relay, stop: Arc<AtomicBool>) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let slowest = Arc::new(AtomicU64::new(0));
    let (url, worst) = (relay.url("/readyz"), slowest.clone());
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        while !stop.load(Ordering::Acquire) {
            let t = Instant::now();
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            worst.fetch_max(t.elapsed().as_millis() as u64, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (task, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_a_clear_refusal_while_the_pod_stays_small_and_ready() {
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let policy = routed_policy(dir.path(), true, "hostile-q", &broker.url());
    let relay = Relay::start(&policy, &dir.path().join("spool"));
    let stop = Arc::new(AtomicBool::new(false));
    let (prober, slowest) = probe(&relay, stop.clone());

    // The template bomb, four at once: each refused as out of fuel.
    let bombs = (0..4).map(|_| post(&relay, request(serde_json::json!(BOMB), 1)));
    for (status, body) in futures_util::future::join_all(bombs).await {
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("fuel"), "{body}");
    }
    // A 1.3 MB attachment to 400 recipients, twice at once: refused from the
    // first message built, saying what to do.
    let attachment = "QUFB".repeat(1_300_000 / 3);
    let builder = serde_json::json!({"text_body": "hello",
        "attachments": [{"data": attachment, "base64": true, "content_type": "application/pdf", "file_name": "a.pdf"}]});
    let big = request(builder, 400);
    assert!(big.len() > 1_700_000, "{}", big.len());
    let bigs = (0..2).map(|_| post(&relay, big.clone()));
    for (status, body) in futures_util::future::join_all(bigs).await {
        assert_eq!(status, 413, "{body}");
        assert!(
            body.contains("400 recipients") && body.contains("fewer recipients"),
            "{body}"
        );
    }
    stop.store(true, Ordering::Release);
    prober.await.unwrap();

    let peak = relay.hwm_kib() / 1024;
    assert!(peak < 128, "peak RSS {peak} MB");
    let slowest = slowest.load(Ordering::Acquire);
    assert!(slowest < 100, "/readyz took {slowest} ms at worst");
    eprintln!("hostile requests: peak RSS {peak} MB, slowest /readyz {slowest} ms");
    // Nothing was taken in, and the memory came back: a normal request passes.
    assert_eq!(relay.metric("amqp_relay_received_total").await, 0.0);
    let (status, body) = post(
        &relay,
        request(serde_json::json!("Subject: ok\r\n\r\nok"), 3),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
