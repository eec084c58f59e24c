//! Running the relay binary and talking to it and to the broker.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_amqp-relay");

pub struct Relay {
    child: Child,
    /// The first HTTP listener; `http_all` has every one, in declaration order.
    pub http: SocketAddr,
    pub http_all: Vec<SocketAddr>,
    /// SMTP listeners, in the order the relay bound them.
    pub smtp: Vec<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
}

/// A test policy written into `dir` from a template, with `{{KEY}}` replaced.
pub fn write_policy(dir: &Path, name: &str, template: &str, vars: &[(&str, &str)]) -> PathBuf {
    let mut text = template.to_owned();
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!text.contains("{{"), "unreplaced placeholder in {name}");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A test's directory with its policy written from a template: the one
/// setup every relay test starts from.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
}

impl Setup {
    /// A fresh directory with `policy.lua` from `template` (`{{KEY}}` replaced).
    pub fn new(template: &str, vars: &[(&str, &str)]) -> Setup {
        Setup::in_dir(tempfile::tempdir().unwrap(), template, vars)
    }

    /// The same in `dir` (made first when the policy names it).
    pub fn in_dir(dir: tempfile::TempDir, template: &str, vars: &[(&str, &str)]) -> Setup {
        let policy = write_policy(dir.path(), "policy.lua", template, vars);
        Setup { dir, policy }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The relay's spool directory in it.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A relay on this policy and spool, to be configured and started.
    pub fn relay(&self) -> Launch {
        Launch::new(&self.policy, &self.spool())
    }
}

/// How a relay under test starts: `--http-listen 127.0.0.1:0` and one HTTP
/// listener awaited unless the policy's init starts its own.
pub struct Launch {
    policy: PathBuf,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Listeners the policy's init starts; `None`: the flag's one HTTP listener.
    init: Option<usize>,
    smtp: usize,
}

impl Launch {
    pub fn new(policy: &Path, data_dir: &Path) -> Launch {
        Launch {
            policy: policy.to_owned(),
            data_dir: data_dir.to_owned(),
            env: Vec::new(),
            args: Vec::new(),
            init: None,
            smtp: 0,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Launch {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Launch {
        env.iter().fold(self, |l, (k, v)| l.env(k, v))
    }

    pub fn arg(mut self, a: &str) -> Launch {
        self.args.push(a.to_owned());
        self
    }

    /// With `--smtp-listen 127.0.0.1:0` (for policies without init).
    pub fn smtp_flag(self) -> Launch {
        let mut l = self.arg("--smtp-listen").arg("127.0.0.1:0");
        l.smtp = 1;
        l
    }

    /// SMTP listeners the policy's init starts (beside the flag's HTTP one).
    pub fn smtp_listeners(mut self, n: usize) -> Launch {
        self.smtp = n;
        self
    }

    /// The policy's init starts `http` HTTP and `smtp` SMTP listeners (no flag).
    pub fn init_listeners(mut self, http: usize, smtp: usize) -> Launch {
        self.init = Some(http);
        self.smtp = smtp;
        self
    }

    pub fn start(self) -> Relay {
        let mut cmd = Command::new(BIN);
        cmd.arg("relay")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--data-dir")
            .arg(&self.data_dir);
        if self.init.is_none() {
            cmd.arg("--http-listen").arg("127.0.0.1:0");
        }
        cmd.args(&self.args)
            .env("RUST_LOG", "info,lapin=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Relay::launch_with(cmd, self.init.unwrap_or(1), self.smtp)
    }
}

impl Relay {
    pub fn start(policy: &Path, data_dir: &Path) -> Relay {
        Launch::new(policy, data_dir).start()
    }

    pub fn start_with_env(policy: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Relay {
        Launch::new(policy, data_dir).envs(env).start()
    }

    /// With `--smtp-listen 127.0.0.1:0` (for policies without init).
    pub fn start_smtp(policy: &Path, data_dir: &Path) -> Relay {
        Launch::new(policy, data_dir).smtp_flag().start()
    }

    /// For a policy whose init starts `smtp_listeners` SMTP listeners.
    pub fn start_init(policy: &Path, data_dir: &Path, smtp_listeners: usize) -> Relay {
        Launch::new(policy, data_dir)
            .smtp_listeners(smtp_listeners)
            .start()
    }

    /// For a policy whose init starts `http` HTTP and `smtp` SMTP listeners.
    pub fn start_listeners(policy: &Path, data_dir: &Path, http: usize, smtp: usize) -> Relay {
        Launch::new(policy, data_dir)
            .init_listeners(http, smtp)
            .start()
    }

    fn launch_with(mut cmd: Command, http_listeners: usize, smtp_listeners: usize) -> Relay {
        let mut child = cmd.spawn().expect("spawn amqp-relay");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for kind in ["http", "smtp"] {
                    if let Some(addr) = line.split(&format!("{kind} listener on ")).nth(1) {
                        let _ = tx.send((kind, addr.trim().to_owned()));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut http = Vec::new();
        let mut smtp = Vec::new();
        while http.len() < http_listeners || smtp.len() < smtp_listeners {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((kind, a)) => {
                    let a: SocketAddr = a.parse().expect("listener address");
                    if kind == "http" {
                        http.push(a)
                    } else {
                        smtp.push(a)
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "relay did not start listening; its log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Relay {
            child,
            smtp,
            http: http[0],
            http_all: http,
            log,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn inject_raw(&self, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url("/api/inject/v1"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("inject request");
        let status = r.status().as_u16();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// Injects one message per recipient with the given bodies; returns the status.
    pub async fn inject(
        &self,
        sender: &str,
        recipients: &[String],
        content: &str,
    ) -> (u16, serde_json::Value) {
        let body = serde_json::json!({
            "envelope_sender": sender,
            "content": content,
            "recipients": recipients.iter().map(|r| serde_json::json!({"email": r})).collect::<Vec<_>>(),
        });
        self.inject_raw(body.to_string()).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Polls a counter until it reaches `want` (an event the relay reports), or fails after `limit`.
    pub async fn await_metric(&self, name: &str, want: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name).await;
            if v >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is {v}, expected {want}; relay log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/readyz` until the relay reports ready (routes read, policy loaded), or fails after `limit`.
    pub async fn await_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let resp = self
                .client
                .get(self.url("/readyz"))
                .send()
                .await
                .expect("readyz");
            let status = resp.status().as_u16();
            if status == 200 {
                return;
            }
            let body = resp.text().await.unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "/readyz still {status} ({body}); relay log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of the relay process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The process's peak RSS so far.
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            })
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Polls the captured log until it holds one of `any`, or fails after
    /// `limit`: a line is read from the relay's stderr a moment after the
    /// event it reports (and after the metric counting it).
    pub async fn await_log(&self, any: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if any.iter().any(|needle| text.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the relay log has none of {any:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the exit; returns whether it was clean.
    pub fn wait(mut self) -> bool {
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGTERM and wait for exit; returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `amqp-relay drain` on a spool: its exit code, stdout (the report) and log.
pub fn drain(policy: &Path, data_dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("drain")
        .arg("--policy")
        .arg(policy)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info,lapin=off")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run amqp-relay drain");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn declare_queue(conn: &lapin::Connection, name: &str, args: FieldTable) {
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
        args,
    )
    .await
    .expect("declare queue");
}

/// Consumes until `n` messages arrived or `limit` passed; returns them.
pub async fn consume(
    conn: &lapin::Connection,
    queue: &str,
    n: usize,
    limit: Duration,
) -> Vec<lapin::message::Delivery> {
    // Each message is acknowledged as it is taken: anything the broker pushed
    // beyond `n` goes back to the queue when the channel closes, not lost.
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker
                    .ack(lapin::options::BasicAckOptions::default())
                    .await
                    .expect("ack");
                out.push(d);
            }
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = ch.close(200, "done".into()).await;
    out
}

pub fn recipients(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// A durable direct exchange, with `queue` declared afresh and bound to it by each key.
pub async fn declare_bound(conn: &lapin::Connection, exchange: &str, queue: &str, keys: &[&str]) {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(conn, queue, FieldTable::default()).await;
    for key in keys {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            (*key).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
}

/// `kill -9` of a broker, off the async worker threads.
pub async fn kill_broker(b: crate::broker::Broker) -> crate::broker::Broker {
    tokio::task::spawn_blocking(move || {
        b.sync_metadata();
        b.kill9();
        b
    })
    .await
    .unwrap()
}

/// Starts a killed broker again on its data, off the async worker threads.
pub async fn restart_broker(b: crate::broker::Broker) -> crate::broker::Broker {
    tokio::task::spawn_blocking(move || {
        b.restart();
        b
    })
    .await
    .unwrap()
}

/// A message received over SMTP: its `Received:` trace header (folded
/// lines joined) and what the client sent after it.
pub fn split_received(data: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(data);
    let rest = text
        .strip_prefix("Received: ")
        .unwrap_or_else(|| panic!("no Received header first: {text:?}"));
    let mut end = 0;
    for line in rest.split_inclusive("\r\n") {
        end += line.len();
        if !rest[end..].starts_with('\t') {
            break;
        }
    }
    (
        rest[..end].replace("\r\n\t", " ").trim_end().to_owned(),
        rest[end..].to_owned(),
    )
}
