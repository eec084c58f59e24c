//! The headline figures, each beside a baseline measured in the same run, on
//! one private RabbitMQ node (port 5672, which the seed policy's
//! `amqp://localhost` reaches):
//!
//! 1. Throughput, 1 KiB messages to a durable classic queue: (a) a raw lapin
//!    publisher, up to 1,000 unconfirmed in flight, persistent messages (the
//!    broker's disk is the limit); (t) the same with transient messages, which
//!    exposes the relay's own cost; (b) the relay end to end (HTTP inject in
//!    batches of 100 → spool → Lua → confirmed publish) with the
//!    operator-rendered route (persistent); (c) the same with the seed policy
//!    verbatim (transient). Each round prints the CPU µs per message of the
//!    broker, the client (this process) and the relay. Targets: b/a >= 0.9,
//!    c/t >= 0.7, the relay's CPU per message <= the broker's in (c).
//! 2. Latency from HTTP 200 to the message reaching a consumer, at half of
//!    (b)'s rate: p50/p99 (target p99 <= 25 ms).
//!
//! Memory with a backlog, restart and drain: `cargo bench --bench backlog`.
//!
//! Run: `cargo bench --bench throughput`

#[path = "common/relay_log.rs"]
mod relay_log;

#[path = "common/relay_proc.rs"]
#[allow(dead_code)] // each bench uses a part
mod relay_proc;

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code)]
mod broker;

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use relay_proc::*;
use std::collections::VecDeque;

use std::path::Path;
use std::time::{Duration, Instant};

/// Messages per run (`BENCH_N`, default 20,000; more for a longer profile).
static N: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
});

/// One run's rate and the CPU each process spent per message.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    broker_us: f64,
    bench_us: f64,
    relay_us: Option<f64>,
}

impl Run {
    fn cpu(&self) -> String {
        let relay = self
            .relay_us
            .map_or(String::new(), |r| format!(", relay {r:.1}"));
        format!(
            "CPU us/msg: broker {:.1}, client {:.1}{relay}",
            self.broker_us, self.bench_us
        )
    }
}

/// A raw lapin publisher, up to 1,000 confirms in flight, to a durable queue.
async fn raw_publisher(conn: &Connection, broker: &broker::Broker, persistent: bool) -> Run {
    let queue = if persistent {
        "bench-raw"
    } else {
        "bench-raw-t"
    };
    fresh_queue(conn, queue).await;
    let cpu0 = Cpu::now(broker);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let payload = body().into_bytes();
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let start = Instant::now();
    let mut inflight = VecDeque::new();
    for _ in 0..*N {
        if inflight.len() >= 1000 {
            let c: lapin::PublisherConfirm = inflight.pop_front().unwrap();
            assert!(c.await.unwrap().is_ack());
        }
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                props.clone(),
            )
            .await
            .unwrap();
        inflight.push_back(c);
    }
    for c in inflight {
        assert!(c.await.unwrap().is_ack());
    }
    let rate = *N as f64 / start.elapsed().as_secs_f64();
    cpu0.run(rate, broker, None)
}

async fn relay_rate(
    conn: &Connection,
    broker: &broker::Broker,
    policy: &Path,
    queue: &str,
    dir: &Path,
) -> Run {
    fresh_queue(conn, queue).await;
    // A fresh spool each run: a reused one would carry the last run's free pages.
    let spool = tempfile::tempdir_in(dir).unwrap();
    let (relay, _) = start_relay(policy, spool.path());
    let relay_cpu0 = cpu_secs(&relay.pid().to_string());
    let cpu0 = Cpu::now(broker);
    let start = Instant::now();
    inject_all(&relay.http, *N, queue).await;
    while depth(conn, queue).await < *N as u32 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = *N as f64 / start.elapsed().as_secs_f64();
    let relay_us = (cpu_secs(&relay.pid().to_string()) - relay_cpu0) * 1e6 / *N as f64;
    cpu0.run(rate, broker, Some(relay_us))
}

/// CPU time used by the broker and this process, to say where a run's cycles went.
struct Cpu {
    broker: f64,
    bench: f64,
}

impl Cpu {
    fn now(broker: &broker::Broker) -> Cpu {
        Cpu {
            broker: cpu_secs(&broker.beam_pid().unwrap()),
            bench: cpu_secs("self"),
        }
    }

    /// The run since `now`, with CPU µs per message of broker and this process.
    fn run(&self, rate: f64, broker: &broker::Broker, relay_us: Option<f64>) -> Run {
        let per = |s: f64| s * 1e6 / *N as f64;
        Run {
            rate,
            broker_us: per(cpu_secs(&broker.beam_pid().unwrap()) - self.broker),
            bench_us: per(cpu_secs("self") - self.bench),
            relay_us,
        }
    }
}

/// Medians of each figure over the rounds.
fn medians(runs: &[Run]) -> Run {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Run {
        rate: m(&|r| r.rate),
        broker_us: m(&|r| r.broker_us),
        bench_us: m(&|r| r.bench_us),
        relay_us: runs[0].relay_us.map(|_| m(&|r| r.relay_us.unwrap_or(0.0))),
    }
}

async fn latency(
    conn: &Connection,
    policy: &Path,
    queue: &str,
    dir: &Path,
    rate: f64,
) -> (Duration, Duration) {
    const M: usize = 2000;
    fresh_queue(conn, queue).await;
    let (relay, _) = start_relay(policy, &dir.join("spool-latency"));
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let received = tokio::spawn(async move {
        let mut at = vec![None; M];
        for _ in 0..M {
            let d = consumer.next().await.unwrap().unwrap();
            let i: usize = String::from_utf8_lossy(&d.data).trim().parse().unwrap();
            at[i] = Some(Instant::now());
        }
        at
    });
    let client = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut acked = Vec::with_capacity(M);
    let start = Instant::now();
    for i in 0..M {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let req = serde_json::json!({"envelope_sender": "b@example.com", "content": format!("{i}"), "recipients": [{"email": format!("l{i}@amqp")}]});
        let resp = client
            .post(format!("http://{}/api/inject/v1", relay.http))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        acked.push(Instant::now());
    }
    let at = received.await.unwrap();
    let mut lat: Vec<Duration> = at
        .iter()
        .zip(&acked)
        .map(|(r, a)| r.unwrap().saturating_duration_since(*a))
        .collect();
    lat.sort();
    (lat[M / 2], lat[M * 99 / 100])
}

#[tokio::main]
async fn main() {
    let broker = tokio::task::spawn_blocking(broker::Broker::shared)
        .await
        .unwrap();
    let conn = broker.connect().await;
    let dir = tempfile::tempdir().unwrap();

    let batch = std::env::var("BS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(100);
    let conns = std::env::var("CL")
        .map(|v| v.parse().unwrap())
        .unwrap_or(16);
    let (rendered, _) = rendered_policy(
        dir.path(),
        "rendered",
        &broker.url(),
        "bench-rendered",
        batch,
        conns,
    );
    let seed = dir.path().join("seed.lua");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies/seed.lua"),
        &seed,
    )
    .unwrap();
    // Rounds alternate the four so drift on this shared machine hits each alike.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "Throughput, {} 1 KiB messages to a durable classic queue, {rounds} rounds:",
        *N
    );
    let (mut a, mut t, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if let Ok(only) = std::env::var("ONLY") {
        // For profiling one variant: run it alone, round after round.
        for round in 1..=rounds {
            let r = match only.as_str() {
                "b" => relay_rate(&conn, broker, &rendered, "bench-rendered", dir.path()).await,
                "c" => relay_rate(&conn, broker, &seed, "logging", dir.path()).await,
                other => panic!("ONLY={other}: b or c"),
            };
            println!("  round {round}: {only} {:6.0} msg/s  {}", r.rate, r.cpu());
        }
        return;
    }
    for round in 1..=rounds {
        let ra = raw_publisher(&conn, broker, true).await;
        let rt = raw_publisher(&conn, broker, false).await;
        let rb = relay_rate(&conn, broker, &rendered, "bench-rendered", dir.path()).await;
        let rc = relay_rate(&conn, broker, &seed, "logging", dir.path()).await;
        println!(
            "  round {round}: a {:6.0}  t {:6.0}  b {:6.0}  c {:6.0} msg/s  b/a {:.2}  c/t {:.2}",
            ra.rate,
            rt.rate,
            rb.rate,
            rc.rate,
            rb.rate / ra.rate,
            rc.rate / rt.rate
        );
        for (name, r) in [("a", ra), ("t", rt), ("b", rb), ("c", rc)] {
            println!("           {name} {}", r.cpu());
        }
        a.push(ra);
        t.push(rt);
        b.push(rb);
        c.push(rc);
    }
    let (a, t, b, c) = (medians(&a), medians(&t), medians(&b), medians(&c));
    println!("Medians:");
    println!(
        "  (a) raw lapin publisher, persistent, <= 1000 confirms in flight: {:8.0} msg/s  {}",
        a.rate,
        a.cpu()
    );
    println!(
        "  (t) raw lapin publisher, transient, <= 1000 confirms in flight:  {:8.0} msg/s  {}",
        t.rate,
        t.cpu()
    );
    println!(
        "  (b) relay, HTTP inject -> spool -> rendered route (persistent):  {:8.0} msg/s  {}  b/a = {:.2} (target >= 0.9)",
        b.rate,
        b.cpu(),
        b.rate / a.rate
    );
    println!(
        "  (c) relay, the seed policy verbatim (transient):                 {:8.0} msg/s  {}  c/t = {:.2} (target >= 0.7)",
        c.rate,
        c.cpu(),
        c.rate / t.rate
    );
    let relay_c = c.relay_us.unwrap_or(f64::NAN);
    println!(
        "  (c) relay CPU per message {relay_c:.1} us vs the broker's {:.1} us: {:.2}x (target <= 1)",
        c.broker_us,
        relay_c / c.broker_us
    );

    if std::env::var("STOP").is_ok() {
        return;
    }
    let (p50, p99) = latency(&conn, &rendered, "bench-rendered", dir.path(), b.rate / 2.0).await;
    println!(
        "Latency, HTTP 200 -> consumer, at {:.0} msg/s (half of b): p50 {:.1} ms, p99 {:.1} ms (target p99 <= 25 ms)",
        b.rate / 2.0,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );
    println!("(Memory, restart and drain with a backlog: cargo bench --bench backlog)");
}
