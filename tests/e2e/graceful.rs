//! SIGTERM is a clean stop: what was sent is removed, what was not stays
//! spooled, so a restart delivers every acknowledged message exactly once.

use crate::broker::Broker;
use crate::harness::*;
use crate::held::{Stream, assert_exactly_once, routed_policy};
use lapin::types::FieldTable;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn wait_acked(stream: &Stream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.acked() < n {
        assert!(
            Instant::now() < deadline,
            "the stream stalled at {}",
            stream.acked()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_stream_then_restart_delivers_each_message_once() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "graceful-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let policy = routed_policy(dir.path(), true, "graceful-q", &broker.url());
    let relay = Relay::start(&policy, &spool);
    let http = Arc::new(Mutex::new(relay.http.to_string()));
    // Three injectors, so deliveries are under way at every moment.
    let streams: Vec<Stream> = ["g-a", "g-b", "g-c"]
        .into_iter()
        .map(|tag| Stream::start(http.clone(), tag, 20))
        .collect();
    for s in &streams {
        wait_acked(s, 200).await;
    }
    let stopped = Instant::now();
    let clean = tokio::task::spawn_blocking(move || relay.stop())
        .await
        .unwrap();
    assert!(clean, "the relay exits 0 on SIGTERM");
    assert!(
        stopped.elapsed() < Duration::from_secs(25),
        "stopped within the shutdown limit"
    );
    let relay = Relay::start(&policy, &spool);
    *http.lock().unwrap() = relay.http.to_string();
    let before: Vec<usize> = streams.iter().map(Stream::acked).collect();
    for (s, n) in streams.iter().zip(&before) {
        wait_acked(s, n + 100).await;
    }
    let mut acked = Vec::new();
    for s in streams {
        acked.extend(s.finish().await);
    }
    let got = consume(&conn, "graceful-q", acked.len(), Duration::from_secs(60)).await;
    let extra = consume(&conn, "graceful-q", 1, Duration::from_millis(500)).await;
    let delivered: Vec<String> = got
        .iter()
        .chain(&extra)
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    assert_exactly_once(&acked, &delivered, "g-");
    assert!(relay.stop());
}
