//! The durable spool: redb, one record per message (envelope and body
//! together, so a message costs one B-tree insert and one removal).
//!
//! A single writer thread owns the database and commits in groups: every
//! insert that arrived while the previous commit was running goes into the
//! next one, which fsyncs once. A caller's insert resolves only after the
//! commit holding it, so the listeners acknowledge only durable messages.
//! Removals and retry bookkeeping ride along with later commits: a crash can
//! then redeliver a message, never lose one.

use crate::model::message::{Envelope, Message, MessageId};
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// `u32` LE envelope length, the envelope (JSON), then the body.
const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
/// The first layout (bodies and envelopes apart); migrated into `MESSAGES` on open.
const OLD_DATA: TableDefinition<u128, &[u8]> = TableDefinition::new("data");
const OLD_META: TableDefinition<u128, &[u8]> = TableDefinition::new("meta");
/// Records that could not be decoded are moved here, not deleted, for an operator to look at.
const QUARANTINE: TableDefinition<u128, &[u8]> = TableDefinition::new("quarantine");

/// How long deferred removals may wait for an fsync.
const LAZY_SYNC: Duration = Duration::from_secs(1);
/// Upper bound of operations folded into one commit.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error, Clone)]
pub enum SpoolError {
    #[error("spool at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("spool write failed: {0}")]
    Write(String),
    #[error("spool is shut down")]
    Closed,
}

impl SpoolError {
    /// True when the cause is lack of space: the caller should refuse new mail temporarily.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Write(r) if r.contains("No space left") || r.contains("os error 28") || r.contains("Disk quota"))
    }
}

enum Op {
    Insert {
        records: Vec<(MessageId, Vec<u8>)>,
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
    UpdateMeta(MessageId, Vec<u8>),
    Remove(MessageId),
    Flush(oneshot::Sender<Result<(), SpoolError>>),
}

#[derive(Clone)]
pub struct Spool {
    ops: mpsc::UnboundedSender<Op>,
}

/// What was found in the spool at start.
pub struct Recovered {
    pub messages: Vec<Message>,
    pub quarantined: usize,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, returns it with every message it held.
    pub fn open(dir: &Path) -> Result<(Spool, Recovered), SpoolError> {
        let open_err = |reason: String| SpoolError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let path = dir.join("spool.redb");
        let db = open_db(&path).map_err(|e| open_err(e.to_string()))?;
        let recovered = recover(&db).map_err(open_err)?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| open_err("the spool needs a tokio runtime".into()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                Writer {
                    rt,
                    db: Some(db),
                    path,
                }
                .run(rx)
            })
            .map_err(|e| open_err(e.to_string()))?;
        Ok((Spool { ops: tx }, recovered))
    }

    /// Stores messages durably; resolves after the commit that holds them.
    pub async fn insert(&self, messages: &[&Message]) -> Result<(), SpoolError> {
        let records = messages
            .iter()
            .map(|m| {
                (
                    m.id(),
                    encode_record(&encode_envelope(&m.envelope()), &m.data()),
                )
            })
            .collect();
        let (done, wait) = oneshot::channel();
        self.ops
            .send(Op::Insert { records, done })
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records new retry bookkeeping; durable with a later commit.
    pub fn update(&self, message: &Message) {
        let _ = self.ops.send(Op::UpdateMeta(
            message.id(),
            encode_envelope(&message.envelope()),
        ));
    }

    /// Forgets a message that reached a final state; durable with a later commit.
    pub fn remove(&self, id: MessageId) {
        let _ = self.ops.send(Op::Remove(id));
    }

    /// Makes every earlier operation durable.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.ops
            .send(Op::Flush(done))
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }
}

/// Bodies live in memory already; redb's own cache need not hold them too.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

fn encode_envelope(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(e).expect("an envelope is plain JSON data")
}

fn encode_record(envelope: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(4 + envelope.len() + body.len());
    r.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    r.extend_from_slice(envelope);
    r.extend_from_slice(body);
    r
}

/// The envelope bytes and the body of a record.
fn split_record(r: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let len = r
        .first_chunk::<4>()
        .map(|n| u32::from_le_bytes(*n) as usize)
        .ok_or("record shorter than its header")?;
    let rest = &r[4..];
    if len > rest.len() {
        return Err(format!(
            "envelope length {len} exceeds the record's {} bytes",
            rest.len()
        ));
    }
    Ok(rest.split_at(len))
}

fn decode_record(key: u128, r: &[u8]) -> Result<Message, String> {
    let (env, body) = split_record(r)?;
    let env: Envelope = serde_json::from_slice(env).map_err(|e| e.to_string())?;
    Ok(Message::from_parts(
        MessageId::from_u128(key),
        env,
        Bytes::copy_from_slice(body),
    ))
}

/// Moves messages of the two-table layout into `MESSAGES`, in one transaction;
/// returns how many were torn (envelope without body) and set aside.
fn migrate(db: &Database) -> Result<usize, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let w = db.begin_write().map_err(|x| e(&x))?;
    let names: Vec<String> = w
        .list_tables()
        .map_err(|x| e(&x))?
        .map(|t| t.name().to_owned())
        .collect();
    if !names.iter().any(|n| n == OLD_META.name()) {
        return Ok(0);
    }
    let (mut moved, mut torn) = (0, 0);
    {
        let meta = w.open_table(OLD_META).map_err(|x| e(&x))?;
        let data = w.open_table(OLD_DATA).map_err(|x| e(&x))?;
        let mut messages = w.open_table(MESSAGES).map_err(|x| e(&x))?;
        let mut q = w.open_table(QUARANTINE).map_err(|x| e(&x))?;
        for row in meta.iter().map_err(|x| e(&x))? {
            let (k, env) = row.map_err(|x| e(&x))?;
            let key = k.value();
            match data.get(key).map_err(|x| e(&x))? {
                Some(body) => {
                    messages
                        .insert(key, encode_record(env.value(), body.value()).as_slice())
                        .map_err(|x| e(&x))?;
                    moved += 1;
                }
                None => {
                    tracing::error!(id = %MessageId::from_u128(key), "spool record without a body set aside in the quarantine table");
                    q.insert(key, env.value()).map_err(|x| e(&x))?;
                    torn += 1;
                }
            }
        }
    }
    w.delete_table(OLD_META).map_err(|x| e(&x))?;
    w.delete_table(OLD_DATA).map_err(|x| e(&x))?;
    w.commit().map_err(|x| e(&x))?;
    tracing::info!(messages = moved, "spool migrated to one record per message");
    Ok(torn)
}

fn recover(db: &Database) -> Result<Recovered, String> {
    let torn = migrate(db)?;
    // Make sure the tables exist so a fresh spool reads as empty.
    let w = db.begin_write().map_err(|e| e.to_string())?;
    {
        w.open_table(MESSAGES).map_err(|e| e.to_string())?;
        w.open_table(QUARANTINE).map_err(|e| e.to_string())?;
    }
    w.commit().map_err(|e| e.to_string())?;

    let mut messages = Vec::new();
    let mut bad: Vec<(u128, Vec<u8>, String)> = Vec::new();
    {
        let r = db.begin_read().map_err(|e| e.to_string())?;
        let table = r.open_table(MESSAGES).map_err(|e| e.to_string())?;
        for row in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            match decode_record(k.value(), v.value()) {
                Ok(m) => messages.push(m),
                Err(why) => bad.push((k.value(), v.value().to_vec(), why)),
            }
        }
    }
    if !bad.is_empty() {
        let w = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = w.open_table(MESSAGES).map_err(|e| e.to_string())?;
            let mut q = w.open_table(QUARANTINE).map_err(|e| e.to_string())?;
            for (key, raw, why) in &bad {
                tracing::error!(id = %MessageId::from_u128(*key), reason = %why, "corrupt spool record set aside in the quarantine table");
                q.insert(*key, raw.as_slice()).map_err(|e| e.to_string())?;
                table.remove(*key).map_err(|e| e.to_string())?;
            }
        }
        w.commit().map_err(|e| e.to_string())?;
    }
    Ok(Recovered {
        messages,
        quarantined: torn + bad.len(),
    })
}

struct Writer {
    rt: tokio::runtime::Handle,
    db: Option<Database>,
    path: PathBuf,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = if unsynced {
                // Deferred work is waiting for an fsync: wake up for it.
                let wait = LAZY_SYNC.saturating_sub(last_sync.elapsed());
                match self
                    .rt
                    .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                {
                    Ok(Some(op)) => Some(op),
                    Err(_elapsed) => None,
                    Ok(None) => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(op) => Some(op),
                    None => break,
                }
            };
            let mut batch: Vec<Op> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let must_sync = batch
                .iter()
                .any(|op| matches!(op, Op::Insert { .. } | Op::Flush(_)))
                || last_sync.elapsed() >= LAZY_SYNC;
            let result = self.commit(&batch, must_sync);
            if must_sync && result.is_ok() {
                last_sync = Instant::now();
                unsynced = false;
            } else if result.is_ok() {
                unsynced = true;
            }
            if let Err(e) = &result {
                tracing::error!(error = %e, "spool commit failed");
                // redb refuses further writes after an I/O error; reopen next time.
                self.db = None;
            }
            for op in batch {
                match op {
                    Op::Insert { done, .. } | Op::Flush(done) => {
                        let _ = done.send(result.clone());
                    }
                    // Lost bookkeeping after a failed commit only means a redelivery.
                    Op::UpdateMeta(..) | Op::Remove(_) => {}
                }
            }
        }
        if let Some(db) = self.db.take() {
            drop(db);
        }
    }

    fn commit(&mut self, batch: &[Op], sync: bool) -> Result<(), SpoolError> {
        let werr = |e: &dyn std::fmt::Display| SpoolError::Write(e.to_string());
        if self.db.is_none() {
            self.db = Some(open_db(&self.path).map_err(|e| werr(&e))?);
        }
        let db = self.db.as_ref().expect("opened above");
        let mut w = db.begin_write().map_err(|e| werr(&e))?;
        w.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| werr(&e))?;
        {
            let mut table = w.open_table(MESSAGES).map_err(|e| werr(&e))?;
            for op in batch {
                match op {
                    Op::Insert { records, .. } => {
                        for (id, record) in records {
                            table
                                .insert(id.as_u128(), record.as_slice())
                                .map_err(|e| werr(&e))?;
                        }
                    }
                    Op::UpdateMeta(id, env) => {
                        // Only if still present: a late update must not resurrect a removed message.
                        let updated = match table.get(id.as_u128()).map_err(|e| werr(&e))? {
                            Some(old) => split_record(old.value())
                                .ok()
                                .map(|(_, body)| encode_record(env, body)),
                            None => None,
                        };
                        if let Some(record) = updated {
                            table
                                .insert(id.as_u128(), record.as_slice())
                                .map_err(|e| werr(&e))?;
                        }
                    }
                    Op::Remove(id) => {
                        table.remove(id.as_u128()).map_err(|e| werr(&e))?;
                    }
                    Op::Flush(_) => {}
                }
            }
        }
        w.commit().map_err(|e| werr(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn message(n: usize) -> Message {
        Message::new(
            "s@x".into(),
            format!("r{n}@amqp"),
            Map::new(),
            Bytes::from(format!("body {n}\0\u{ff}").into_bytes()),
        )
    }

    #[tokio::test]
    async fn insert_then_reopen_recovers_everything() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<_> = {
            let (spool, rec) = Spool::open(dir.path()).unwrap();
            assert!(rec.messages.is_empty());
            let msgs: Vec<_> = (0..50).map(message).collect();
            let refs: Vec<_> = msgs.iter().collect();
            spool.insert(&refs).await.unwrap();
            spool.remove(msgs[0].id());
            msgs[1].record_attempt(42);
            spool.update(&msgs[1]);
            spool.flush().await.unwrap();
            msgs.iter().map(|m| m.id()).collect()
        };
        // The writer thread exits when the last handle drops; wait for the lock to free.
        let rec = loop {
            match Spool::open(dir.path()) {
                Ok((_, rec)) => break rec,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        assert_eq!(rec.messages.len(), 49);
        assert_eq!(rec.quarantined, 0);
        let one = rec.messages.iter().find(|m| m.id() == ids[1]).unwrap();
        assert_eq!(one.num_attempts(), 1);
        assert_eq!(one.due_ms(), Some(42));
        assert_eq!(one.data().as_ref(), "body 1\0\u{ff}".as_bytes());
        assert!(rec.messages.iter().all(|m| m.id() != ids[0]));
    }

    #[tokio::test]
    async fn corrupt_record_is_quarantined_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("spool.redb")).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(MESSAGES).unwrap();
                t.insert(7u128, encode_record(b"{not json", b"x").as_slice())
                    .unwrap();
                t.insert(8u128, [200u8, 0, 0, 0, b'{'].as_slice()).unwrap();
                t.insert(9u128, [1u8].as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let (_spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages.len(), 0);
        assert_eq!(rec.quarantined, 3);
    }

    #[tokio::test]
    async fn two_table_spool_is_migrated_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let msgs: Vec<_> = (0..3).map(message).collect();
        {
            let db = Database::create(dir.path().join("spool.redb")).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut meta = w.open_table(OLD_META).unwrap();
                let mut data = w.open_table(OLD_DATA).unwrap();
                for m in &msgs {
                    let key = m.id().as_u128();
                    meta.insert(key, encode_envelope(&m.envelope()).as_slice())
                        .unwrap();
                    data.insert(key, m.data().as_ref()).unwrap();
                }
                // A torn record: an envelope without its body.
                let torn = message(9);
                meta.insert(1u128, encode_envelope(&torn.envelope()).as_slice())
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let (_spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages.len(), 3);
        for m in &msgs {
            let got = rec.messages.iter().find(|r| r.id() == m.id()).unwrap();
            assert_eq!(got.data(), m.data());
            assert_eq!(got.recipient(), m.recipient());
        }
        assert_eq!(rec.quarantined, 1);
    }
}
