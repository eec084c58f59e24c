//! A long broker outage: how much memory a backlog costs, how fast the relay
//! comes back with it spooled, and how fast it drains, each beside the
//! normal end-to-end rate measured in the same run.
//!
//! 1. Normal rate: a fresh relay, the operator-rendered route (16 connections,
//!    batches of 100), `NORMAL` 1 KiB messages HTTP-injected and delivered to
//!    a durable queue on a private RabbitMQ node.
//! 2. Outage as it happens: a relay whose route points at a port that
//!    refuses connections. Every message is attempted, fails and waits on the
//!    spool for its retry (the route's default interval); RSS, live tasks and
//!    messages in memory once all of 10,000, 100,000 and `BACKLOG` (default
//!    1,000,000) have failed their attempt.
//! 3. Outage held: a relay whose queue is suspended (no attempts, so every
//!    message is due when the broker returns); RSS at the same marks; spool
//!    bytes per message.
//! 4. Recovery: kill -9 and restart (time until the listener accepts, the
//!    spool repaired), then SIGTERM, the route pointed at the live broker and
//!    a restart on the same spool: time until the listener accepts, until the
//!    first message reaches the broker, and the drain rate as a ratio to (1)
//!    over the first `NORMAL` messages (the broker's queue as deep as in (1):
//!    a classic queue slows as it grows) and over the whole backlog.
//!
//! Targets: refusing broker: RSS <= 64 MB at 1,000,000 and <= 1.2x the RSS
//! at 10,000, tasks bounded by queues x connection limit; held outage: RSS
//! <= 128 MB and <= 1.5x; listener <= 2 s; first delivery <= 3 s; drain
//! >= 0.9x normal.
//!
//! Run: `cargo bench --bench backlog` (BACKLOG=N for another size;
//! SCENARIO=refusing to stop after (2)).

#[path = "common/relay_log.rs"]
mod relay_log;

#[path = "common/relay_proc.rs"]
#[allow(dead_code)] // each bench uses a part
mod relay_proc;

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code)]
mod broker;

use relay_proc::*;
use std::path::Path;
use std::time::{Duration, Instant};

const NORMAL: usize = 100_000;
const QUEUE: &str = "bench-backlog";

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

async fn suspend(http: &str) {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/admin/suspend/v1"))
        .json(&serde_json::json!({"domain": "amqp", "reason": "broker outage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// Polls liveness until the listener answers.
async fn await_accepting(http: &str) {
    let client = reqwest::Client::new();
    loop {
        let ok = client
            .get(format!("http://{http}/api/check-liveness/v1"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until every one of `n` messages has failed an attempt and none is
/// held in memory (the relay's own counters, polled).
async fn await_attempted(http: &str, n: usize) {
    let start = Instant::now();
    loop {
        let failed = metric(http, "amqp_relay_transient_failures_total").await;
        let active = metric(http, "amqp_relay_active_messages").await;
        if failed >= n as f64 && active == 0.0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{failed} of {n} attempted, {active} still in memory after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A broker that refuses connections (the outage that happens): RSS, live
/// tasks and messages in memory once every message has failed its attempt.
async fn refusing(dir: &Path, backlog: usize) {
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker::free_port());
    let (policy, _) = rendered_policy(dir, "refusing", &nowhere, QUEUE, 100, 16);
    let (relay, _) = start_relay(&policy, &dir.join("spool-refusing"));
    println!("Broker refusing connections (route: 16 connections, default retry interval):");
    let mut queued = 0;
    let mut rss = Vec::new();
    for mark in [10_000, 100_000, backlog] {
        if mark <= queued {
            continue;
        }
        let t = Instant::now();
        inject_all(&relay.http, mark - queued, &format!("r{mark}-")).await;
        let rate = (mark - queued) as f64 / t.elapsed().as_secs_f64();
        queued = mark;
        await_attempted(&relay.http, mark).await;
        let r = rss_kib(relay.pid());
        let tasks = metric(&relay.http, "amqp_relay_tasks").await;
        println!(
            "  {mark:>9} queued, all attempted: RSS {:7.1} MB, {tasks:.0} tasks alive  (accepted at {rate:.0} msg/s)",
            r as f64 / 1024.0
        );
        rss.push((mark, r));
    }
    let at = |n: usize| {
        rss.iter()
            .find(|(m, _)| *m == n)
            .map(|(_, r)| *r as f64 / 1024.0)
    };
    let (small, large) = (at(10_000).unwrap(), at(backlog).unwrap());
    println!(
        "Refusing broker: RSS {large:.1} MB at {backlog} queued (target <= 64), {:.2}x the RSS at 10,000 (target <= 1.2)",
        large / small
    );
    assert!(relay.stop(), "the relay exits cleanly on SIGTERM");
}

#[tokio::main]
async fn main() {
    let backlog: usize = std::env::var("BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let broker = tokio::task::spawn_blocking(broker::Broker::private)
        .await
        .unwrap();
    let conn = broker.connect().await;
    let dir = tempfile::tempdir().unwrap();

    // 1. The normal end-to-end rate.
    let (live, _) = rendered_policy(dir.path(), "live", &broker.url(), QUEUE, 100, 16);
    fresh_queue(&conn, QUEUE).await;
    let (relay, _) = start_relay(&live, &dir.path().join("spool-normal"));
    let cpu0 = cpu_secs(&relay.pid().to_string());
    let start = Instant::now();
    inject_all(&relay.http, NORMAL, "n").await;
    await_depth(&conn, QUEUE, NORMAL as u32, Duration::from_secs(600)).await;
    let normal = NORMAL as f64 / start.elapsed().as_secs_f64();
    let normal_cpu = (cpu_secs(&relay.pid().to_string()) - cpu0) * 1e6 / NORMAL as f64;
    assert!(relay.stop(), "the relay exits cleanly on SIGTERM");
    println!(
        "Normal end to end, {NORMAL} x 1 KiB: {normal:.0} msg/s (relay CPU {normal_cpu:.0} us/msg)"
    );

    // 2. The outage as it happens: the broker refuses connections.
    refusing(dir.path(), backlog).await;
    if std::env::var("SCENARIO").is_ok_and(|s| s == "refusing") {
        return;
    }

    // 3. The outage held: everything acknowledged stays spooled, unattempted.
    fresh_queue(&conn, QUEUE).await;
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker::free_port());
    let (policy, url_file) = rendered_policy(dir.path(), "outage", &nowhere, QUEUE, 100, 16);
    let spool = dir.path().join("spool-outage");
    let (relay, _) = start_relay(&policy, &spool);
    suspend(&relay.http).await;
    println!("Outage held (queue suspended, nothing attempted):");
    let idle = rss_kib(relay.pid());
    let mut queued = 0;
    let mut rss = Vec::new();
    for mark in [10_000, 100_000, backlog] {
        if mark > queued {
            let t = Instant::now();
            inject_all(&relay.http, mark - queued, &format!("b{mark}-")).await;
            let rate = (mark - queued) as f64 / t.elapsed().as_secs_f64();
            queued = mark;
            let r = rss_kib(relay.pid());
            println!(
                "  {mark:>9} queued: RSS {:7.1} MB  (accepted at {rate:.0} msg/s)",
                r as f64 / 1024.0
            );
            rss.push((mark, r));
        }
    }
    let spool_bytes = dir_bytes(&spool);
    // A crash first: the next open must repair the database. That relay
    // waits for a routes ConfigMap it cannot read, so it attempts nothing.
    drop(relay);
    let crashed = Instant::now();
    let waiting = [
        ("AMQP_RELAY_POLICY_CONFIGMAP", "bench/none"),
        ("KUBECONFIG", "/nonexistent"),
    ];
    let (relay, _) = start_relay_env(&policy, &spool, &waiting);
    await_accepting(&relay.http).await;
    let after_crash = crashed.elapsed();
    let stopped = Instant::now();
    assert!(relay.stop(), "the relay exits cleanly on SIGTERM");
    let stop_time = stopped.elapsed();
    let rss_at = |n: usize| {
        rss.iter()
            .find(|(m, _)| *m == n)
            .map(|(_, r)| *r as f64 / 1024.0)
    };
    let (small, large) = (rss_at(10_000).unwrap(), rss_at(backlog).unwrap());
    println!(
        "Outage: RSS idle {:.1} MB; {large:.1} MB at {backlog} queued (target <= 128), {:.2}x the RSS at 10,000 (target <= 1.5)",
        idle as f64 / 1024.0,
        large / small
    );
    println!(
        "Spool: {:.1} MB on disk for {backlog} messages, {:.0} bytes per message",
        spool_bytes as f64 / 1e6,
        spool_bytes as f64 / backlog as f64,
    );
    println!(
        "After kill -9 with {backlog} spooled: accepting after {:.2} s (the spool is repaired on open); SIGTERM to exit {:.2} s",
        after_crash.as_secs_f64(),
        stop_time.as_secs_f64()
    );

    // 4. The broker is back: restart on the same spool.
    std::fs::write(&url_file, broker.url()).unwrap();
    let restarted = Instant::now();
    let (relay, _) = start_relay(&policy, &spool);
    await_accepting(&relay.http).await;
    let accepting = restarted.elapsed();
    while depth(&conn, QUEUE).await == 0 {
        assert!(
            restarted.elapsed() < Duration::from_secs(120),
            "nothing delivered two minutes after the restart"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = restarted.elapsed();
    let rss_restart = rss_kib(relay.pid());
    let cpu0 = cpu_secs(&relay.pid().to_string());
    // The same span of broker queue depth as the normal run, then the rest.
    let like_normal = NORMAL.min(backlog);
    await_depth(&conn, QUEUE, like_normal as u32, Duration::from_secs(3600)).await;
    let early = restarted.elapsed();
    let drain_cpu = (cpu_secs(&relay.pid().to_string()) - cpu0) * 1e6 / like_normal as f64;
    let early_rate = like_normal as f64 / (early - first).as_secs_f64();
    await_depth(&conn, QUEUE, backlog as u32, Duration::from_secs(3600)).await;
    let drained = restarted.elapsed();
    let drain = backlog as f64 / (drained - first).as_secs_f64();
    let rss_drained = rss_kib(relay.pid());
    println!(
        "Restart with {backlog} spooled: accepting after {:.2} s (target <= 2), first delivery after {:.2} s (target <= 3)",
        accepting.as_secs_f64(),
        first.as_secs_f64()
    );
    println!(
        "Drain of the first {like_normal} (the broker queue as deep as in the normal run): {early_rate:.0} msg/s = {:.2}x the normal rate (target >= 0.9), relay CPU {drain_cpu:.0} us/msg",
        early_rate / normal
    );
    println!(
        "Drain of all {backlog}: {drain:.0} msg/s = {:.2}x (the broker slows as its queue grows); RSS {:.1} MB when the first went out, {:.1} MB after the drain",
        drain / normal,
        rss_restart as f64 / 1024.0,
        rss_drained as f64 / 1024.0
    );
    assert!(relay.stop(), "the relay exits cleanly on SIGTERM");
}
