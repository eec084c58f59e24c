//! The ESMTP listener: configuration, accept loop and connection limit.

pub mod auth;
pub mod command;
pub mod data;
pub mod lines;
pub mod session;

use crate::engine::Engine;
use ipnet::IpNet;

use crate::listeners::memory::{MemoryBudget, Reservation};
pub use crate::model::listener_config::EsmtpListener;
use std::sync::Arc;
use std::time::Duration;

/// What a session needs, resolved once per listener.
pub struct Settings {
    pub cfg: EsmtpListener,
    pub relay_hosts: Vec<IpNet>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Bytes of message bodies the listener's sessions hold while receiving.
    pub data_memory: Arc<MemoryBudget>,
}

/// A message body being received, counted against its listener's data
/// memory from its first byte until it is dropped: after the message is
/// durable, not when it leaves the buffer.
pub struct DataBuffer {
    buf: Vec<u8>,
    held: Reservation,
}

impl DataBuffer {
    pub fn new(memory: &Arc<MemoryBudget>) -> Self {
        DataBuffer {
            buf: Vec::new(),
            held: Reservation::new(memory),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends the parts; false (and nothing appended) past the memory bound.
    pub fn extend(&mut self, parts: &[&[u8]]) -> bool {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if !self.held.grow(n) {
            return false;
        }
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        true
    }

    /// Drops what was received (the message is refused).
    pub fn clear(&mut self) {
        self.held.release();
        self.buf = Vec::new();
    }

    /// The bytes, without a copy; they stay counted until this buffer drops.
    pub fn take_bytes(&mut self) -> bytes::Bytes {
        bytes::Bytes::from(std::mem::take(&mut self.buf))
    }
}

impl Settings {
    pub fn new(cfg: EsmtpListener) -> Result<Settings, String> {
        let relay_hosts = crate::listeners::net::parse_nets(&cfg.relay_hosts)
            .map_err(|e| format!("esmtp listener {}: relay_hosts: {e}", cfg.listen))?;
        let tls = match (&cfg.tls_certificate, &cfg.tls_private_key) {
            (Some(cert), Some(key)) => Some(
                crate::listeners::net::tls_acceptor(cert, key)
                    .map_err(|e| format!("esmtp listener {}: {e}", cfg.listen))?,
            ),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "esmtp listener {}: give both tls_certificate and tls_private_key",
                    cfg.listen
                ));
            }
        };
        let data_memory = MemoryBudget::new(cfg.max_data_memory);
        Ok(Settings {
            cfg,
            relay_hosts,
            tls,
            data_memory,
        })
    }
}

/// Accepts connections until shutdown, then waits for the sessions to end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    settings: Settings,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.cfg.max_connections));
    let mut stop = engine.reception_signal();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        // Reap finished sessions so the set stays as large as the live ones.
        while sessions.try_join_next().is_some() {}
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "smtp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let _ = sock.set_nodelay(true);
        let permit = slots.clone().try_acquire_owned();
        let engine = engine.clone();
        let settings = settings.clone();
        sessions.spawn(async move {
            match permit {
                Ok(_permit) => session::run(sock, peer, settings, engine).await,
                Err(_) => session::refuse(sock, &settings.cfg.hostname).await,
            }
        });
    }
    // Sessions end at their next command; a transaction under way finishes.
    while sessions.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_stays_counted_until_its_buffer_drops() {
        let memory = MemoryBudget::new(10);
        let mut body = DataBuffer::new(&memory);
        assert!(body.extend(&[b"12345", b"678"]));
        assert!(!body.extend(&[b"abc"]), "past the bound");
        let bytes = body.take_bytes();
        assert_eq!(&bytes[..], b"12345678");
        // Handed on (to the spool) but not durable yet: still counted.
        assert_eq!(memory.used(), 8);
        assert!(!DataBuffer::new(&memory).extend(&[b"abc"]));
        drop(body);
        assert_eq!(memory.used(), 0);
        let mut refused = DataBuffer::new(&memory);
        assert!(refused.extend(&[b"abc"]));
        refused.clear();
        assert_eq!(memory.used(), 0);
    }
}
