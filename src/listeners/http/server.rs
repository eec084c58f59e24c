//! Serving the HTTP API on a socket with bounds on every connection: at
//! most `max_connections` at once, request headers within `header_timeout`,
//! a whole request within `request_timeout`, optional TLS, and a graceful
//! stop that lets requests under way finish.

use super::{AppState, injection};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

/// How a listener treats its connections.
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `router` until `stop`, then waits for the requests under way.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    state: AppState,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (conns_tx, mut conns) = tokio::sync::mpsc::unbounded_channel::<()>();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "http connection refused: at max_connections");
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let app = App {
            router: router.clone(),
            state: state.clone(),
        };
        let (limits, watcher) = (limits.clone(), graceful.watcher());
        let conns_tx = conns_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _tracked = conns_tx;
            let served = match &limits.tls {
                None => connection(sock, peer, app, &limits, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(sock)).await {
                        Ok(Ok(tls)) => connection(tls, peer, app, &limits, watcher).await,
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
        });
    }
    drop(conns_tx);
    // Idle keep-alive connections close now; requests under way finish.
    graceful.shutdown().await;
    while conns.recv().await.is_some() {}
    Ok(())
}

/// What a connection's requests go to: injections straight to their
/// handler, the rest through the router.
#[derive(Clone)]
struct App {
    router: Router,
    state: AppState,
}

async fn connection<S>(
    io: S,
    peer: SocketAddr,
    app: App,
    limits: &Limits,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let app = app.clone();
        async move {
            let answer = async {
                if injection::is_injection(&req) {
                    return Ok(injection::direct(&app.state, peer, req).await);
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                app.router.clone().call(req).await
            };
            match tokio::time::timeout(request_timeout, answer).await {
                Ok(r) => r,
                Err(_) => Ok(super::timed_out(request_timeout)),
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    watcher.watch(conn).await.map_err(|e| e.to_string())
}
