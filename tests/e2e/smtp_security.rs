//! SMTP that cannot be smuggled or held open, and AUTH as KumoMTA does it:
//! over real sockets, plain and TLS.

use crate::broker::Broker;
use crate::harness::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lapin::types::{AMQPValue, FieldTable};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A line client over any stream.
struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, data: &[u8]) {
        self.io.get_mut().write_all(data).await.unwrap();
    }

    async fn reply(&mut self) -> (u16, String) {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.io.read_line(&mut line))
                .await
                .expect("a reply in time")
                .unwrap();
            assert!(n > 0, "connection closed after {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), all);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True when the server closes the connection (within 10 s).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 256];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

async fn plain(addr: std::net::SocketAddr) -> Client<TcpStream> {
    let mut c = Client {
        io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
    };
    assert_eq!(c.reply().await.0, 220);
    c
}

/// EHLO, STARTTLS, a TLS handshake trusting `ca`, EHLO again.
async fn tls(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> (Client<tokio_rustls::client::TlsStream<TcpStream>>, String) {
    let mut c = plain(addr).await;
    let (_, ehlo) = c.cmd("EHLO tls.test").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "no AUTH offered in the clear: {ehlo}"
    );
    assert_eq!(c.cmd("STARTTLS").await.0, 220);
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), c.io.into_inner())
        .await
        .expect("TLS handshake");
    let mut c = Client {
        io: BufReader::new(stream),
    };
    let (code, ehlo) = c.cmd("EHLO tls.test").await;
    assert_eq!(code, 250);
    (c, ehlo)
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn header(d: &lapin::message::Delivery, key: &str) -> String {
    match d.properties.headers().as_ref().unwrap().inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{key}: {other:?}"),
    }
}

struct Setup {
    relay: Relay,
    conn: lapin::Connection,
    dir: tempfile::TempDir,
}

async fn setup(queue: &str) -> Setup {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, queue, FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    crate::broker::make_certs(dir.path());
    let cert = dir.path().join("server.pem").display().to_string();
    let key = dir.path().join("server.key").display().to_string();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("smtp_auth.lua"),
        &[
            ("QUEUE", queue),
            ("URL", &broker.url()),
            ("CERT", &cert),
            ("KEY", &key),
        ],
    );
    let relay = Relay::start_init(&policy, &dir.path().join("spool"), 3);
    Setup { relay, conn, dir }
}

/// The smuggling payload: a bare LF before the dot, then a forged transaction.
const SMUGGLED: &[u8] = b"Subject: hi\r\n\r\nhello\n.\r\nMAIL FROM:<ceo@corp.example>\r\nRCPT TO:<victim@amqp>\r\nDATA\r\nSubject: forged\r\n\r\nwire the money\r\n.\r\n";

async fn send_smuggled(addr: std::net::SocketAddr) -> (Client<TcpStream>, u16, String) {
    let mut c = plain(addr).await;
    assert_eq!(c.cmd("EHLO x").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(SMUGGLED).await;
    let (code, text) = c.reply().await;
    (c, code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_dot_cannot_smuggle_a_second_message() {
    let s = setup("smuggle-q").await;
    // KumoMTA's default (invalid_line_endings = Deny): one refusal for the
    // whole payload, the session in step, nothing queued.
    let (mut c, code, text) = send_smuggled(s.relay.smtp[1]).await;
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.6.0") && text.contains("bare LF"), "{text}");
    assert_eq!(
        c.cmd("NOOP").await.0,
        250,
        "no replies for a second transaction"
    );
    // Refused before the reply: nothing was taken in.
    assert_eq!(s.relay.metric("amqp_relay_received_total").await, 0.0);

    // Fix: one message, the would-be commands kept as its text.
    let (mut c, code, text) = send_smuggled(s.relay.smtp[2]).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(
        s.relay.metric("amqp_relay_received_total").await,
        1.0,
        "exactly one message"
    );
    let got = consume(&s.conn, "smuggle-q", 1, Duration::from_secs(5)).await;
    assert_eq!(header(&got[0], "sender"), "alice@example.com");
    let body = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        body.contains("hello\r\n.\r\nMAIL FROM:<ceo@corp.example>\r\n"),
        "kept as text, line endings fixed: {body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_timeout_closes_the_connection() {
    let s = setup("data-timeout-q").await;
    let mut c = plain(s.relay.smtp[1]).await;
    assert_eq!(c.cmd("EHLO x").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"Subject: slow\r\n\r\nhalf a body").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    // What follows is not read as commands: the connection is gone.
    c.send(b"\r\nRSET\r\nMAIL FROM:<x@example.com>\r\n").await;
    assert!(c.closed().await, "closed after the DATA timeout");
    let got = consume(&s.conn, "data-timeout-q", 1, Duration::from_secs(2)).await;
    assert!(got.is_empty());
}

/// A client that pipelines without ever reading its replies: the relay
/// keeps only a few KiB of replies, its writes time out after
/// `client_timeout` (1 s here), and the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_disconnected() {
    let s = setup("unread-q").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.relay.smtp[1]).await.unwrap();
    let (_read_half, mut write_half) = stream.into_split();
    // Megabytes of pipelined commands, written by a task that may block.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let burst = "NOOP\r\n".repeat(100_000);
        let mut sent = 0;
        for _ in 0..20 {
            if write_half.write_all(burst.as_bytes()).await.is_err() {
                break;
            }
            sent += burst.len();
        }
        sent
    });
    // The relay gives up on the session and closes it: the writer's next
    // write fails (with the relay blocked on its write forever, it never would).
    let sent = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the relay closed the session")
        .unwrap();
    assert!(
        sent < 20 * 600_000,
        "the relay kept reading all {sent} bytes"
    );
    // It said why (the log line may reach us a moment after the close).
    s.relay
        .await_log(&["does not read its replies"], Duration::from_secs(10))
        .await;
    // And the listener serves others.
    let mut c = plain(s.relay.smtp[1]).await;
    assert_eq!(c.cmd("EHLO x").await.0, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_memory_bound_get_a_temporary_refusal() {
    let s = setup("data-memory-q").await;
    let mut c = plain(s.relay.smtp[1]).await;
    assert_eq!(c.cmd("EHLO x").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y\r\n".repeat(3000));
    c.send(big.as_bytes()).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.3.1"), "{text}");
    // The budget came back: a small message goes through on the same connection.
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    assert_eq!(c.cmd("Subject: small\r\n\r\nfits\r\n.").await.0, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_and_login_over_tls_let_a_client_relay() {
    let s = setup("smtp-auth-q").await;
    let addr = s.relay.smtp[0];
    let ca = s.dir.path().join("ca.pem");

    // In the clear: STARTTLS is required, AUTH refused, nobody relays.
    let mut c = plain(addr).await;
    assert_eq!(c.cmd("EHLO x").await.0, 250);
    let (code, text) = c
        .cmd(&format!("AUTH PLAIN {}", b64("\0daniel\0tiger")))
        .await;
    assert_eq!(code, 538, "{text}");
    let (code, text) = c.cmd("MAIL FROM:<a@example.com>").await;
    assert_eq!(code, 530, "{text}");

    // Over TLS: AUTH is offered; without it nobody relays.
    let (mut c, ehlo) = tls(addr, &ca).await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    let (code, text) = c.cmd("RCPT TO:<x@amqp>").await;
    assert_eq!(code, 550, "{text}");
    assert_eq!(c.cmd("RSET").await.0, 250);
    // Wrong passwords (each answered more slowly), a failing policy, then the right one.
    let mut pauses = Vec::new();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let (code, _) = c
            .cmd(&format!("AUTH PLAIN {}", b64("\0daniel\0lion")))
            .await;
        assert_eq!(code, 535);
        pauses.push(t.elapsed());
    }
    assert!(
        pauses[0] >= Duration::from_secs(1) && pauses[1] >= Duration::from_secs(2),
        "failed AUTH answered after {pauses:?}"
    );
    let (code, _) = c.cmd(&format!("AUTH PLAIN {}", b64("\0boom\0x"))).await;
    assert_eq!(code, 454, "an error in the policy is temporary");
    let (code, _) = c.cmd("AUTH PLAIN").await;
    assert_eq!(code, 334);
    let (code, text) = c.cmd(&b64("\0daniel\0tiger")).await;
    assert_eq!(code, 235, "{text}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0daniel\0tiger")))
            .await
            .0,
        503
    );
    assert_eq!(c.cmd("MAIL FROM:<daniel@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<plain@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    assert_eq!(c.cmd("Subject: p\r\n\r\nby plain\r\n.").await.0, 250);

    // AUTH LOGIN, step by step; `*` cancels.
    let (mut c, _) = tls(addr, &ca).await;
    assert_eq!(c.cmd("AUTH LOGIN").await.0, 334);
    assert_eq!(c.cmd("*").await.0, 501);
    assert_eq!(c.cmd("AUTH LOGIN").await.0, 334);
    assert_eq!(c.cmd(&b64("daniel")).await.0, 334);
    let (code, text) = c.cmd(&b64("tiger")).await;
    assert_eq!(code, 235, "{text}");
    assert_eq!(c.cmd("MAIL FROM:<daniel@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<login@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    assert_eq!(c.cmd("Subject: l\r\n\r\nby login\r\n.").await.0, 250);
    assert_eq!(c.cmd("AUTH LOGIN").await.0, 503, "once per session");

    let got = consume(&s.conn, "smtp-auth-q", 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "relay log:\n{}", s.relay.log_text());
    // The authenticated identity reached the policy (it set the tenant from it).
    for d in &got {
        assert!(
            header(d, "queue").starts_with("daniel@"),
            "{}",
            header(d, "queue")
        );
    }
}
