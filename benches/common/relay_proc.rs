//! Shared by the throughput and backlog benches: a relay process, HTTP
//! injection in batches, broker queue depth, a rendered route, and the
//! process figures (RSS, CPU time) read from /proc.

use amqp_relay::operator::crd::AmqpRoute;
use amqp_relay::operator::render::render;
use lapin::Connection;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PER_REQUEST: usize = 100;
pub const CLIENTS: usize = 4;

pub fn body() -> String {
    format!("Subject: bench\r\n\r\n{}\r\n", "x".repeat(1000))
}

pub struct Relay {
    pub child: Child,
    pub http: String,
}

impl Relay {
    /// SIGTERM, then waits for the exit; true when it exited cleanly.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay binary this build made, or `RELAY_BIN` (a control build to
/// compare against in the same conditions).
fn relay_binary() -> std::path::PathBuf {
    std::env::var_os("RELAY_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_amqp-relay").into(),
        std::path::PathBuf::from,
    )
}

/// Starts the relay; returns it once its HTTP listener is bound, with the time that took.
pub fn start_relay(policy: &Path, spool: &Path) -> (Relay, Duration) {
    start_relay_env(policy, spool, &[])
}

pub fn start_relay_env(policy: &Path, spool: &Path, env: &[(&str, &str)]) -> (Relay, Duration) {
    let started = Instant::now();
    let mut child = Command::new(relay_binary())
        .args(["relay", "--http-listen", "127.0.0.1:0", "--policy"])
        .arg(policy)
        .arg("--data-dir")
        .arg(spool)
        .env("RUST_LOG", "warn,amqp_relay::listeners=info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = super::relay_log::listener_addr(&mut child, "http");
    (Relay { child, http }, started.elapsed())
}

/// Injects `n` messages (`PER_REQUEST` recipients per request, `CLIENTS` connections).
pub async fn inject_all(http: &str, n: usize, tag: &str) {
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
                let resp = client
                    .post(format!("http://{http}/api/inject/v1"))
                    .json(&req)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

pub async fn fresh_queue(conn: &Connection, name: &str) {
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

pub async fn depth(conn: &Connection, name: &str) -> u32 {
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

/// Polls the broker queue until it holds `n` messages; panics after `limit`.
pub async fn await_depth(conn: &Connection, name: &str, n: u32, limit: Duration) {
    let start = Instant::now();
    while depth(conn, name).await < n {
        assert!(
            start.elapsed() < limit,
            "{name}: not all {n} delivered within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// User + system CPU seconds the process has used so far.
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, [user, system]) = stat_ticks(&stat).expect("a /proc stat line");
    (user + system) as f64 / TICKS_PER_SEC
}

/// The unit of /proc's CPU times (`getconf CLK_TCK`).
pub const TICKS_PER_SEC: f64 = 100.0;

/// A /proc `stat` line's command (thread) name and its user and system CPU
/// ticks (fields 14 and 15; the name, in parentheses, may hold spaces).
fn stat_ticks(stat: &str) -> Option<(String, [u64; 2])> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((name, [f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?]))
}

/// CPU ticks (user, system) of a process: all of it (exited threads
/// included), and its live threads summed by name.
pub struct ThreadTicks {
    pub total: [u64; 2],
    pub by_name: std::collections::HashMap<String, [u64; 2]>,
}

impl ThreadTicks {
    pub fn of(pid: u32) -> ThreadTicks {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let total = stat_ticks(&stat).expect("a /proc stat line").1;
        let mut by_name = std::collections::HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((name, [u, s])) = stat_ticks(&stat) {
                let sum: &mut [u64; 2] = by_name.entry(name).or_default();
                sum[0] += u;
                sum[1] += s;
            }
        }
        ThreadTicks { total, by_name }
    }

    /// User + system ticks of the threads named `name` (all, with `None`)
    /// since `before`.
    pub fn since(&self, before: &ThreadTicks, name: Option<&str>) -> u64 {
        let of = |t: &ThreadTicks| {
            name.map_or(Some(&t.total), |n| t.by_name.get(n))
                .map_or(0, |[u, s]| u + s)
        };
        of(self).saturating_sub(of(before))
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The operator's policy for one route (domain `amqp` → `queue` on the
/// default exchange), its credentials in `secrets-NAME/` beside it. Returns
/// the policy and the file holding the broker URL, which a bench may rewrite.
pub fn rendered_policy(
    dir: &Path,
    name: &str,
    url: &str,
    queue: &str,
    batch: u32,
    connections: u32,
) -> (PathBuf, PathBuf) {
    let spec = serde_json::json!({
        "match": {"domain": "amqp"},
        "broker": {"urlSecretRef": {"name": "rabbit", "key": "url"}},
        "publish": {"routingKey": queue},
        "delivery": {"batchSize": batch, "connectionLimit": connections}
    });
    let mut r = AmqpRoute::new("bench", serde_json::from_value(spec).unwrap());
    r.metadata.namespace = Some("bench".into());
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("rabbit".into());
    secret.metadata.namespace = Some("bench".into());
    secret.string_data = Some([("url".to_string(), url.to_string())].into());
    let secrets_dir = dir.join(format!("secrets-{name}"));
    let out = render(&[r], &[secret], &secrets_dir.display().to_string());
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let mut url_file = None;
    for (k, v) in &out.secret {
        std::fs::write(secrets_dir.join(k), v).unwrap();
        url_file = Some(secrets_dir.join(k));
    }
    let path = dir.join(format!("routes-{name}.lua"));
    std::fs::write(&path, out.policy).unwrap();
    (path, url_file.expect("the route's credentials file"))
}

/// The relay's `/metrics`, as text.
async fn metrics_text(http: &str) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A relay metric (first sample of that name).
pub async fn metric(http: &str, name: &str) -> f64 {
    metrics_text(http)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Observations of the relay's histogram `name` over `over` seconds, and
/// the upper bound of the slowest one's bucket.
pub async fn slow_observations(http: &str, name: &str, over: f64) -> (u64, f64) {
    let text = metrics_text(http).await;
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix("_bucket{le=\""))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            Some((le.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0, |b| b.1);
    let within = buckets
        .iter()
        .rev()
        .find(|b| b.0 <= over)
        .map_or(0, |b| b.1);
    let slowest = buckets
        .iter()
        .find(|b| b.1 == total)
        .map_or(f64::INFINITY, |b| b.0);
    (total - within, slowest)
}
