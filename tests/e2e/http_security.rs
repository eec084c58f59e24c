//! The HTTP API closed by default: KumoMTA's Basic-auth event for peers
//! outside trusted_hosts, admin reserved to admin_users, bounded requests
//! and connections, HTTPS.

use crate::harness::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start() -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    crate::broker::make_certs(dir.path());
    let cert = dir.path().join("server.pem").display().to_string();
    let key = dir.path().join("server.key").display().to_string();
    let policy = write_policy(
        dir.path(),
        "policy.lua",
        &crate::policy_template("http_auth.lua"),
        &[("CERT", &cert), ("KEY", &key)],
    );
    let relay = Relay::start_listeners(&policy, &dir.path().join("spool"), 3, 0);
    (relay, dir)
}

fn inject_body(n: usize) -> String {
    let rcpts: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"email": format!("u{i}@amqp")}))
        .collect();
    serde_json::json!({"envelope_sender": "s@x.com", "content": "Subject: x\r\n\r\nx", "recipients": rcpts})
        .to_string()
}

async fn post(
    addr: SocketAddr,
    path: &str,
    auth: Option<(&str, &str)>,
    body: String,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some((u, p)) = auth {
        req = req.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))),
        );
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_by_the_policy_and_admin_is_reserved() {
    let (relay, _dir) = start();
    let a = relay.http_all[0];
    let (status, headers, body) = post(a, "/api/inject/v1", None, inject_body(1)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Basic realm=\"amqp-relay\"");
    let (status, _, _) = post(
        a,
        "/api/inject/v1",
        Some(("inject", "wrong")),
        inject_body(1),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = post(a, "/api/inject/v1", Some(("inject", "")), inject_body(1)).await;
    assert_eq!(status, 401);
    let (status, _, body) = post(a, "/api/inject/v1", Some(("boom", "x")), inject_body(1)).await;
    assert_eq!(status, 500, "an error in the policy: {body}");
    let (status, _, body) = post(
        a,
        "/api/inject/v1",
        Some(("inject", "in-secret")),
        inject_body(1),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    relay
        .await_metric("amqp_relay_received_total", 1.0, Duration::from_secs(10))
        .await;
    // Only a POST takes the injection's own path; another method gets the
    // router's answers: authentication first, then 405.
    let get = |auth: Option<(&str, &str)>| {
        let mut req = reqwest::Client::new().get(format!("http://{a}/api/inject/v1"));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some(("inject", "in-secret"))).await, 405);

    // The inject credential does not reach the admin API; the admin one does.
    let everything = serde_json::json!({"reason": "test", "everything": true}).to_string();
    let (status, _, body) = post(
        a,
        "/api/admin/bounce/v1",
        Some(("inject", "in-secret")),
        everything.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = post(a, "/api/admin/bounce/v1", None, everything.clone()).await;
    assert_eq!(status, 401);
    let (status, _, body) = post(
        a,
        "/api/admin/bounce/v1",
        Some(("admin", "admin-secret")),
        everything,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An empty criteria set is refused unless it says everything.
    let nothing = serde_json::json!({"reason": "oops"}).to_string();
    let (status, _, body) = post(
        a,
        "/api/admin/bounce/v1",
        Some(("admin", "admin-secret")),
        nothing.clone(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("everything"), "{body}");
    let (status, _, _) = post(
        a,
        "/api/admin/suspend/v1",
        Some(("admin", "admin-secret")),
        nothing,
    )
    .await;
    assert_eq!(status, 400);

    // Health, metrics and the policy report stay open.
    for path in [
        "/api/check-liveness/v1",
        "/readyz",
        "/metrics",
        "/api/policy",
    ] {
        let r = reqwest::get(format!("http://{a}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_bounded() {
    let (relay, _dir) = start();
    let a = relay.http_all[0];
    let auth = Some(("inject", "in-secret"));
    let (status, _, body) = post(a, "/api/inject/v1", auth, inject_body(6)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_recipients_per_request"), "{body}");
    let big = serde_json::json!({
        "envelope_sender": "s@x.com",
        "content": "x".repeat(100 * 1024),
        "recipients": [{"email": "u@amqp"}],
    })
    .to_string();
    let (status, _, _) = post(a, "/api/inject/v1", auth, big).await;
    assert_eq!(status, 413);
    assert_eq!(relay.metric("amqp_relay_received_total").await, 0.0);
}

/// Opens a connection that sends half a request head and nothing more.
async fn half_open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s
}

/// True once the server has closed `s` (within `limit`).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed_and_the_listener_keeps_serving() {
    let (relay, _dir) = start();
    let a = relay.http_all[0];
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(half_open(a).await);
    }
    // Served meanwhile.
    let r = reqwest::get(format!("http://{a}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    for c in &mut conns {
        assert!(
            closed_within(c, Duration::from_secs(10)).await,
            "a half-open connection was still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = reqwest::get(format!("http://{a}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_without_harm() {
    let (relay, _dir) = start();
    let b = relay.http_all[1];
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(half_open(b).await);
    }
    // The 21st is closed at once, before any byte is read from it.
    let mut extra = half_open(b).await;
    assert!(closed_within(&mut extra, Duration::from_millis(500)).await);
    // When the held ones time out, the listener serves again.
    for c in &mut held {
        assert!(closed_within(c, Duration::from_secs(10)).await);
    }
    let r = reqwest::get(format!("http://{b}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    // The other listeners were never affected.
    let r = reqwest::get(format!("http://{}/healthz", relay.http_all[0]))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_with_its_certificate() {
    let (relay, dir) = start();
    let c = relay.http_all[2];
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let sock = TcpStream::connect(c).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), sock)
        .await
        .expect("TLS handshake");
    let body = inject_body(1);
    tls.write_all(
        format!(
            "POST /api/inject/v1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Plain HTTP on the TLS port gets nowhere.
    let r = reqwest::get(format!("http://{c}/healthz")).await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
}
