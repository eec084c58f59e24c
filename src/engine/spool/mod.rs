//! The durable spool: redb, one record per message (envelope and body
//! together), and a schedule on disk so that memory does not grow with the
//! backlog; in front of it a journal for new messages held in memory.
//!
//! A message is either *active* (the engine holds it: ready or being
//! delivered) or *scheduled* (on disk only, indexed by queue and due time).
//! The engine keeps at most a configured number active and pages scheduled
//! messages in as room frees up, as Postfix's queue manager does with its
//! active queue.
//!
//! A single writer thread owns the files and commits in groups: every
//! operation that arrived while the previous commit was running goes into the
//! next one, which fsyncs once if it holds new messages (and under
//! concurrent load waits a moment for more: `group_commit`). A new active
//! message with its own body goes to the journal (an append), the rest to
//! redb; an active message moves into redb when it is scheduled for a retry
//! or when the journal is emptied (`journal`). An insert resolves only after
//! the sync holding it, so the listeners acknowledge only durable messages.
//! Removals and retry bookkeeping ride along with later commits: a crash can
//! then redeliver a message, never lose one.

mod active_sets;
mod direct_file;
mod group_commit;
mod journal;
#[cfg(test)]
mod power_loss;
pub mod stats;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use crate::model::message::{Message, MessageId, MessageRef};
use bytes::Bytes;
use std::path::Path;
use tokio::sync::{mpsc, oneshot};
pub use writer::{DEFAULT_CACHE_BYTES, DueQueues, Paged, SpoolCounts};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool at {path}: {reason}")]
    Open { path: String, reason: String },
    /// The file system has no space (ENOSPC) or the quota is used up (EDQUOT).
    #[error("spool is out of space: {0}")]
    Full(String),
    #[error("spool write failed: {0}")]
    Io(String),
    #[error("spool is shut down")]
    Closed,
}

impl SpoolError {
    /// True when the cause is lack of space: the caller should refuse new mail temporarily.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full(_))
    }

    fn from_io(e: std::io::Error) -> SpoolError {
        if is_out_of_space(&e) {
            SpoolError::Full(e.to_string())
        } else {
            SpoolError::Io(e.to_string())
        }
    }

    /// Classifies a redb error by the I/O error under it, not by its text.
    fn from_redb(e: impl Into<redb::Error>) -> SpoolError {
        let e: redb::Error = e.into();
        let full = match &e {
            redb::Error::Io(io) => is_out_of_space(io),
            _ => false,
        };
        if full {
            SpoolError::Full(e.to_string())
        } else {
            SpoolError::Io(e.to_string())
        }
    }
}

impl Clone for SpoolError {
    fn clone(&self) -> Self {
        match self {
            SpoolError::Open { path, reason } => SpoolError::Open {
                path: path.clone(),
                reason: reason.clone(),
            },
            SpoolError::Full(r) => SpoolError::Full(r.clone()),
            SpoolError::Io(r) => SpoolError::Io(r.clone()),
            SpoolError::Closed => SpoolError::Closed,
        }
    }
}

/// ENOSPC or EDQUOT.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// A message to store, and where it goes.
pub struct NewMessage<'a> {
    pub msg: &'a Message,
    pub queue: &'a str,
    /// The engine keeps it in memory; otherwise it goes on the schedule.
    pub active: bool,
}

/// What opening found.
pub use tables::Opened;

/// Bodies smaller than this are stored with each message even when shared.
const SHARE_FROM: usize = 256;

/// A body's identity in memory: recipients of one message share the buffer.
fn body_key(b: &Bytes) -> (usize, usize) {
    (b.as_ptr() as usize, b.len())
}

/// The bodies more than one of `messages` carry (and large enough to be
/// worth it), keyed by identity: (shared id, bytes, how many refer to it).
fn shared_bodies(
    messages: &[NewMessage<'_>],
    bodies: &[Option<Bytes>],
) -> std::collections::HashMap<(usize, usize), (u128, Bytes, u64)> {
    let mut seen: std::collections::HashMap<(usize, usize), (u128, Bytes, u64)> =
        std::collections::HashMap::new();
    for (n, body) in messages.iter().zip(bodies) {
        if let Some(b) = body.as_ref().filter(|b| b.len() >= SHARE_FROM) {
            seen.entry(body_key(b))
                .or_insert_with(|| (n.msg.id().as_u128(), b.clone(), 0))
                .2 += 1;
        }
    }
    seen.retain(|_, (_, _, refs)| *refs > 1);
    seen
}

#[derive(Clone)]
pub struct Spool {
    ops: mpsc::UnboundedSender<writer::Op>,
    removals: writer::Removals,
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

impl Spool {
    /// Opens (or creates) the spool in `dir`; every message it holds is on
    /// the schedule, to be paged in.
    pub fn open(dir: &Path) -> Result<(Spool, Opened), SpoolError> {
        Spool::open_with_cache(dir, writer::DEFAULT_CACHE_BYTES)
    }

    /// As `open`, with redb's page cache at `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<(Spool, Opened), SpoolError> {
        let (ops, removals, opened) = writer::start(dir, cache_bytes, journal::DEFAULT_LIMIT)?;
        Ok((Spool { ops, removals }, opened))
    }

    /// As `open`, with the journal emptied into redb once it is `limit` bytes long.
    #[cfg(test)]
    fn open_with_journal_limit(dir: &Path, limit: u64) -> Result<(Spool, Opened), SpoolError> {
        let (ops, removals, opened) = writer::start(dir, writer::DEFAULT_CACHE_BYTES, limit)?;
        Ok((Spool { ops, removals }, opened))
    }

    /// A spool on an open database (a test's own storage backend).
    #[cfg(test)]
    fn open_on(
        db: redb::Database,
        journal: Box<dyn redb::StorageBackend>,
        journal_limit: u64,
        opener: writer::Opener,
    ) -> Result<(Spool, Opened), SpoolError> {
        let (ops, removals, opened) =
            writer::start_on(db, journal, journal_limit, opener, "test backend")?;
        Ok((Spool { ops, removals }, opened))
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> writer::Op) -> Result<T, SpoolError> {
        let (done, wait) = oneshot::channel();
        self.ops.send(op(done)).map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }

    /// Stores messages durably; resolves after the commit that holds them.
    /// Messages that carry the same body (the recipients of one injection)
    /// store it once.
    pub async fn insert(&self, messages: &[NewMessage<'_>]) -> Result<(), SpoolError> {
        let bodies: Vec<Option<Bytes>> = messages.iter().map(|n| n.msg.data()).collect();
        let shared = shared_bodies(messages, &bodies);
        let items = messages
            .iter()
            .zip(&bodies)
            .map(|(n, body)| {
                let stored = match body.as_ref().and_then(|b| shared.get(&body_key(b))) {
                    Some((id, _, _)) => tables::StoredBody::Shared(*id),
                    None => tables::StoredBody::Inline(body.as_deref().unwrap_or_default()),
                };
                writer::Insert {
                    id: n.msg.id().as_u128(),
                    queue: n.queue.to_owned(),
                    due: n.msg.due_or_created(),
                    active: n.active,
                    record: tables::encode_record(
                        &tables::encode_envelope(&n.msg.envelope()),
                        stored,
                    ),
                }
            })
            .collect();
        let bodies = shared.into_values().collect();
        self.call(|done| writer::Op::Insert {
            items,
            bodies,
            done,
        })
        .await
    }

    /// Puts an active message back on the schedule at its due time, with its
    /// retry bookkeeping (and its body, if the policy changed it).
    pub fn schedule(&self, msg: &Message, queue: &str) {
        let _ = self.ops.send(writer::Op::Schedule {
            id: msg.id().as_u128(),
            queue: queue.to_owned(),
            due: msg.due_or_created(),
            envelope: tables::encode_envelope(&msg.envelope()),
            body: msg.take_dirty_body(),
        });
    }

    /// Forgets an active message that reached a final state; durable with a
    /// later commit. The writer is woken once per batch of removals, not per one.
    pub fn remove(&self, id: MessageId) {
        let first = {
            let mut ids = self.removals.lock().unwrap_or_else(|e| e.into_inner());
            ids.push(id.as_u128());
            ids.len() == 1
        };
        if first {
            let _ = self.ops.send(writer::Op::Removals);
        }
    }

    /// Makes up to `max` scheduled messages of `queue` that are due active;
    /// those older than `max_age_ms` are removed and returned apart. Bodies
    /// come along while they fit in `body_bytes`.
    pub async fn page_in(
        &self,
        queue: &str,
        max: usize,
        max_age_ms: u64,
        body_bytes: usize,
    ) -> Result<Paged, SpoolError> {
        let queue = queue.to_owned();
        self.call(|done| writer::Op::PageIn {
            queue,
            max,
            now: crate::model::message::now_ms(),
            max_age_ms,
            body_bytes,
            done,
        })
        .await
    }

    /// Reads the bodies of active messages that do not have theirs in memory.
    pub async fn load_bodies(&self, msgs: &[MessageRef]) -> Result<(), SpoolError> {
        let ids: Vec<u128> = msgs
            .iter()
            .filter(|m| !m.has_body())
            .map(|m| m.id().as_u128())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let bodies = self.call(|done| writer::Op::Bodies { ids, done }).await?;
        let mut bodies = bodies.into_iter();
        for m in msgs.iter().filter(|m| !m.has_body()) {
            match bodies.next().flatten() {
                Some(b) => m.attach_body(b),
                None => {
                    return Err(SpoolError::Io(format!(
                        "message {} has no record in the spool",
                        m.id()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Queues with scheduled messages due now (up to `limit`, leaving out
    /// those `skip` names), and when the next one falls due.
    pub async fn due_queues(
        &self,
        limit: usize,
        skip: Box<dyn Fn(&str) -> bool + Send>,
    ) -> Result<DueQueues, SpoolError> {
        let now = crate::model::message::now_ms();
        self.call(|done| writer::Op::DueQueues {
            now,
            limit,
            skip,
            done,
        })
        .await
    }

    /// Removes up to `max` scheduled messages of `queue` and returns them,
    /// bodies included (an administrative bounce).
    pub async fn take_scheduled(
        &self,
        queue: &str,
        max: usize,
    ) -> Result<Vec<Message>, SpoolError> {
        self.take_due(queue, u64::MAX, max).await
    }

    /// As `take_scheduled`, only messages due at or before `until` (unix ms),
    /// earliest first.
    pub async fn take_due(
        &self,
        queue: &str,
        until: u64,
        max: usize,
    ) -> Result<Vec<Message>, SpoolError> {
        let queue = queue.to_owned();
        self.call(|done| writer::Op::TakeScheduled {
            queue,
            until,
            max,
            done,
        })
        .await
    }

    /// Makes up to `max` messages waiting for a later retry due now; returns
    /// how many it moved (fewer than `max`: none is left).
    pub async fn retry_now(&self, max: usize) -> Result<u64, SpoolError> {
        let now = crate::model::message::now_ms();
        self.call(|done| writer::Op::RetryNow { now, max, done })
            .await
    }

    /// How many messages the spool holds: all, active, and scheduled per queue.
    pub async fn counts(&self) -> Result<SpoolCounts, SpoolError> {
        self.call(|done| writer::Op::Counts { done }).await
    }

    /// Makes every earlier operation durable.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.call(writer::Op::Flush).await
    }

    /// Makes every earlier operation durable and closes the database; later
    /// operations fail with `Closed`.
    pub async fn close(&self) -> Result<(), SpoolError> {
        self.call(writer::Op::Close).await
    }
}
