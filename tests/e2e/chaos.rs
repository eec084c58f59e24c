//! Chaos: the relay killed at random moments under load, and policies whose
//! `send` throws, spins, stalls or returns garbage.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_sends_are_bounded_retried_and_never_wedge_the_queue() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "misbehave-q", FieldTable::default()).await;
    // Accepts connections and never says a word.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_port = stall.local_addr().unwrap().port().to_string();
    let setup = Setup::new(
        &crate::policy_template("misbehave.lua"),
        &[
            ("QUEUE", "misbehave-q"),
            ("URL", &broker.url()),
            ("STALL_PORT", &stall_port),
        ],
    );
    let relay = setup.relay().start();
    let modes = ["throw", "spin", "stall", "garbage", "none"];
    for mode in modes {
        let (status, resp) = relay
            .inject(
                "s@x.com",
                &recipients(mode, "amqp", 3),
                &format!("X-Mode: {mode}\r\n\r\n{mode}"),
            )
            .await;
        assert_eq!(status, 200, "{resp}");
    }
    let got = consume(&conn, "misbehave-q", 15, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 15, "relay log:\n{}", relay.log_text());
    // Each misbehaving message failed at least once (12 of them), then went
    // through. A spinning policy holds a worker thread until its time limit,
    // so a session start may time out meanwhile and add failures.
    assert!(relay.metric("amqp_relay_transient_failures_total").await >= 12.0);
    let log = relay.log_text();
    assert!(log.contains("time limit"), "the spin was stopped: {log}");
    assert!(
        log.contains("did not finish within"),
        "the stall was bounded: {log}"
    );
    assert!(
        log.contains("instead of a string"),
        "the garbage was named: {log}"
    );
    drop(stall);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_under_load_loses_nothing() {
    const N: usize = 20_000;
    const PER: usize = 100;
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "chaos-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("chaos.lua"),
        &[("QUEUE", "chaos-q"), ("URL", &broker.url())],
    );
    let mut rng = fastrand::Rng::with_seed(20_000);
    let client = reqwest::Client::new();
    let mut relay = Relay::start(&policy, &spool);
    let mut acked: Vec<usize> = Vec::new();
    // Five random kill points, by count of accepted messages.
    let kill_at: Vec<usize> = (0..5)
        .map(|k| k * N / 6 + rng.usize(N / 12..N / 6))
        .collect();
    let mut kills = 0;
    let mut next = 0usize;
    while acked.len() < N {
        // Four requests in flight, so a kill lands mid-request too.
        let mut batch = Vec::new();
        for _ in 0..4 {
            let ids: Vec<usize> = (next..next + PER).collect();
            next += PER;
            let body = serde_json::json!({
                "envelope_sender": "s@x.com",
                "content": "chaos",
                "recipients": ids.iter().map(|i| serde_json::json!({"email": format!("c{i}@amqp")})).collect::<Vec<_>>(),
            });
            let (c, url) = (client.clone(), relay.url("/api/inject/v1"));
            batch.push((
                ids,
                tokio::spawn(async move {
                    c.post(url)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                }),
            ));
        }
        if kills < kill_at.len() && acked.len() >= kill_at[kills] {
            // A random instant while those requests are on their way.
            tokio::time::sleep(Duration::from_micros(rng.u64(0..3000))).await;
            relay.kill9();
            kills += 1;
            relay = Relay::start(&policy, &spool);
        }
        for (ids, h) in batch {
            if let Ok(Ok(200)) = h.await {
                acked.extend(ids);
            }
        }
    }
    assert_eq!(kills, 5);

    // Collect until every acknowledged id arrived (or time runs out), then drain what else comes.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let missing = |seen: &HashMap<String, usize>| {
        acked
            .iter()
            .filter(|i| !seen.contains_key(&format!("c{i}@amqp")))
            .count()
    };
    loop {
        let want = missing(&seen);
        let quiet = if want == 0 {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let got = consume(&conn, "chaos-q", want.max(1), quiet).await;
        for d in &got {
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            *seen.entry(id).or_default() += 1;
        }
        if want == 0 && got.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        if want == 0 {
            continue;
        }
    }
    let lost = missing(&seen);
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let unacked_delivered = seen.len() - acked.len().min(seen.len());
    println!(
        "chaos: {} acknowledged across 5 kill -9s; lost {lost}; duplicates {duplicates}; delivered though never acknowledged {unacked_delivered}",
        acked.len()
    );
    assert_eq!(
        lost,
        0,
        "acknowledged messages lost; relay log:\n{}",
        relay.log_text()
    );
}
