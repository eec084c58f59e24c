//! Scale-in strands nothing: a stopping relay drains its spool first, and
//! what it cannot deliver (the broker down) `amqp-relay drain` delivers from
//! the spool it left once the broker is back.

use crate::broker::{Broker, free_port};
use crate::harness::*;
use crate::held::{assert_exactly_once, bodies_of, routed_policy_retrying};
use lapin::types::FieldTable;
use std::path::Path;
use std::time::{Duration, Instant};

fn nowhere() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port())
}

fn report(spool: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(spool.join("spool-report.json")).expect("a spool report");
    serde_json::from_str(&text).unwrap()
}

/// Every one of `bodies` is in `queue`, once, and nothing else.
async fn delivered_once(conn: &lapin::Connection, queue: &str, bodies: &[String], tag: &str) {
    let got = consume(conn, queue, bodies.len(), Duration::from_secs(10)).await;
    let extra = consume(conn, queue, 1, Duration::from_millis(300)).await;
    let delivered: Vec<String> = bodies_of(&got)
        .into_iter()
        .chain(bodies_of(&extra))
        .collect();
    assert_exactly_once(bodies, &delivered, tag);
}

/// `n` messages, one per request, acknowledged; returns their bodies.
async fn inject_each(relay: &Relay, tag: &str, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for i in 0..n {
        let body = format!("{tag}{i}");
        let (status, resp) = relay
            .inject("s@example.com", &[format!("{tag}{i}@amqp")], &body)
            .await;
        assert_eq!(status, 200, "{resp}");
        bodies.push(body);
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_reception_and_delivers_what_the_spool_holds() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "drain-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // The broker is unreachable while the mail comes in.
    let policy = routed_policy_retrying(dir.path(), true, "drain-q", &nowhere(), "1s");
    let relay = Relay::start_with_env(&policy, &spool, &[("AMQP_RELAY_DRAIN_TIMEOUT", "60s")]);
    assert_eq!(report(&spool)["state"], "running");
    let bodies = inject_each(&relay, "d", 20).await;
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            20.0,
            Duration::from_secs(30),
        )
        .await;

    relay.terminate();
    relay
        .await_metric("amqp_relay_draining", 1.0, Duration::from_secs(10))
        .await;
    // Draining: not ready, no new mail, still answering health and metrics.
    assert_eq!(
        reqwest::get(relay.url("/readyz")).await.unwrap().status(),
        503
    );
    let (status, resp) = relay
        .inject("s@example.com", &["late@amqp".to_string()], "late")
        .await;
    assert_eq!(status, 503, "{resp}");
    assert!(
        reqwest::get(relay.url("/api/check-liveness/v1"))
            .await
            .unwrap()
            .status()
            .is_success()
    );

    // The broker comes back (the route is pointed at it): the drain delivers all, then the relay exits.
    routed_policy_retrying(dir.path(), true, "drain-q", &broker.url(), "1s");
    let started = Instant::now();
    let clean = tokio::task::spawn_blocking(move || relay.wait())
        .await
        .unwrap();
    assert!(clean, "a clean exit after the drain");
    assert!(started.elapsed() < Duration::from_secs(60));
    delivered_once(&conn, "drain-q", &bodies, "d").await;
    let r = report(&spool);
    assert_eq!(
        (r["state"].as_str(), r["left"].as_u64(), r["drain"].as_str()),
        (Some("stopped"), Some(0), Some("empty")),
        "{r}"
    );
}

/// A scale-in while the broker is down: the stopping relay cannot deliver
/// and says what it left; `drain` on its spool, with the broker back,
/// delivers every message (retries planned an hour out are tried at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_left_by_a_scale_in_with_the_broker_down_is_drained_when_it_returns() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "scale-in-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let down = dir.path().join("down");
    std::fs::create_dir_all(&down).unwrap();
    let policy = routed_policy_retrying(&down, true, "scale-in-q", &nowhere(), "1h");
    let relay = Relay::start_with_env(&policy, &spool, &[("AMQP_RELAY_DRAIN_TIMEOUT", "30s")]);
    let bodies = inject_each(&relay, "s", 30).await;
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            30.0,
            Duration::from_secs(30),
        )
        .await;
    let stopped = Instant::now();
    assert!(
        tokio::task::spawn_blocking(move || relay.stop())
            .await
            .unwrap()
    );
    // Nothing could go out before the deadline: the relay did not wait for it.
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    let r = report(&spool);
    assert_eq!(
        (r["state"].as_str(), r["left"].as_u64(), r["drain"].as_str()),
        (Some("stopped"), Some(30), Some("undeliverable")),
        "{r}"
    );
    assert_eq!(r["queues"]["amqp"], 30, "{r}");

    // A drain while the broker is still down: mail left, said in the exit code.
    let (code, out, log) = drain(&policy, &spool, &[("AMQP_RELAY_DRAIN_JOB_TIMEOUT", "3s")]);
    assert_eq!(code, 3, "{out}\n{log}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["left"], 30, "{r}");

    // The broker is back: everything goes out, once.
    let up = dir.path().join("up");
    std::fs::create_dir_all(&up).unwrap();
    let policy = routed_policy_retrying(&up, true, "scale-in-q", &broker.url(), "1h");
    let (code, out, log) = drain(&policy, &spool, &[("AMQP_RELAY_DRAIN_JOB_TIMEOUT", "60s")]);
    assert_eq!(code, 0, "{out}\n{log}");
    delivered_once(&conn, "scale-in-q", &bodies, "s").await;
    let r = report(&spool);
    assert_eq!(
        (r["left"].as_u64(), r["drain"].as_str()),
        (Some(0), Some("empty")),
        "{r}"
    );
}
