//! The headline figures, each beside a baseline measured in the same run, on
//! one private RabbitMQ node (port 5672, which the seed policy's
//! `amqp://localhost` reaches), the spool on a disk filesystem (the target
//! directory; ext4 here), in alternating rounds; the raw publishers send
//! for `BENCH_SECS` (10), the relay's runs as many messages as that round's
//! raw transient publisher did (the broker's cost per message grows with its
//! queue's depth, so the ratios compare the same messages):
//!
//! - `t`: a raw lapin publisher, transient, up to 1,000 confirms in flight:
//!   the broker's cost for messages from a client that adds nothing (the
//!   denominator of every ratio); `p`: the same, persistent.
//! - `1`: the relay end to end with the seed policy verbatim, one distinct
//!   1 KiB message per HTTP request over 16 keep-alive connections (the shape
//!   most clients send), more messages than `--max-active-messages` so the
//!   on-disk schedule and page-in run; counted until the last is in the
//!   queue. Targets: >= 0.6x `t`; relay CPU <= 50 us per message; broker CPU
//!   <= 1.3x its cost for `t`.
//! - `100`: the same policy, 100 recipients sharing one body per request
//!   (4 connections). Target >= 0.9x `t`.
//! - Latency from HTTP 200 to the consumer, one message per request sent on
//!   schedule at half of `1`'s rate, after 200 warm-up messages, in as many
//!   rounds as the rest: p50/p99 (target: the median p99 <= 10 ms), and
//!   apart from it how long a fresh relay's first delivery took (it
//!   connects to the broker), and the relay's CPU per message at that
//!   rate. Its baseline: a raw lapin
//!   publisher sending the same messages on the same schedule, publish ->
//!   consumer, which shows what the broker and the machine add (and their
//!   stalls).
//!
//! Each figure prints CPU microseconds per message of the broker, this
//! process (the client) and the relay, and the medians with the spread; the
//! relay's also by thread with the kernel's share, how many messages its
//! spool committed per fsync and how long a commit took (from its /metrics).
//! Memory with a backlog, restart and drain: `cargo bench --bench backlog`;
//! SMTP against Postfix: `cargo bench --bench smtp`.
//!
//! Run: `cargo bench --bench throughput` (`ONLY=1` or `ONLY=100` runs one
//! shape round after round, `MESSAGES` each (150,000), for a profiler or
//! A/B pairs, `ONLY=latency` the latency at
//! `RATE` msg/s; `CLIENTS` overrides the shape's connections; `RELAY_BIN` a
//! control build).

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

/// Seconds each raw publisher's run sends for (`BENCH_SECS`, default 10).
static SECS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::env::var("BENCH_SECS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
});

/// The relay's `--max-active-messages` default: a run must send more, so
/// the on-disk schedule and page-in take part.
const MAX_ACTIVE: usize = 20_000;
/// Messages a relay run sends with `ONLY` (`MESSAGES`): about what the raw
/// transient publisher sends in 10 s here.
const ONLY_MESSAGES: usize = 150_000;

/// A distinct 1 KiB message.
fn message(n: usize) -> String {
    format!("Subject: bench {n}\r\nX-Seq: {n}\r\n\r\n{:0>1000}\r\n", n)
}

/// One run's rate and the CPU each process spent per message.
#[derive(Clone, Copy)]
struct Run {
    messages: usize,
    rate: f64,
    broker_us: f64,
    bench_us: f64,
    relay_us: Option<f64>,
    /// The relay's spool: messages per commit and a commit's mean time (µs).
    commits: Option<(f64, f64)>,
    threads: Option<Threads>,
}

/// Where the relay's CPU per message went, by thread (µs), and the share
/// of it spent in the kernel (the loopback TCP of both ends, the spool's
/// writes and fsyncs, wake-ups): what a change in the relay's own code can
/// reach and what it cannot.
#[derive(Clone, Copy)]
struct Threads {
    /// All of the relay's threads.
    total: f64,
    /// The tokio runtime: listeners, policy, deliveries (and its blocking pool).
    runtime: f64,
    spool_writer: f64,
    /// lapin's I/O threads, one per broker connection.
    broker_io: f64,
    /// Threads that ended during the run, the main thread, the rest.
    other: f64,
    kernel_share: f64,
}

impl Threads {
    fn between(before: &ThreadTicks, after: &ThreadTicks, n: usize) -> Threads {
        let us = |ticks: u64| ticks as f64 * 1e6 / TICKS_PER_SEC / n as f64;
        let named = |name| us(after.since(before, Some(name)));
        let total = after.since(before, None);
        let (runtime, spool_writer, broker_io) = (
            named("tokio-rt-worker"),
            named("spool-writer"),
            named("lapin-io-loop"),
        );
        // A thread renamed (by tokio, lapin or the relay) would move its time
        // to `other` unseen.
        assert!(
            runtime > 0.0 && spool_writer > 0.0 && broker_io > 0.0,
            "a relay thread used no CPU under its expected name; the relay's threads now: {:?}",
            after.by_name.keys().collect::<Vec<_>>()
        );
        Threads {
            total: us(total),
            runtime,
            spool_writer,
            broker_io,
            other: (us(total) - runtime - spool_writer - broker_io).max(0.0),
            kernel_share: (after.total[1] - before.total[1]) as f64 / total.max(1) as f64,
        }
    }

    fn show(&self) -> String {
        format!(
            " (runtime {:.1}, spool writer {:.1}, broker I/O {:.1}, other {:.1}; {:.0} % in the kernel)",
            self.runtime,
            self.spool_writer,
            self.broker_io,
            self.other,
            self.kernel_share * 100.0
        )
    }
}

impl Run {
    fn cpu(&self) -> String {
        let relay = self
            .relay_us
            .map_or(String::new(), |r| format!(", relay {r:.1}"));
        let spool = self.commits.map_or(String::new(), |(per, us)| {
            format!("; spool {per:.1} msgs per commit, {us:.0} us each")
        });
        let threads = self.threads.map_or(String::new(), |t| t.show());
        format!(
            "CPU us/msg: broker {:.1}, client {:.1}{relay}{threads}{spool}",
            self.broker_us, self.bench_us
        )
    }
}

/// Message `n` published to `queue` (default exchange) as a raw client
/// does; its confirm, if the channel asked for them.
async fn publish_one(
    ch: &lapin::Channel,
    queue: &str,
    n: usize,
    props: BasicProperties,
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        message(n).as_bytes(),
        props,
    )
    .await
    .unwrap()
}

/// A raw lapin publisher, up to 1,000 confirms in flight, to a durable
/// queue, for `SECS`: what the broker costs for messages from a client that
/// adds nothing.
async fn raw_publisher(conn: &Connection, broker: &broker::Broker, persistent: bool) -> Run {
    let queue = if persistent {
        "bench-raw"
    } else {
        "bench-raw-t"
    };
    fresh_queue(conn, queue).await;
    settle(broker).await;
    let cpu0 = Cpu::now(broker);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(*SECS);
    let mut inflight = VecDeque::new();
    let mut n = 0;
    while Instant::now() < deadline {
        if inflight.len() >= 1000 {
            let c: lapin::PublisherConfirm = inflight.pop_front().unwrap();
            assert!(c.await.unwrap().is_ack());
        }
        let c = publish_one(&ch, queue, n, props.clone()).await;
        inflight.push_back(c);
        n += 1;
    }
    for c in inflight {
        assert!(c.await.unwrap().is_ack());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    cpu0.run(n, rate, broker, None)
}

/// How a relay run sends: recipients per request and client connections.
#[derive(Clone, Copy)]
struct Shape {
    per_request: usize,
    clients: usize,
}

/// A keep-alive HTTP/1.1 connection that posts injection requests and reads
/// the status, adding as little CPU as wrk does (a general client such as
/// reqwest spent ~45 us per request here, on the cores the relay and the
/// broker share).
struct Poster {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
    head: Vec<u8>,
}

impl Poster {
    async fn connect(http: &str) -> Poster {
        let stream = tokio::net::TcpStream::connect(http).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Poster {
            stream: tokio::io::BufStream::new(stream),
            head: Vec::with_capacity(256),
        }
    }

    /// Posts `body` (JSON) to the injection API; the response's status.
    async fn inject(&mut self, body: &[u8]) -> u16 {
        use std::io::Write as _;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.head.clear();
        write!(
            self.head,
            "POST /api/inject/v1 HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        self.stream.write_all(&self.head).await.unwrap();
        self.stream.write_all(body).await.unwrap();
        self.stream.flush().await.unwrap();
        let (mut status, mut length, mut line) = (0u16, 0usize, String::new());
        loop {
            line.clear();
            assert!(
                self.stream.read_line(&mut line).await.unwrap() > 0,
                "connection closed"
            );
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(code) = l.strip_prefix("HTTP/1.1 ") {
                status = code[..3].parse().unwrap();
            } else if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut rest = vec![0; length];
        self.stream.read_exact(&mut rest).await.unwrap();
        status
    }
}

/// An injection request: `rcpts` recipients of `content`.
fn request(content: &str, rcpts: impl Iterator<Item = String>) -> Vec<u8> {
    let rcpts: Vec<_> = rcpts
        .map(|email| serde_json::json!({ "email": email }))
        .collect();
    serde_json::to_vec(&serde_json::json!({"envelope_sender": "b@example.com", "content": content, "recipients": rcpts}))
        .unwrap()
}

/// Sends `requests` requests over `clients` keep-alive connections, each
/// request waiting for the last (as applications do), every message
/// distinct; the messages sent (all acknowledged with 200).
async fn inject_requests(http: &str, shape: Shape, requests: usize) -> usize {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..shape.clients {
        let (http, next) = (http.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut poster = Poster::connect(&http).await;
            let mut sent = 0;
            loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= requests {
                    break;
                }
                let body = if shape.per_request == 1 {
                    message(r)
                } else {
                    body()
                };
                let req = request(
                    &body,
                    (0..shape.per_request).map(|i| format!("c{r}-{i}@amqp")),
                );
                assert_eq!(poster.inject(&req).await, 200);
                sent += shape.per_request;
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    sent
}

/// The relay end to end: `messages` (rounded up to whole requests), the rate
/// counted until the last is in the queue. The full run sends as many as the
/// round's raw transient publisher did: the broker's cost per message grows
/// with its queue's depth (the `100` shape sent for 10 s, 5x as many, cost it
/// 43-44 us per message against 30-33 with the same count), so a ratio to
/// `t` is fair only over the same messages.
async fn relay_rate(
    conn: &Connection,
    broker: &broker::Broker,
    policy: &Path,
    queue: &str,
    dir: &Path,
    (shape, messages): (Shape, usize),
) -> Run {
    fresh_queue(conn, queue).await;
    settle(broker).await;
    // A fresh spool each run: a reused one would carry the last run's free pages.
    let spool = tempfile::tempdir_in(dir).unwrap();
    let (relay, _) = start_relay(policy, spool.path());
    let relay_cpu0 = ThreadTicks::of(relay.pid());
    let cpu0 = Cpu::now(broker);
    let start = Instant::now();
    let n = inject_requests(&relay.http, shape, messages.div_ceil(shape.per_request)).await;
    while depth(conn, queue).await < n as u32 {
        assert!(
            start.elapsed() < Duration::from_secs(*SECS * 10 + 60),
            "not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let threads = Threads::between(&relay_cpu0, &ThreadTicks::of(relay.pid()), n);
    let commits = metric(&relay.http, "amqp_relay_spool_commit_seconds_count").await;
    let commit_secs = metric(&relay.http, "amqp_relay_spool_commit_seconds_sum").await;
    assert!(commits > 0.0, "the relay's /metrics shows no spool commit");
    Run {
        commits: Some((n as f64 / commits, commit_secs * 1e6 / commits)),
        threads: Some(threads),
        ..cpu0.run(n, rate, broker, Some(threads.total))
    }
}

/// Waits until the broker is idle (under 6 % of a core over half a second):
/// deleting the last run's queue (up to a million messages) keeps it busy
/// for a while, which would land on the next run's figures.
async fn settle(broker: &broker::Broker) {
    let pid = broker.beam_pid().unwrap();
    let since = Instant::now();
    loop {
        let before = cpu_secs(&pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu_secs(&pid) - before < 0.03 {
            return;
        }
        if since.elapsed() > Duration::from_secs(60) {
            println!("  (the broker was still busy after 60 s; measuring anyway)");
            return;
        }
    }
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
    fn run(&self, n: usize, rate: f64, broker: &broker::Broker, relay_us: Option<f64>) -> Run {
        let per = |s: f64| s * 1e6 / n as f64;
        Run {
            messages: n,
            rate,
            broker_us: per(cpu_secs(&broker.beam_pid().unwrap()) - self.broker),
            bench_us: per(cpu_secs("self") - self.bench),
            relay_us,
            commits: None,
            threads: None,
        }
    }
}

/// Medians of each figure over the rounds.
fn medians(runs: &[Run]) -> Run {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Run {
        messages: m(&|r| r.messages as f64) as usize,
        rate: m(&|r| r.rate),
        broker_us: m(&|r| r.broker_us),
        bench_us: m(&|r| r.bench_us),
        relay_us: runs[0].relay_us.map(|_| m(&|r| r.relay_us.unwrap_or(0.0))),
        commits: runs[0].commits.map(|_| {
            let c = |f: fn((f64, f64)) -> f64| m(&|r| r.commits.map_or(0.0, f));
            (c(|c| c.0), c(|c| c.1))
        }),
        threads: runs[0].threads.map(|_| {
            let t = |f: fn(Threads) -> f64| m(&|r| r.threads.map_or(0.0, f));
            Threads {
                total: t(|t| t.total),
                runtime: t(|t| t.runtime),
                spool_writer: t(|t| t.spool_writer),
                broker_io: t(|t| t.broker_io),
                other: t(|t| t.other),
                kernel_share: t(|t| t.kernel_share),
            }
        }),
    }
}

/// The sequence number a message carries (`X-Seq`).
fn seq(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let at = text.find("X-Seq: ").expect("an X-Seq header") + 7;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Injects message `i` (one recipient); when its 200 came.
async fn inject_one(client: &reqwest::Client, url: &str, i: usize) -> Instant {
    let req = request(&message(i), std::iter::once(format!("l{i}@amqp")));
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    Instant::now()
}

/// Messages sent one at a time before the schedule starts, so the figure is
/// the steady state's: the relay's first delivery opens the broker connection
/// and channel (tens of ms, more on a busy machine), which held a 5 s run's
/// first ~1% of messages and so decided its p99. That wait is reported on
/// its own.
const WARM_UP: usize = 200;

/// Messages a latency run sends after its warm-up: five seconds' worth.
fn latency_messages(rate: f64) -> usize {
    ((rate * 5.0) as usize).max(2000)
}

/// Consumes `m` messages (numbered `0..m` by `X-Seq`) and `WARM_UP` ones
/// (numbered from `m` on) from `queue`: the first's arrival times, by number;
/// and, once every warm-up message arrived, when the first of those did.
async fn arrivals(
    conn: &Connection,
    queue: &str,
    m: usize,
) -> (
    tokio::task::JoinHandle<Vec<Option<Instant>>>,
    tokio::sync::oneshot::Receiver<Instant>,
) {
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
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<Instant>();
    let received = tokio::spawn(async move {
        let _ch = ch;
        let mut at = vec![None; m];
        let (mut warm, mut first, mut warm_tx) = (0, None, Some(warm_tx));
        for _ in 0..m + WARM_UP {
            let d = consumer.next().await.unwrap().unwrap();
            let now = Instant::now();
            match seq(&d.data) {
                s if s < m => at[s] = Some(now),
                _ => {
                    warm += 1;
                    let first = *first.get_or_insert(now);
                    if warm == WARM_UP {
                        let _ = warm_tx.take().unwrap().send(first);
                    }
                }
            }
        }
        at
    });
    (received, warm_rx)
}

/// p50 and p99 of arrival minus sending, message by message.
fn percentiles(arrived: &[Option<Instant>], sent: &[Instant]) -> (Duration, Duration) {
    let mut lat: Vec<Duration> = arrived
        .iter()
        .zip(sent)
        .map(|(r, a)| r.unwrap().saturating_duration_since(*a))
        .collect();
    lat.sort();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// One latency round of the relay.
struct LatencyRun {
    p50: Duration,
    p99: Duration,
    messages: usize,
    /// From the first warm-up message's 200 to its delivery.
    first: Duration,
    /// Spool commits and sends over `SLOW`.
    slow: [Slow; 2],
    /// The relay's CPU per scheduled message (µs), all and by thread: at a
    /// moderate rate, where fewer messages share each wake-up and commit.
    cpu: Threads,
}

/// HTTP 200 → in the consumer's hands, one message per request sent on
/// schedule (open loop: a slow answer does not delay the next request):
/// p50 and p99 at `rate`, the number of messages, how long the relay's
/// first delivery took (200 -> consumer), and its slow spool commits and
/// sends (a stalled commit delays every acknowledgement waiting for it; a
/// slow send, the messages behind it); and the relay's CPU per message.
async fn latency(
    conn: &Connection,
    broker: &broker::Broker,
    policy: &Path,
    queue: &str,
    dir: &Path,
    rate: f64,
) -> LatencyRun {
    let m = latency_messages(rate);
    fresh_queue(conn, queue).await;
    settle(broker).await;
    let spool = tempfile::tempdir_in(dir).unwrap();
    let (relay, _) = start_relay(policy, spool.path());
    let (received, warm_rx) = arrivals(conn, queue, m).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/inject/v1", relay.http);
    let mut first_acked = None;
    for i in m..m + WARM_UP {
        let acked = inject_one(&client, &url, i).await;
        first_acked.get_or_insert(acked);
    }
    let first_delivered = warm_rx.await.expect("the warm-up messages arrive");
    let first = first_delivered.saturating_duration_since(first_acked.unwrap());
    let interval = Duration::from_secs_f64(1.0 / rate);
    let cpu0 = ThreadTicks::of(relay.pid());
    let start = Instant::now();
    let mut sends = Vec::with_capacity(m);
    for i in 0..m {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (client, url) = (client.clone(), url.clone());
        sends.push(tokio::spawn(
            async move { inject_one(&client, &url, i).await },
        ));
    }
    let mut acked = Vec::with_capacity(m);
    for s in sends {
        acked.push(s.await.unwrap());
    }
    let (p50, p99) = percentiles(&received.await.unwrap(), &acked);
    let cpu1 = ThreadTicks::of(relay.pid());
    let slow = [
        slow_observations(&relay.http, "amqp_relay_spool_commit_seconds", SLOW).await,
        slow_observations(&relay.http, "amqp_relay_delivery_send_seconds", SLOW).await,
    ];
    LatencyRun {
        p50,
        p99,
        messages: m,
        first,
        slow,
        cpu: Threads::between(&cpu0, &cpu1, m),
    }
}

/// A commit or send slower than this (a bucket bound of their histograms)
/// is counted as slow in the latency rounds.
const SLOW: f64 = 0.0064;
/// How many were slow, and the bound of the slowest one's bucket.
type Slow = (u64, f64);

/// The baseline of `latency`: a raw lapin publisher sends the same messages
/// on the same schedule (transient, to a durable queue, with confirms, as
/// the relay publishes, none awaited before the next), publish -> consumer:
/// the delay the broker, the consumer and this machine add by themselves,
/// and their stalls; and its confirms over `SLOW` (the relay's sends wait
/// for one each).
async fn raw_latency(
    conn: &Connection,
    broker: &broker::Broker,
    rate: f64,
) -> (Duration, Duration, Slow) {
    let (queue, m) = ("bench-lat-raw", latency_messages(rate));
    fresh_queue(conn, queue).await;
    settle(broker).await;
    let (received, warm_rx) = arrivals(conn, queue, m).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // When each publish went out, and a task that ends with its confirm's delay.
    let publish = |i: usize| {
        let ch = ch.clone();
        async move {
            let at = Instant::now();
            let confirm = publish_one(&ch, queue, i, BasicProperties::default()).await;
            let confirmed = tokio::spawn(async move {
                assert!(confirm.await.unwrap().is_ack());
                at.elapsed()
            });
            (at, confirmed)
        }
    };
    for i in m..m + WARM_UP {
        publish(i).await;
    }
    warm_rx.await.expect("the warm-up messages arrive");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let (mut sent, mut confirms) = (Vec::with_capacity(m), Vec::with_capacity(m));
    for i in 0..m {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (at, confirmed) = publish(i).await;
        sent.push(at);
        confirms.push(confirmed);
    }
    let at = received.await.unwrap();
    let mut slow: Slow = (0, 0.0);
    for c in confirms {
        let took = c.await.unwrap().as_secs_f64();
        slow.0 += u64::from(took > SLOW);
        slow.1 = slow.1.max(took);
    }
    let _ = ch.close(200, "done".into()).await;
    let (p50, p99) = percentiles(&at, &sent);
    (p50, p99, slow)
}

/// `rounds` of the latency and its raw baseline, alternating; each round,
/// then the medians with their spread (target: the relay's p99 <= 10 ms).
async fn latency_rounds(
    conn: &Connection,
    broker: &broker::Broker,
    seed: &Path,
    dir: &Path,
    rate: f64,
    rounds: usize,
) {
    let (mut relay, mut raw, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (r50, r99, raw_confirms) = raw_latency(conn, broker, rate).await;
        let LatencyRun {
            p50,
            p99,
            messages: m,
            first,
            slow: [commits, sends],
            cpu: threads,
        } = latency(conn, broker, seed, "logging", dir, rate).await;
        let over = SLOW * 1000.0;
        let slow =
            |(n, max): Slow, what: &str| format!("{n} {what} (the slowest <= {:.1} ms)", ms_f(max));
        println!("  round {round}: at {rate:.0} msg/s, {m} messages");
        println!(
            "    relay: p50 {:.1} ms, p99 {:.1} ms; first delivery (connecting to the broker) {:.1} ms; over {over:.1} ms: {}, {}",
            ms(p50),
            ms(p99),
            ms(first),
            slow(commits, "spool commits"),
            slow(sends, "sends")
        );
        println!(
            "    relay CPU at this rate: {:.1} us/msg{}",
            threads.total,
            threads.show()
        );
        cpu.push(threads.total);
        println!(
            "    raw publisher: p50 {:.1} ms, p99 {:.1} ms; over {over:.1} ms: {}",
            ms(r50),
            ms(r99),
            slow(raw_confirms, "confirms")
        );
        relay.push((ms(p50), ms(p99)));
        raw.push((ms(r50), ms(r99)));
    }
    let summary = |v: &[(f64, f64)]| {
        let p99: Vec<f64> = v.iter().map(|x| x.1).collect();
        let (lo, hi) = min_max(&p99);
        format!(
            "p50 {:.1} ms, p99 {:.1} ms ({lo:.1}–{hi:.1})",
            median(v.iter().map(|x| x.0).collect()),
            median(p99)
        )
    };
    println!(
        "  medians: relay {} (target p99 <= 10 ms); raw publisher {}",
        summary(&relay),
        summary(&raw)
    );
    let (lo, hi) = min_max(&cpu);
    println!(
        "  relay CPU per message at this rate: {:.1} us ({lo:.1}–{hi:.1}; fewer messages share each wake-up and commit than at full rate)",
        median(cpu)
    );
}

fn ms(d: Duration) -> f64 {
    ms_f(d.as_secs_f64())
}

fn ms_f(secs: f64) -> f64 {
    secs * 1000.0
}

/// Min–max of a figure over the rounds, to show the spread.
fn spread(runs: &[Run], f: impl Fn(&Run) -> f64) -> String {
    let (lo, hi) = min_max(&runs.iter().map(f).collect::<Vec<_>>());
    format!("{lo:.0}–{hi:.0}")
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)))
}

const ONE: Shape = Shape {
    per_request: 1,
    clients: 16,
};
const HUNDRED: Shape = Shape {
    per_request: 100,
    clients: 4,
};

#[tokio::main]
async fn main() {
    let broker = tokio::task::spawn_blocking(broker::Broker::shared)
        .await
        .unwrap();
    let conn = broker.connect().await;
    // A disk filesystem (ext4 here), not tmpfs: the spool's fsyncs are real.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let seed = dir.path().join("seed.lua");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies/seed.lua"),
        &seed,
    )
    .unwrap();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    if let Ok(only) = std::env::var("ONLY") {
        // For profiling one variant: run it alone, round after round.
        if only == "latency" {
            let rate = std::env::var("RATE").map_or(4000.0, |r| r.parse().unwrap());
            latency_rounds(&conn, broker, &seed, dir.path(), rate, rounds).await;
            return;
        }
        let mut shape = if only == "100" { HUNDRED } else { ONE };
        if let Ok(c) = std::env::var("CLIENTS") {
            shape.clients = c.parse().expect("CLIENTS: a number of connections");
        }
        let messages = std::env::var("MESSAGES")
            .map_or(ONLY_MESSAGES, |m| m.parse().expect("MESSAGES: a number"));
        for round in 1..=rounds {
            let run = (shape, messages);
            let r = relay_rate(&conn, broker, &seed, "logging", dir.path(), run).await;
            println!("  round {round}: {only} {:6.0} msg/s  {}", r.rate, r.cpu());
        }
        return;
    }
    println!(
        "Throughput, distinct 1 KiB messages to a durable classic queue, {rounds} alternating rounds (the raw publishers send for {} s, the relay as many messages as that round's t), spool on {}:",
        *SECS,
        dir.path().display()
    );
    println!("  t: raw lapin publisher, transient, <= 1000 confirms in flight (the baseline)");
    println!("  p: the same, persistent");
    println!(
        "  1: relay, seed policy verbatim, one message per HTTP request, 16 keep-alive connections"
    );
    println!(
        "  100: relay, seed policy, 100 recipients sharing one body per request, 4 connections"
    );
    let (mut t, mut p, mut one, mut hundred) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let rt = raw_publisher(&conn, broker, false).await;
        let rp = raw_publisher(&conn, broker, true).await;
        // The relay's runs send what this round's raw transient publisher did.
        let same = |shape| (shape, rt.messages);
        let r1 = relay_rate(&conn, broker, &seed, "logging", dir.path(), same(ONE)).await;
        let r100 = relay_rate(&conn, broker, &seed, "logging", dir.path(), same(HUNDRED)).await;
        println!(
            "  round {round}: t {:6.0}  p {:6.0}  1 {:6.0} ({} msgs)  100 {:6.0} msg/s  1/t {:.2}  100/t {:.2}",
            rt.rate,
            rp.rate,
            r1.rate,
            r1.messages,
            r100.rate,
            r1.rate / rt.rate,
            r100.rate / rt.rate
        );
        for (name, r) in [("t", rt), ("p", rp), ("1", r1), ("100", r100)] {
            println!("           {name:>3} {}", r.cpu());
        }
        t.push(rt);
        p.push(rp);
        one.push(r1);
        hundred.push(r100);
    }
    let sp = |runs: &[Run]| spread(runs, |r| r.rate);
    let (mt, mp, m1, m100) = (medians(&t), medians(&p), medians(&one), medians(&hundred));
    println!("Medians (min–max msg/s over the rounds):");
    println!(
        "  t   raw transient publisher:   {:7.0} msg/s ({})  {}",
        mt.rate,
        sp(&t),
        mt.cpu()
    );
    println!(
        "  p   raw persistent publisher:  {:7.0} msg/s ({})  {}",
        mp.rate,
        sp(&p),
        mp.cpu()
    );
    for (name, m, runs, target) in [("1  ", m1, &one, 0.6), ("100", m100, &hundred, 0.9)] {
        let relay = m.relay_us.unwrap_or(f64::NAN);
        println!(
            "  {name} relay, seed policy:      {:7.0} msg/s ({})  {:.2}x t (target >= {target}); {} messages (> {MAX_ACTIVE} max active: {})",
            m.rate,
            sp(runs),
            m.rate / mt.rate,
            m.messages,
            m.messages > MAX_ACTIVE
        );
        println!(
            "      CPU per message: relay {relay:.1} us{}{}; broker {:.1} us = {:.2}x its {:.1} us for the raw transient publisher (target <= 1.3)",
            if name == "1  " { " (target <= 50)" } else { "" },
            m.threads.map_or(String::new(), |t| t.show()),
            m.broker_us,
            m.broker_us / mt.broker_us,
            mt.broker_us
        );
        if let Some((per, us)) = m.commits {
            println!(
                "      spool: {per:.1} messages per commit (each one fsync), {us:.0} us per commit"
            );
        }
    }
    if std::env::var("STOP").is_ok() {
        return;
    }
    println!(
        "Latency, HTTP 200 -> consumer, one message per request at half of 1's rate, after {WARM_UP} warm-up messages; beside it, the raw publisher on the same schedule (publish -> consumer):"
    );
    latency_rounds(&conn, broker, &seed, dir.path(), m1.rate / 2.0, rounds).await;
    println!("(Memory, restart and drain with a backlog: cargo bench --bench backlog)");
}
