//! The headline figures, each beside a baseline measured in the same run, on
//! one private RabbitMQ node (port 5672, which the seed policy's
//! `amqp://localhost` reaches):
//!
//! 1. Throughput: (a) a raw lapin publisher, up to 1,000 unconfirmed in
//!    flight, persistent 1 KiB messages to a durable classic queue, the
//!    broker's limit here; (b) the relay end to end (HTTP inject in batches of
//!    100 → spool → Lua → confirmed publish) with the operator-rendered
//!    policy; (c) the same with the seed policy verbatim. Targets: b/a >= 0.9.
//! 2. Latency from HTTP 200 to the message reaching a consumer, at half of
//!    (b)'s rate: p50/p99 (target p99 <= 25 ms).
//! 3. Footprint: relay RSS idle and with 100,000 queued 1 KiB messages while
//!    the broker is unreachable (targets 64 MB, 256 MB), and the time to
//!    re-queue them on restart (target <= 2 s).
//!
//! Run: `cargo bench --bench throughput`

#[path = "common/relay_log.rs"]
mod relay_log;

#[path = "../tests/e2e/broker.rs"]
#[allow(dead_code)]
mod broker;

use amqp_relay::operator::crd::AmqpRoute;
use amqp_relay::operator::render::render;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const N: usize = 20_000;
const PER_REQUEST: usize = 100;
const CLIENTS: usize = 4;

fn body() -> String {
    format!("Subject: bench\r\n\r\n{}\r\n", "x".repeat(1000))
}

async fn fresh_queue(conn: &Connection, name: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn depth(conn: &Connection, name: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = ch.close(200, "ok".into()).await;
    q.message_count()
}

async fn raw_publisher(conn: &Connection, broker: &broker::Broker) -> (f64, String) {
    fresh_queue(conn, "bench-raw").await;
    let cpu0 = Cpu::now(broker);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let payload = body().into_bytes();
    let props = BasicProperties::default().with_delivery_mode(2);
    let start = Instant::now();
    let mut inflight = VecDeque::new();
    for _ in 0..N {
        if inflight.len() >= 1000 {
            let c: lapin::PublisherConfirm = inflight.pop_front().unwrap();
            assert!(c.await.unwrap().is_ack());
        }
        let c = ch
            .basic_publish(
                "".into(),
                "bench-raw".into(),
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
    let rate = N as f64 / start.elapsed().as_secs_f64();
    (rate, cpu0.report(broker, None))
}

struct Relay {
    child: Child,
    http: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(policy: &Path, spool: &Path) -> (Relay, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-relay"))
        .args(["relay", "--http-listen", "127.0.0.1:0", "--policy"])
        .arg(policy)
        .arg("--data-dir")
        .arg(spool)
        .env("RUST_LOG", "warn,amqp_relay::listeners=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = relay_log::listener_addr(&mut child, "http");
    (Relay { child, http }, started.elapsed())
}

async fn inject_all(http: &str, n: usize, tag: &str) {
    let client = reqwest::Client::new();
    let body = body();
    let requests = n / PER_REQUEST;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, http, body, tag) = (
            client.clone(),
            http.to_owned(),
            body.clone(),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            for r in (c..requests).step_by(CLIENTS) {
                let rcpts: Vec<_> = (0..PER_REQUEST)
                    .map(|i| serde_json::json!({"email": format!("{tag}{r}-{i}@amqp")}))
                    .collect();
                let req = serde_json::json!({"envelope_sender": "b@example.com", "content": body, "recipients": rcpts});
                let resp = client.post(format!("http://{http}/api/inject/v1")).json(&req).send().await.unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn relay_rate(
    conn: &Connection,
    broker: &broker::Broker,
    policy: &Path,
    queue: &str,
    dir: &Path,
) -> (f64, String) {
    fresh_queue(conn, queue).await;
    let (relay, _) = start_relay(policy, &dir.join(format!("spool-{queue}")));
    let cpu0 = Cpu::now(broker);
    let start = Instant::now();
    inject_all(&relay.http, N, queue).await;
    while depth(conn, queue).await < N as u32 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = N as f64 / start.elapsed().as_secs_f64();
    (rate, cpu0.report(broker, Some(relay.child.id())))
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

    /// CPU µs per message since `now`: broker, this process, and the relay.
    fn report(&self, broker: &broker::Broker, relay: Option<u32>) -> String {
        let per = |s: f64| s * 1e6 / N as f64;
        let relay = relay.map_or(String::new(), |pid| {
            format!(", relay {:.0}", per(cpu_secs(&pid.to_string())))
        });
        format!(
            "CPU us/msg: broker {:.0}, bench {:.0}{relay}",
            per(cpu_secs(&broker.beam_pid().unwrap()) - self.broker),
            per(cpu_secs("self") - self.bench),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// User + system CPU time the process has used so far.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rendered_policy(dir: &Path, url: &str, queue: &str) -> std::path::PathBuf {
    let spec = serde_json::json!({
        "match": {"domain": "amqp"},
        "broker": {"urlSecretRef": {"name": "rabbit", "key": "url"}},
        "publish": {"routingKey": queue},
        "delivery": {"batchSize": std::env::var("BS").map(|v| v.parse::<u32>().unwrap()).unwrap_or(100), "connectionLimit": std::env::var("CL").map(|v| v.parse::<u32>().unwrap()).unwrap_or(16)}
    });
    let mut r = AmqpRoute::new("bench", serde_json::from_value(spec).unwrap());
    r.metadata.namespace = Some("bench".into());
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("rabbit".into());
    secret.metadata.namespace = Some("bench".into());
    secret.string_data = Some([("url".to_string(), url.to_string())].into());
    let secrets_dir = dir.join(format!("secrets-{queue}"));
    let out = render(&[r], &[secret], &secrets_dir.display().to_string());
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    std::fs::create_dir_all(&secrets_dir).unwrap();
    for (k, v) in &out.secret {
        std::fs::write(secrets_dir.join(k), v).unwrap();
    }
    let path = dir.join(format!("routes-{queue}.lua"));
    std::fs::write(&path, out.policy).unwrap();
    path
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
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

    let rendered = rendered_policy(dir.path(), &broker.url(), "bench-rendered");
    let seed = dir.path().join("seed.lua");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies/seed.lua"),
        &seed,
    )
    .unwrap();
    // Rounds alternate the three so drift on this shared machine hits each alike.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!("Throughput, {N} persistent 1 KiB messages, durable classic queue, {rounds} rounds:");
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (ra, ca) = raw_publisher(&conn, broker).await;
        let (rb, cb) = relay_rate(&conn, broker, &rendered, "bench-rendered", dir.path()).await;
        let (rc, cc) = relay_rate(&conn, broker, &seed, "logging", dir.path()).await;
        println!(
            "  round {round}: a {ra:6.0}  b {rb:6.0}  c {rc:6.0} msg/s  b/a {:.2}  c/a {:.2}",
            rb / ra,
            rc / ra
        );
        println!("           a {ca}\n           b {cb}\n           c {cc}");
        a.push(ra);
        b.push(rb);
        c.push(rc);
    }
    let (a, b, c) = (median(a), median(b), median(c));
    println!("Medians:");
    println!(
        "  (a) raw lapin publisher, <= 1000 confirms in flight: {a:8.0} msg/s  (the broker's limit here)"
    );
    println!(
        "  (b) relay, HTTP inject -> spool -> rendered policy:  {b:8.0} msg/s  b/a = {:.2} (target >= 0.9)",
        b / a
    );
    println!(
        "  (c) relay, the seed policy verbatim:                 {c:8.0} msg/s  c/a = {:.2}",
        c / a
    );

    if std::env::var("STOP").is_ok() {
        return;
    }
    let (p50, p99) = latency(&conn, &rendered, "bench-rendered", dir.path(), b / 2.0).await;
    println!(
        "Latency, HTTP 200 -> consumer, at {:.0} msg/s (half of b): p50 {:.1} ms, p99 {:.1} ms (target p99 <= 25 ms)",
        b / 2.0,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );

    // Footprint: a broker that cannot be reached, so everything stays queued.
    let nowhere = rendered_policy(
        dir.path(),
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker::free_port()),
        "never",
    );
    let spool = dir.path().join("spool-footprint");
    let (relay, _) = start_relay(&nowhere, &spool);
    let idle = rss_kib(relay.child.id());
    inject_all(&relay.http, 100_000, "f").await;
    let loaded = rss_kib(relay.child.id());
    drop(relay);
    let (relay, startup) = start_relay(&nowhere, &spool);
    let after = rss_kib(relay.child.id());
    println!(
        "Footprint: RSS idle {:.1} MB (target <= 64), with 100,000 queued {:.1} MB (target <= 256), after re-queueing them {:.1} MB",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!(
        "Restart with 100,000 spooled: listeners open after {:.2} s (re-queue included; target <= 2 s)",
        startup.as_secs_f64()
    );
}
