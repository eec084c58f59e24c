//! Admin over HTTP: queue summary, suspend and resume, bounce.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(
    relay: &Relay,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = c.request(method, relay.url(path));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn waiting(summary: &Value, queue: &str) -> (u64, bool) {
    let q = summary["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} in {summary}"));
    (
        q["scheduled"].as_u64().unwrap() + q["ready"].as_u64().unwrap(),
        q["suspended"].as_bool().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_summarise_bounce_resume() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "admin-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("modes.lua"),
        &[
            ("QUEUE", "admin-q"),
            ("URL", &broker.url()),
            ("MAX_AGE", "1h"),
        ],
    );
    let relay = setup.relay().start();
    use reqwest::Method;
    let (s, amqp) = call(
        &relay,
        Method::POST,
        "/api/admin/suspend/v1",
        Some(json!({"domain": "amqp", "reason": "maintenance"})),
    )
    .await;
    assert_eq!(s, 200, "{amqp}");
    let (s, _) = call(
        &relay,
        Method::POST,
        "/api/admin/suspend/v1",
        Some(json!({"domain": "other", "reason": "maintenance"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, list) = call(&relay, Method::GET, "/api/admin/suspend/v1", None).await;
    assert_eq!(list["suspensions"].as_array().unwrap().len(), 2);

    assert_eq!(
        relay
            .inject("s@x.com", &recipients("a", "amqp", 5), "to amqp")
            .await
            .0,
        200
    );
    assert_eq!(
        relay
            .inject("s@x.com", &recipients("o", "other", 3), "to other")
            .await
            .0,
        200
    );
    let (_, summary) = call(&relay, Method::GET, "/api/admin/queue-summary/v1", None).await;
    assert_eq!(waiting(&summary, "amqp"), (5, true), "{summary}");
    assert_eq!(waiting(&summary, "other"), (3, true), "{summary}");
    assert_eq!(relay.metric("amqp_relay_delivered_total").await, 0.0);

    let (s, report) = call(
        &relay,
        Method::POST,
        "/api/admin/bounce/v1",
        Some(json!({"domain": "other", "reason": "unwanted"})),
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["total_bounced"], 3);
    assert_eq!(report["bounced"]["other"], 3);
    assert_eq!(relay.metric("amqp_relay_bounced_total").await, 3.0);

    let id = amqp["id"].as_str().unwrap();
    let (s, _) = call(
        &relay,
        Method::DELETE,
        "/api/admin/suspend/v1",
        Some(json!({"id": id})),
    )
    .await;
    assert_eq!(s, 200);
    let got = consume(&conn, "admin-q", 5, Duration::from_secs(30)).await;
    assert_eq!(
        got.len(),
        5,
        "resumed queue delivers; log:\n{}",
        relay.log_text()
    );
    assert!(got.iter().all(|d| d.data == b"to amqp"));

    let (s, _) = call(
        &relay,
        Method::DELETE,
        "/api/admin/suspend/v1",
        Some(json!({"id": "nope"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, err) = call(
        &relay,
        Method::POST,
        "/api/admin/bounce/v1",
        Some(json!({"domain": "amqp"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(err["error"].as_str().unwrap().contains("reason"), "{err}");
}

