//! SMTP reception throughput with 8 concurrent clients, each sending
//! messages over one connection (MAIL, RCPT and DATA pipelined). Measured
//! against the relay (durable spool, Lua delivery to a sink) and, in the same
//! run, against a trivial SMTP responder that stores nothing: the client and
//! protocol cost alone, i.e. the most any server could reach here.
//!
//! Run: `cargo bench --bench smtp`

#[path = "common/relay_log.rs"]
mod relay_log;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 1000;

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

async fn load(addr: SocketAddr, body: &'static [u8]) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(addr, PER_CLIENT, body)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (CLIENTS * PER_CLIENT) as f64 / start.elapsed().as_secs_f64()
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

#[tokio::main]
async fn main() {
    let body: &'static [u8] = Box::leak(
        format!("Subject: bench\r\n\r\n{}\r\n.\r\n", "x".repeat(1000))
            .into_bytes()
            .into_boxed_slice(),
    );
    let baseline = load(sink_server().await, body).await;

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.lua");
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
        .arg(dir.path().join("spool"))
        .env("RUST_LOG", "warn,amqp_relay::listeners=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = relay_log::listener_addr(&mut relay, "smtp")
        .parse()
        .expect("a socket address");
    let relay_rate = load(addr, body).await;
    let _ = relay.kill();
    let _ = relay.wait();

    println!("SMTP, {CLIENTS} clients x {PER_CLIENT} messages of 1 KiB, MAIL/RCPT/DATA pipelined:");
    println!("  amqp-relay (durable spool, Lua delivery to a sink): {relay_rate:8.0} msg/s");
    println!("  baseline: trivial SMTP responder, no storage:     {baseline:8.0} msg/s (same run)");
    println!("  relay / baseline: {:.2}", relay_rate / baseline);
}
