//! SMTP reception throughput, one 1 KiB message per transaction (MAIL, RCPT
//! and DATA pipelined, each transaction waiting for the last's 250), from 8
//! and from 32 concurrent clients on one connection each, 8,000 messages a
//! run. Measured in alternating rounds, same clients, same run, against: the
//! relay (durable spool, Lua delivery to a sink); a private Postfix (Debian's
//! package, its own port and queue directory, receiving into its durable
//! incoming queue); and a trivial SMTP responder that stores nothing (the
//! client and protocol cost alone, the most any server could reach here).
//! Both spools are on a disk filesystem (the target directory; the output
//! names its type), not tmpfs. Target: the relay at least twice Postfix's
//! rate.
//!
//! Run: `cargo bench --bench smtp`

#[path = "common/relay_log.rs"]
mod relay_log;

#[path = "common/postfix.rs"]
mod postfix;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Client counts measured, each in every round.
const SHAPES: [usize; 2] = [8, 32];
/// Messages per run, spread over the clients.
const TOTAL: usize = 8000;

async fn reply(r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert!(!line.is_empty(), "server closed the connection");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line[..3].parse().unwrap();
        }
    }
}

async fn client(addr: SocketAddr, n: usize, body: &'static [u8]) {
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (r, mut w) = sock.into_split();
    let mut r = tokio::io::BufReader::new(r);
    assert_eq!(reply(&mut r).await, 220);
    w.write_all(b"EHLO bench\r\n").await.unwrap();
    assert_eq!(reply(&mut r).await, 250);
    for i in 0..n {
        w.write_all(
            format!("MAIL FROM:<b@example.com>\r\nRCPT TO:<u{i}@amqp>\r\nDATA\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(reply(&mut r).await, 250);
        assert_eq!(reply(&mut r).await, 250);
        assert_eq!(reply(&mut r).await, 354);
        w.write_all(body).await.unwrap();
        assert_eq!(reply(&mut r).await, 250);
    }
    w.write_all(b"QUIT\r\n").await.unwrap();
}

async fn load(addr: SocketAddr, body: &'static [u8], clients: usize) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(addr, TOTAL / clients, body)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    TOTAL as f64 / start.elapsed().as_secs_f64()
}

/// Replies at once and keeps nothing.
async fn sink_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = tokio::io::BufReader::new(r);
                w.write_all(b"220 sink\r\n").await.unwrap();
                let mut line = String::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let out: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 ok\r\n"
                        } else {
                            continue;
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if line.starts_with("QUIT") {
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(out).await.unwrap();
                }
            });
        }
    });
    addr
}

/// CPU seconds of a process so far (user + system).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// One server's run: its rate, and CPU µs per message of the server (when
/// it is a process of its own) and of this process (the clients).
struct Run {
    rate: f64,
    server_us: Option<f64>,
    client_us: f64,
}

async fn measure(
    addr: SocketAddr,
    body: &'static [u8],
    clients: usize,
    server: Option<&dyn Fn() -> f64>,
) -> Run {
    let n = TOTAL as f64;
    let (s0, c0) = (server.map(|f| f()), cpu_secs("self"));
    let rate = load(addr, body, clients).await;
    Run {
        rate,
        server_us: server.zip(s0).map(|(f, s0)| (f() - s0) * 1e6 / n),
        client_us: (cpu_secs("self") - c0) * 1e6 / n,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn start_relay(dir: &std::path::Path) -> (std::process::Child, SocketAddr) {
    let policy = dir.join("policy.lua");
    std::fs::write(
        &policy,
        "kumo.on('get_queue_config', function() return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.sink' } } } end)\n\
         kumo.on('make.sink', function() return { send = function(self, msg) return '250 ok' end } end)\n",
    )
    .unwrap();
    let mut relay = Command::new(env!("CARGO_BIN_EXE_amqp-relay"))
        .args([
            "relay",
            "--http-listen",
            "127.0.0.1:0",
            "--smtp-listen",
            "127.0.0.1:0",
            "--policy",
        ])
        .arg(&policy)
        .arg("--data-dir")
        .arg(dir.join("spool"))
        .env("RUST_LOG", "warn,amqp_relay::listeners=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = relay_log::listener_addr(&mut relay, "smtp")
        .parse()
        .expect("a socket address");
    (relay, addr)
}

#[tokio::main]
async fn main() {
    let body: &'static [u8] = Box::leak(
        format!("Subject: bench\r\n\r\n{}\r\n.\r\n", "x".repeat(1000))
            .into_bytes()
            .into_boxed_slice(),
    );
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let sink = sink_server().await;
    let disk = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(disk).unwrap();
    println!(
        "SMTP, {TOTAL} messages of 1 KiB a run, one per transaction (MAIL/RCPT/DATA pipelined), {rounds} rounds; \
         spools on {} ({}); CPU us/msg of the server and of the clients:",
        disk.display(),
        filesystem(disk)
    );
    let mut figures = Vec::new();
    for clients in SHAPES {
        figures.push((clients, Vec::new(), Vec::new(), Vec::new()));
    }
    for round in 1..=rounds {
        for (clients, trivial, relays, postfixes) in figures.iter_mut() {
            let clients = *clients;
            let t = measure(sink, body, clients, None).await;

            let dir = tempfile::tempdir_in(disk).unwrap();
            let (mut relay, addr) = start_relay(dir.path());
            let pid = relay.id().to_string();
            let r = measure(addr, body, clients, Some(&|| cpu_secs(&pid))).await;
            let _ = relay.kill();
            let _ = relay.wait();

            let pdir = tempfile::tempdir_in(disk).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let pf = postfix::Postfix::start(pdir.path(), port)
                .expect("a private Postfix instance (Debian's postfix package)");
            let p = measure(
                SocketAddr::from(([127, 0, 0, 1], port)),
                body,
                clients,
                Some(&|| pf.cpu_secs()),
            )
            .await;
            assert_eq!(
                pf.queued(pdir.path()),
                TOTAL,
                "Postfix queued every message"
            );
            drop(pf);

            println!(
                "  round {round}, {clients:2} clients: relay {:6.0} msg/s (server {:.0}, clients {:.0})  postfix {:6.0} msg/s (server {:.0}, clients {:.0})  trivial {:6.0} msg/s (clients+server {:.0})",
                r.rate,
                r.server_us.unwrap_or(f64::NAN),
                r.client_us,
                p.rate,
                p.server_us.unwrap_or(f64::NAN),
                p.client_us,
                t.rate,
                t.client_us,
            );
            trivial.push(t);
            relays.push(r);
            postfixes.push(p);
        }
    }
    let rate = |v: &[Run]| median(v.iter().map(|r| r.rate).collect());
    let server = |v: &[Run]| median(v.iter().map(|r| r.server_us.unwrap_or(f64::NAN)).collect());
    println!("Medians:");
    for (clients, trivial, relays, postfixes) in &figures {
        let (r, p, t) = (rate(relays), rate(postfixes), rate(trivial));
        println!("  {clients} clients:");
        println!(
            "    amqp-relay (durable spool, Lua delivery to a sink):  {r:8.0} msg/s, server CPU {:.0} us/msg",
            server(relays)
        );
        println!(
            "    Postfix 3.7 (durable incoming queue, no delivery):    {p:8.0} msg/s, server CPU {:.0} us/msg",
            server(postfixes)
        );
        println!("    trivial SMTP responder, no storage:                  {t:8.0} msg/s");
        println!(
            "    relay / Postfix: {:.2} (target >= 2); relay / trivial: {:.2}",
            r / p,
            r / t
        );
    }
}

/// The filesystem type holding `path`, as `df` names it.
fn filesystem(path: &std::path::Path) -> String {
    Command::new("df")
        .args(["--output=fstype"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().nth(1).map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "unknown filesystem".into())
}
