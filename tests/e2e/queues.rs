//! Queues come and go: 100,000 distinct queue names passing through leave
//! the relay's memory, its task count and its queue count where they were.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

/// At most this many injected and not yet delivered: how many queues are
/// live at once then depends on this, not on how fast the machine is, so the
/// allocator's high-water mark is the same in every burst.
const IN_FLIGHT: usize = 5_000;

/// Injects `n` messages, each to a domain of its own, and waits until all
/// are delivered and every queue has been dropped as idle.
async fn pass_through(relay: &Relay, from: usize, n: usize) {
    // The relay's own client: one keep-alive connection, so no connection
    // task of a dropped client is still winding down when tasks are counted.
    for start in (from..from + n).step_by(100) {
        if start >= IN_FLIGHT && start % 1_000 == 0 {
            let want = (start - IN_FLIGHT) as f64;
            relay
                .await_metric("amqp_relay_delivered_total", want, Duration::from_secs(600))
                .await;
        }
        let rcpts: Vec<_> = (start..start + 100)
            .map(|i| serde_json::json!({"email": format!("u@d{i}.q")}))
            .collect();
        let req = serde_json::json!({"envelope_sender": "s@example.com", "content": "x", "recipients": rcpts});
        let (status, resp) = relay.inject_raw(req.to_string()).await;
        assert_eq!(status, 200, "{resp}");
    }
    relay
        .await_metric(
            "amqp_relay_delivered_total",
            (from + n) as f64,
            Duration::from_secs(600),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.metric("amqp_relay_queues").await > 0.0 {
        assert!(Instant::now() < deadline, "idle queues were not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.metric("amqp_relay_active_messages").await, 0.0);
    assert_eq!(relay.metric("amqp_relay_spooled_messages").await, 0.0);
}

/// The relay's RSS once the allocator has returned what it frees lazily:
/// the lowest of samples taken until one is not below the one before.
async fn settled_rss(relay: &Relay) -> u64 {
    let mut last = relay.rss_kib();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = relay.rss_kib();
        if now >= last {
            return last;
        }
        last = now;
    }
    last
}

/// Waits until the relay's tasks are down to `most` (sessions and
/// connections of dropped queues wind down on their own); fails if they stay
/// above it, as tasks kept per queue seen would.
async fn settle_tasks(relay: &Relay, most: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = relay.metric("amqp_relay_tasks").await;
        if tasks <= most {
            return tasks;
        }
        assert!(
            Instant::now() < deadline,
            "tasks left behind: {tasks}, expected at most {most}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_queues_pass_through_and_leave_nothing_behind() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "many-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("any_domain.lua"),
        &[("URL", &broker.url()), ("QUEUE", "many-q")],
    );
    let relay = setup
        .relay()
        .envs(
            // A small spool cache: its filling would otherwise hide a leak.
            &[
                ("AMQP_RELAY_QUEUE_IDLE", "500ms"),
                ("AMQP_RELAY_SPOOL_CACHE", "1MiB"),
                // Each worker's allocator heap keeps pages of its own; a fixed
                // count keeps the figures alike on machines of any size.
                ("AMQP_RELAY_WORKER_THREADS", "2"),
            ],
        )
        .start();
    let idle_tasks = relay.metric("amqp_relay_tasks").await;
    // A larger burst first, so the allocator's high-water mark (set by how
    // many queues are live at once) is behind us; then three equal bursts,
    // between which nothing may grow.
    pass_through(&relay, 0, 40_000).await;
    settle_tasks(&relay, idle_tasks + 4.0).await;
    pass_through(&relay, 40_000, 30_000).await;
    let tasks_70k = settle_tasks(&relay, idle_tasks + 4.0).await;
    let rss_70k = settled_rss(&relay).await;
    pass_through(&relay, 70_000, 30_000).await;
    let tasks_100k = settle_tasks(&relay, idle_tasks + 4.0).await;
    let rss_100k = settled_rss(&relay).await;
    pass_through(&relay, 100_000, 30_000).await;
    settle_tasks(&relay, idle_tasks + 4.0).await;
    let rss_130k = settled_rss(&relay).await;
    pass_through(&relay, 130_000, 30_000).await;
    settle_tasks(&relay, idle_tasks + 4.0).await;
    let rss_160k = settled_rss(&relay).await;
    let seen = 160_000;
    let rss = [rss_70k, rss_100k, rss_130k, rss_160k];
    eprintln!(
        "idle tasks {idle_tasks}; RSS after 70,000, 100,000, 130,000, 160,000 queues: {rss:?} KiB \
         ({tasks_70k} and {tasks_100k} tasks after the first two)"
    );
    // RSS after a burst swings by 10–18 MB with what the allocator and the Lua
    // states' collectors happen to hold (measured: 93, 109, 104, 106, 108, 108,
    // 100 MB over 250,000 queues; 105 → 123 → 119 MB and 131 → 135 → 149 MB
    // in CI runs), without a trend. A leak grows with every burst: three
    // bursts of 30,000 queues in a row each growing by more than 4 MiB fails
    // (a leak of ~140 bytes per queue seen; two in a row happened by chance),
    // and so does more than 32 MiB over all three, whatever the order.
    let grew = |from: u64, to: u64| to.saturating_sub(from);
    let least = rss.windows(2).map(|w| grew(w[0], w[1])).min();
    assert!(
        least.is_some_and(|g| g <= 4 * 1024),
        "memory grows with every burst of queues: {rss:?} KiB"
    );
    assert!(
        grew(rss_70k, rss_160k) <= 32 * 1024,
        "memory grows with queues seen: {rss:?} KiB"
    );
    let got = consume(&conn, "many-q", seen, Duration::from_secs(60)).await;
    assert_eq!(got.len(), seen);
}
