//! The broker behind a TCP proxy that drops and stalls connections, and a
//! broker killed mid-stream: the relay recovers by itself, nothing is lost.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASS: u8 = 0;
const DROP: u8 = 1;
const STALL: u8 = 2;

/// Forwards to `upstream`; DROP closes every connection and refuses new ones,
/// STALL stops moving bytes (connections stay open, silent).
struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let generation = Arc::new(AtomicU64::new(0));
        let (m, g) = (mode.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = l.accept().await.unwrap();
                if m.load(Ordering::Acquire) == DROP {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = g.load(Ordering::Acquire);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, m.clone(), g.clone(), born));
                tokio::spawn(pump(sr, cw, m.clone(), g.clone(), born));
            }
        });
        Proxy {
            addr,
            mode,
            generation,
        }
    }

    fn set(&self, mode: u8) {
        if mode == DROP {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.mode.store(mode, Ordering::Release);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A short read timeout so a DROP is noticed on idle connections too.
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => 0,
        };
        loop {
            if generation.load(Ordering::Acquire) != born {
                return; // dropped: both halves go away
            }
            if mode.load(Ordering::Acquire) != STALL {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if n > 0 && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn stream(relay: &Relay, from: usize, to: usize, acked: &mut HashSet<usize>) {
    for start in (from..to).step_by(100) {
        let rcpts: Vec<String> = (start..start + 100).map(|i| format!("c{i}@amqp")).collect();
        let (status, resp) = relay.inject("s@x.com", &rcpts, "proxy").await;
        assert_eq!(status, 200, "{resp}");
        acked.extend(start..start + 100);
    }
}

async fn all_arrive(conn: &lapin::Connection, queue: &str, acked: &HashSet<usize>, relay: &Relay) {
    let mut seen = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acked.iter().any(|i| !seen.contains(i)) {
        assert!(
            std::time::Instant::now() < deadline,
            "missing {}; log:\n{}",
            acked.len() - seen.len(),
            relay.log_text()
        );
        for d in consume(
            conn,
            queue,
            acked.len() - seen.len(),
            Duration::from_secs(5),
        )
        .await
        {
            let id = d.properties.message_id().as_ref().unwrap().to_string();
            seen.insert(
                id.trim_start_matches('c')
                    .trim_end_matches("@amqp")
                    .parse::<usize>()
                    .unwrap(),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_stalled_connections_heal_without_restart() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "proxy-q", FieldTable::default()).await;
    let proxy = Proxy::start(([127, 0, 0, 1], broker.port).into()).await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.addr.port());
    let setup = Setup::new(
        &crate::policy_template("chaos.lua"),
        &[("QUEUE", "proxy-q"), ("URL", &url)],
    );
    let relay = setup.relay().start();
    let mut acked = HashSet::new();
    stream(&relay, 0, 1000, &mut acked).await;
    proxy.set(DROP);
    stream(&relay, 1000, 1500, &mut acked).await;
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    proxy.set(PASS);
    stream(&relay, 1500, 2000, &mut acked).await;
    proxy.set(STALL);
    stream(&relay, 2000, 2500, &mut acked).await;
    let before = relay.metric("amqp_relay_transient_failures_total").await;
    relay
        .await_metric(
            "amqp_relay_transient_failures_total",
            before + 1.0,
            Duration::from_secs(30),
        )
        .await;
    proxy.set(PASS);
    stream(&relay, 2500, 3000, &mut acked).await;
    all_arrive(&conn, "proxy-q", &acked, &relay).await;
    relay
        .await_log(
            &["did not finish within", "timed out"],
            Duration::from_secs(10),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_loses_nothing() {
    let broker = tokio::task::spawn_blocking(Broker::private).await.unwrap();
    let conn = broker.connect().await;
    declare_queue(&conn, "midstream-q", FieldTable::default()).await;
    drop(conn);
    let setup = Setup::new(
        &crate::policy_template("chaos.lua"),
        &[("QUEUE", "midstream-q"), ("URL", &broker.url())],
    );
    let relay = setup.relay().start();
    let mut acked = HashSet::new();
    stream(&relay, 0, 1500, &mut acked).await;
    let broker = kill_broker(broker).await;
    stream(&relay, 1500, 3000, &mut acked).await;
    let broker = restart_broker(broker).await;
    let conn = broker.connect().await;
    all_arrive(&conn, "midstream-q", &acked, &relay).await;
}
