//! The broker connections `kumo.amqp` publishes on.
//!
//! Connections are pooled per URI and shared by every client. The clients a
//! queue's delivery sessions build share one channel in confirm mode (per
//! broker), so the broker confirms their messages together (`multiple`
//! acks) as it does for one publisher with many in flight, while each
//! confirm still resolves to its own message's result; a client built
//! outside a session owns its channel. A channel or connection found closed
//! is replaced on the next use, so a broker restart heals without restarting
//! the relay.

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connection};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections opened to one broker when each one's channels are used up.
const MAX_CONNECTIONS_PER_BROKER: usize = 8;

/// Why talking to the broker failed; a stall is told apart so the pooled
/// connection can be dropped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// A publish or confirm got no answer in time.
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Failed(String),
}

impl From<Failure> for mlua::Error {
    fn from(f: Failure) -> mlua::Error {
        mlua::Error::runtime(f.to_string())
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Where a client connects: the URI and, for `amqps://`, an optional CA file
/// (PEM) trusted in addition to the system roots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub uri: String,
    pub ca_file: Option<String>,
}

impl Target {
    pub fn plain(uri: impl Into<String>) -> Target {
        Target {
            uri: uri.into(),
            ca_file: None,
        }
    }

    fn key(&self) -> String {
        format!("{}\0{}", self.uri, self.ca_file.as_deref().unwrap_or(""))
    }
}

/// Connections and idle confirm-mode channels, per broker URI.
#[derive(Default)]
pub struct AmqpPool {
    conns: Mutex<HashMap<String, Slot>>,
    idle_channels: Mutex<HashMap<String, Vec<Channel>>>,
    /// The channel the clients of one queue share, per broker and queue,
    /// while any of them lives.
    shared: Mutex<HashMap<String, Weak<SharedChannel>>>,
    /// One opener at a time per shared channel, so sessions starting
    /// together open one channel, not one each.
    openers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

tokio::task_local! {
    /// The queue whose delivery session is being opened: clients built
    /// meanwhile share that queue's channel.
    static SESSION_QUEUE: String;
}

/// Runs `f` (a session's constructor) as building clients for `queue`.
pub async fn for_queue<F: std::future::Future>(queue: String, f: F) -> F::Output {
    SESSION_QUEUE.scope(queue, f).await
}

/// A channel one or more clients publish on; the broker rejecting a
/// publish replaces it for all of them. When the last holder goes, the
/// channel goes back to the pool's idle ones.
pub struct SharedChannel {
    slot: Mutex<Option<Arc<Channel>>>,
    pool: Arc<AmqpPool>,
    target: Target,
    /// Shared by a queue's clients (not taken back by one client's close).
    pub shared: bool,
}

impl std::ops::Deref for SharedChannel {
    type Target = Mutex<Option<Arc<Channel>>>;
    fn deref(&self) -> &Self::Target {
        &self.slot
    }
}

impl Drop for SharedChannel {
    fn drop(&mut self) {
        let ch = self
            .slot
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(ch) = ch {
            self.pool.give_back(&self.target, Arc::unwrap_or_clone(ch));
        }
    }
}

fn connected(ch: &Option<Arc<Channel>>) -> bool {
    ch.as_ref().is_some_and(|c| c.status().connected())
}

fn open(slot: &Mutex<Option<Arc<Channel>>>) -> bool {
    connected(&slot.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The URI with any password hidden, for messages and logs.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &uri[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &uri[..s + 3], user, &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

impl AmqpPool {
    /// The `shard`th pooled connection to `target` (more than one only when
    /// the broker's per-connection channel limit is reached).
    async fn connection(
        &self,
        target: &Target,
        shard: usize,
        timeout: Duration,
    ) -> Result<Arc<Connection>, String> {
        let uri = target.uri.as_str();
        let key = target.key();
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{key}\0{shard}"))
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        *guard = None;
        if shard == 0 {
            self.idle_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: match &target.ca_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the CA file {path} for {}: {e}", redact(uri))
                })?),
                None => None,
            },
        };
        // Boxed: a connect's future is ~6 KB, and every future that may
        // connect (each `confirm:wait()`, through a channel's retirement)
        // would carry it inline, allocated and moved per message.
        let conn = tokio::time::timeout(timeout, Box::pin(super::connect::connect(uri, tls)))
            .await
            .map_err(|_| format!("connect to {} timed out after {timeout:?}", redact(uri)))?
            .map_err(|e| format!("connect to {}: {e}", redact(uri)))?;
        super::metrics::CONNECTIONS_OPENED
            .get_or_create(&super::metrics::label(uri))
            .inc();
        let conn = Arc::new(conn);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// A channel in confirm mode on a pooled connection to `target`.
    pub async fn channel(&self, target: &Target, timeout: Duration) -> Result<Channel, String> {
        let uri = target.uri.as_str();
        loop {
            let reused = self
                .idle_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&target.key())
                .and_then(Vec::pop);
            match reused {
                Some(ch) if ch.status().connected() => return Ok(ch),
                Some(_) => continue,
                None => break,
            }
        }
        for shard in 0..MAX_CONNECTIONS_PER_BROKER {
            let conn = self.connection(target, shard, timeout).await?;
            let open = async {
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>(ch)
            };
            match tokio::time::timeout(timeout, open).await {
                Err(_) => return Err(format!("opening a channel to {} timed out", redact(uri))),
                Ok(Ok(ch)) => return Ok(ch),
                // This connection's channels are used up: try the next one.
                Ok(Err(e)) if matches!(e.kind(), lapin::ErrorKind::ChannelsLimitReached) => {}
                Ok(Err(e)) => return Err(format!("opening a channel to {}: {e}", redact(uri))),
            }
        }
        Err(format!(
            "opening a channel to {}: all {MAX_CONNECTIONS_PER_BROKER} connections have reached the broker's channel limit",
            redact(uri)
        ))
    }

    /// The channel a new client publishes on: its queue's shared one when
    /// built by a session's constructor (reopened if closed), else its own.
    pub async fn client_channel(
        self: &Arc<Self>,
        target: &Target,
        timeout: Duration,
    ) -> Result<Arc<SharedChannel>, String> {
        let own = |ch: Channel, shared| {
            Arc::new(SharedChannel {
                slot: Mutex::new(Some(Arc::new(ch))),
                pool: self.clone(),
                target: target.clone(),
                shared,
            })
        };
        let Ok(queue) = SESSION_QUEUE.try_with(Clone::clone) else {
            return Ok(own(self.channel(target, timeout).await?, false));
        };
        let key = format!("{}\0{queue}", target.key());
        if let Some(s) = self.shared_slot(&key).filter(|s| open(s)) {
            return Ok(s);
        }
        let opener = {
            let mut openers = self.openers.lock().unwrap_or_else(|e| e.into_inner());
            openers.retain(|_, o| Arc::strong_count(o) > 1);
            openers.entry(key.clone()).or_default().clone()
        };
        let _one_at_a_time = opener.lock().await;
        let existing = self.shared_slot(&key);
        if let Some(s) = &existing
            && open(s)
        {
            return Ok(s.clone());
        }
        let ch = self.channel(target, timeout).await?;
        if let Some(s) = existing {
            let spare = {
                let mut slot = s.lock().unwrap_or_else(|e| e.into_inner());
                // A nack may have replaced it meanwhile (not under the opener).
                if connected(&slot) {
                    Some(ch)
                } else {
                    *slot = Some(Arc::new(ch));
                    None
                }
            };
            if let Some(ch) = spare {
                self.give_back(target, ch);
            }
            return Ok(s);
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.retain(|_, w| w.strong_count() > 0);
        let s = own(ch, true);
        shared.insert(key, Arc::downgrade(&s));
        Ok(s)
    }

    fn shared_slot(&self, key: &str) -> Option<Arc<SharedChannel>> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .and_then(Weak::upgrade)
    }

    /// Drops the pooled connections after one stalled (a publish or confirm
    /// timed out): a dead peer can look connected until heartbeats notice, and
    /// the next client should not wait on it.
    pub fn forget(&self, target: &Target) {
        let key = target.key();
        self.idle_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let slots: Vec<Slot> = {
            let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            (0..MAX_CONNECTIONS_PER_BROKER)
                .filter_map(|shard| conns.get(&format!("{key}\0{shard}")).cloned())
                .collect()
        };
        for slot in slots {
            if let Ok(mut guard) = slot.try_lock()
                && let Some(conn) = guard.take()
            {
                tracing::warn!(broker = %redact(&target.uri), "dropping a stalled broker connection");
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        conn.close(320, "stalled".into()),
                    )
                    .await;
                });
            }
        }
    }

    /// Forgets the connections when the failure was a stall.
    pub(super) fn after_error(&self, target: &Target, failure: &Failure) {
        if let Failure::TimedOut(_) = failure {
            self.forget(target);
        }
    }

    pub fn give_back(&self, target: &Target, ch: Channel) {
        if ch.status().connected() {
            self.idle_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(target.key())
                .or_default()
                .push(ch);
        }
    }
}
