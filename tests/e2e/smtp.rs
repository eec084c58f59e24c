//! SMTP reception with real clients over real sockets: lettre for the
//! ordinary case, a raw socket for pipelining, edge cases and abuse.

use crate::broker::Broker;
use crate::harness::*;
use lapin::types::{AMQPValue, FieldTable};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub struct Raw {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut raw = Raw {
            r: BufReader::new(r),
            w,
        };
        let (code, _) = raw.reply().await;
        assert_eq!(code, 220);
        raw
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
    }

    /// One (possibly multi-line) reply.
    pub async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .expect("a reply in time")
                .unwrap();
            assert!(n > 0, "connection closed; so far: {text:?}");
            text.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') || line.len() < 4 {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.r.read(&mut b)).await,
            Ok(Ok(0))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_clients_edge_cases_and_abuse() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "smtp-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("smtp.lua"),
        &[("QUEUE", "smtp-q"), ("URL", &broker.url())],
    );
    let relay = setup.relay().smtp_listeners(2).start();
    let (open, closed) = (relay.smtp[0], relay.smtp[1]);

    // A standard client, two recipients: two messages.
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let mail = Message::builder()
        .from("Sender <sender@example.com>".parse().unwrap())
        .to("one@amqp".parse().unwrap())
        .to("two@amqp".parse().unwrap())
        .subject("via lettre")
        .body(String::from("Hello over SMTP\n.leading dot\n"))
        .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(open.ip().to_string())
        .port(open.port())
        .build();
    let resp = transport.send(mail).await.expect("lettre delivers");
    assert!(resp.is_positive());

    // Pipelined, with dot-stuffing (bare line endings: smtp_security.rs).
    let mut c = Raw::connect(open).await;
    c.send(b"EHLO pipe.test\r\nMAIL FROM:<p@example.com>\r\nRCPT TO:<pipe@amqp>\r\nDATA\r\n")
        .await;
    let (code, ehlo) = c.reply().await;
    assert_eq!(code, 250);
    for ext in ["PIPELINING", "SIZE 4096", "8BITMIME", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(ext), "{ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate configured: {ehlo}"
    );
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 354);
    c.send(b"Subject: pipelined\r\n\r\n..hidden dot\r\nlast line\r\n.\r\n")
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");

    // Limits and refusals, each with its code.
    assert_eq!(
        c.cmd("MAIL FROM:<big@example.com> SIZE=999999").await.0,
        552
    );
    assert_eq!(c.cmd("MAIL FROM:<x@example.com>").await.0, 250);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@amqp>")).await.0, 250);
    }
    let (code, text) = c.cmd("RCPT TO:<r3@amqp>").await;
    assert_eq!((code, text.contains("4.5.3")), (452, true), "{text}");
    assert_eq!(c.cmd("DATA").await.0, 354);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(&[b'x'; 70]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b".\r\n");
    c.send(&big).await;
    assert_eq!(c.reply().await.0, 552);
    assert_eq!(c.cmd("MAIL FROM:<x@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<r@amqp>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"X-Reject: yes\r\n\r\nno\r\n.\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("rejected by policy"), "{text}");
    assert_eq!(c.cmd("RCPT TO:<r@amqp>").await.0, 503, "transaction ended");
    assert_eq!(c.cmd("FROB").await.0, 500);
    assert_eq!(c.cmd("VRFY someone").await.0, 252);
    assert_eq!(c.cmd("RSET").await.0, 250);
    assert_eq!(c.cmd("NOOP").await.0, 250);

    // Abuse: a 10 MB line and binary garbage get clear errors; the session goes on.
    let mut huge = vec![b'A'; 10 * 1024 * 1024];
    huge.extend_from_slice(b"\r\n");
    c.send(&huge).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("too long"), "{text}");
    c.send(b"\x00\xff\xfe\x01garbage\r\n").await;
    assert_eq!(c.reply().await.0, 500);
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(c.cmd("QUIT").await.0, 221);
    assert!(c.closed().await);

    // Relaying denied on the listener that trusts nobody here.
    let mut d = Raw::connect(closed).await;
    assert_eq!(d.cmd("HELO x").await.0, 250);
    assert_eq!(d.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    let (code, text) = d.cmd("RCPT TO:<u@amqp>").await;
    assert_eq!(code, 550);
    assert!(text.contains("5.7.1"), "{text}");

    // An idle client is told and dropped after client_timeout.
    let mut idle = Raw::connect(open).await;
    let (code, text) = idle.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(idle.closed().await);

    // Thousands of connections opened and dropped leave it serving.
    for _ in 0..2000 {
        drop(TcpStream::connect(open).await.unwrap());
    }
    let mut e = Raw::connect(open).await;
    assert_eq!(e.cmd("HELO after.storm").await.0, 250);
    assert_eq!(e.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(e.cmd("RCPT TO:<storm@amqp>").await.0, 250);
    assert_eq!(e.cmd("DATA").await.0, 354);
    c = e;
    c.send(b"Subject: after\r\n\r\nstill here\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);

    let got = consume(&conn, "smtp-q", 4, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 4, "relay log:\n{}", relay.log_text());
    let (received, bodies): (Vec<String>, Vec<String>) =
        got.iter().map(|d| split_received(&d.data)).unzip();
    for r in &received {
        assert!(r.starts_with("from ") && r.contains(" with ESMTP"), "{r}");
    }
    let lettre_bodies: Vec<_> = bodies.iter().filter(|b| b.contains("via lettre")).collect();
    assert_eq!(lettre_bodies.len(), 2, "{bodies:?}");
    assert!(
        lettre_bodies[0].contains("\r\n.leading dot\r\n"),
        "{bodies:?}"
    );
    assert!(
        bodies.contains(&"Subject: pipelined\r\n\r\n.hidden dot\r\nlast line\r\n".to_string()),
        "{bodies:?}"
    );
    // The reception hook set the tenant: the queue is tenant@domain.
    for d in &got {
        let q = match d
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("queue")
        {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(q, "smtp@amqp");
    }
}

async fn line<S: tokio::io::AsyncBufRead + Unpin>(r: &mut S) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut l))
        .await
        .expect("a reply in time")
        .unwrap();
    l
}

/// Reads a whole reply, returning it.
async fn reply<S: tokio::io::AsyncBufRead + Unpin>(r: &mut S) -> String {
    let mut all = String::new();
    loop {
        let l = line(r).await;
        assert!(!l.is_empty(), "closed after {all:?}");
        all.push_str(&l);
        if l.as_bytes().get(3) == Some(&b' ') {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_and_delivers() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "smtp-tls-q", FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    crate::broker::make_certs(dir.path());
    let cert = dir.path().join("server.pem").display().to_string();
    let key = dir.path().join("server.key").display().to_string();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("smtp_tls.lua"),
        &[
            ("QUEUE", "smtp-tls-q"),
            ("URL", &broker.url()),
            ("CERT", &cert),
            ("KEY", &key),
        ],
    );
    let relay = Relay::start_init(&policy, &dir.path().join("spool"), 1);

    let mut plain = BufReader::new(TcpStream::connect(relay.smtp[0]).await.unwrap());
    assert!(reply(&mut plain).await.starts_with("220 "));
    plain
        .get_mut()
        .write_all(b"EHLO tls.test\r\n")
        .await
        .unwrap();
    assert!(reply(&mut plain).await.contains("STARTTLS\r\n"));
    plain.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    assert!(reply(&mut plain).await.starts_with("220 "));

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector
        .connect("localhost".try_into().unwrap(), plain.into_inner())
        .await
        .expect("TLS handshake with the relay");
    let mut s = BufReader::new(tls);
    s.get_mut().write_all(b"EHLO tls.test\r\n").await.unwrap();
    let ehlo = reply(&mut s).await;
    assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
    for cmd in ["MAIL FROM:<a@example.com>", "RCPT TO:<secure@amqp>"] {
        s.get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .unwrap();
        assert!(reply(&mut s).await.starts_with("250"));
    }
    s.get_mut().write_all(b"DATA\r\n").await.unwrap();
    assert!(reply(&mut s).await.starts_with("354"));
    s.get_mut()
        .write_all(b"Subject: tls\r\n\r\nover TLS\r\n.\r\n")
        .await
        .unwrap();
    let done = reply(&mut s).await;
    assert!(done.starts_with("250"), "{done}");

    let got = consume(&conn, "smtp-tls-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "relay log:\n{}", relay.log_text());
    // KumoMTA's default trace header, naming TLS (RFC 3848) and the recipient.
    let (received, sent) = split_received(&got[0].data);
    assert_eq!(sent, "Subject: tls\r\n\r\nover TLS\r\n");
    assert!(received.contains(" with ESMTPS for <"), "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_is_decided_after_the_reception_event() {
    let broker = Broker::shared();
    let conn = broker.connect().await;
    declare_queue(&conn, "smtp-tenant-q", FieldTable::default()).await;
    let setup = Setup::new(
        &crate::policy_template("smtp_tenant.lua"),
        &[("QUEUE", "smtp-tenant-q"), ("URL", &broker.url())],
    );
    let relay = setup.relay().smtp_flag().start();
    let mut s = Raw::connect(relay.smtp[0]).await;
    assert_eq!(s.cmd("EHLO client.test").await.0, 250);
    // The bare domain has no route, but the tenant the reception event sets does.
    assert_eq!(s.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    let (code, text) = s.cmd("RCPT TO:<x@amqp>").await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(s.cmd("DATA").await.0, 354);
    let (code, text) = s
        .cmd("X-Tenant: billing\r\nSubject: t\r\n\r\nrouted by tenant\r\n.")
        .await;
    assert_eq!(code, 250, "{text}");
    // Another tenant is refused for the whole transaction, at DATA.
    assert_eq!(s.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(s.cmd("RCPT TO:<y@amqp>").await.0, 250);
    assert_eq!(s.cmd("DATA").await.0, 354);
    let (code, text) = s
        .cmd("X-Tenant: marketing\r\nSubject: t\r\n\r\nnot routed\r\n.")
        .await;
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.1.2") && text.contains("marketing@amqp"),
        "{text}"
    );
    assert_eq!(s.cmd("QUIT").await.0, 221);
    let got = consume(&conn, "smtp-tenant-q", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let queue = got[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("queue").cloned());
    assert_eq!(
        queue,
        Some(AMQPValue::LongString("billing@amqp".into())),
        "queued under the tenant the event set"
    );
}
