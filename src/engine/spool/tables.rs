//! The spool's tables and record format, and what happens to them when a
//! spool is opened: layouts of earlier versions migrated, messages that were
//! in memory when the last process ended put back on the schedule.
//!
//! Every message is in `MESSAGES` and in exactly one of `ACTIVE` (in the
//! engine's memory) or `SCHEDULE` (on disk only, by queue and due time).
//! `QUEUES` and `DUE_QUEUES` summarise the schedule per queue, so finding
//! what is due never walks the whole backlog.

use crate::model::message::{Envelope, Message, MessageId, Meta};
use redb::{
    ReadableTable, ReadableTableMetadata, Table, TableDefinition, TableHandle, WriteTransaction,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// `u32` LE envelope length, the envelope (JSON), then the body.
pub const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
/// In memory, as earlier versions recorded it: id → (due, queue). Read on
/// open only; see `ACTIVE_SETS`.
pub const ACTIVE: TableDefinition<u128, (u64, &str)> = TableDefinition::new("active");
/// In memory: rows of ids made active together (`active_sets`).
pub const ACTIVE_SETS: TableDefinition<u64, &[u8]> = TableDefinition::new("active_sets");
/// On disk only: (queue, due, id).
pub const SCHEDULE: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("schedule");
/// Per queue with scheduled messages: (how many, earliest due).
pub const QUEUES: TableDefinition<&str, (u64, u64)> = TableDefinition::new("queues");
/// (earliest due, queue), for the queues in `QUEUES`.
pub const DUE_QUEUES: TableDefinition<(u64, &str), ()> = TableDefinition::new("due_queues");
/// Records that could not be decoded are moved here, not deleted, for an operator to look at.
pub const QUARANTINE: TableDefinition<u128, &[u8]> = TableDefinition::new("quarantine");
/// The first layout (bodies and envelopes apart); migrated on open.
const OLD_DATA: TableDefinition<u128, &[u8]> = TableDefinition::new("data");
const OLD_META: TableDefinition<u128, &[u8]> = TableDefinition::new("meta");

/// A body several messages share (recipients of one injection or one SMTP
/// transaction), stored once: id → bytes.
pub const BODIES: TableDefinition<u128, &[u8]> = TableDefinition::new("bodies");
/// How many records refer to each shared body.
pub const BODY_REFS: TableDefinition<u128, u64> = TableDefinition::new("body_refs");

/// Set in a record's envelope length when its body is a shared one's id.
const SHARED_BODY: u32 = 1 << 31;

/// Where a record's body is.
#[derive(Debug, Clone, Copy)]
pub enum StoredBody<'a> {
    Inline(&'a [u8]),
    /// The id of a body in `BODIES`.
    Shared(u128),
}

pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(e).expect("an envelope is plain JSON data")
}

/// `u32` LE envelope length (high bit: the body is shared), the envelope
/// (JSON), then the body or the shared body's id.
pub fn encode_record(envelope: &[u8], body: StoredBody) -> Vec<u8> {
    let (flag, tail): (u32, std::borrow::Cow<[u8]>) = match body {
        StoredBody::Inline(b) => (0, b.into()),
        StoredBody::Shared(id) => (SHARED_BODY, id.to_le_bytes().to_vec().into()),
    };
    let mut r = Vec::with_capacity(4 + envelope.len() + tail.len());
    r.extend_from_slice(&(envelope.len() as u32 | flag).to_le_bytes());
    r.extend_from_slice(envelope);
    r.extend_from_slice(&tail);
    r
}

/// A message's record with a new envelope: its body as stored, or `body`
/// if the policy changed it; then the stored one is returned, to release.
/// None if `old` cannot be read.
pub fn rescheduled<'a>(
    old: &'a [u8],
    envelope: &[u8],
    body: Option<&[u8]>,
) -> Option<(Vec<u8>, Option<StoredBody<'a>>)> {
    let (_, stored) = split_record(old).ok()?;
    Some(match body {
        Some(b) => (encode_record(envelope, StoredBody::Inline(b)), Some(stored)),
        None => (encode_record(envelope, stored), None),
    })
}

/// The envelope bytes and where the body is.
pub fn split_record(r: &[u8]) -> Result<(&[u8], StoredBody<'_>), String> {
    let head = r
        .first_chunk::<4>()
        .map(|n| u32::from_le_bytes(*n))
        .ok_or("record shorter than its header")?;
    let len = (head & !SHARED_BODY) as usize;
    let rest = &r[4..];
    if len > rest.len() {
        return Err(format!(
            "envelope length {len} exceeds the record's {} bytes",
            rest.len()
        ));
    }
    let (env, body) = rest.split_at(len);
    if head & SHARED_BODY == 0 {
        return Ok((env, StoredBody::Inline(body)));
    }
    let id = body
        .try_into()
        .map(u128::from_le_bytes)
        .map_err(|_| format!("a shared body's id takes 16 bytes, not {}", body.len()))?;
    Ok((env, StoredBody::Shared(id)))
}

pub fn decode_envelope(env: &[u8]) -> Result<Envelope, String> {
    decode_envelope_with(env, &mut MetaMemo::default())
}

/// The meta map decoded last, with its stored text: the next envelope with
/// the same text (the recipients of one injection, read in a row) shares the
/// map instead of decoding and holding a copy of its own.
#[derive(Default)]
pub struct MetaMemo {
    text: String,
    meta: Meta,
}

/// An envelope as stored, with its meta left as text.
#[derive(Deserialize)]
struct StoredEnvelope<'a> {
    sender: String,
    recipient: String,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
    created_ms: u64,
    #[serde(default)]
    num_attempts: u32,
    #[serde(default)]
    due_ms: Option<u64>,
}

pub fn decode_envelope_with(env: &[u8], memo: &mut MetaMemo) -> Result<Envelope, String> {
    let stored: StoredEnvelope = serde_json::from_slice(env).map_err(|e| e.to_string())?;
    let meta = match stored.meta.map(RawValue::get) {
        None => Meta::default(),
        Some(text) if text == memo.text => memo.meta.clone(),
        Some(text) => {
            let meta = Meta::new(serde_json::from_str(text).map_err(|e| format!("meta: {e}"))?);
            memo.text.clear();
            memo.text.push_str(text);
            memo.meta = meta.clone();
            meta
        }
    };
    Ok(Envelope {
        sender: stored.sender,
        recipient: stored.recipient,
        meta,
        created_ms: stored.created_ms,
        num_attempts: stored.num_attempts,
        due_ms: stored.due_ms,
    })
}

/// The queue label and due time of a spooled message, from its record.
fn place_of(key: u128, r: &[u8]) -> Result<(String, u64), String> {
    let (env, _) = split_record(r)?;
    let m = Message::without_body(MessageId::from_u128(key), decode_envelope(env)?, 0);
    let label = m.queue_name()?.to_string();
    Ok((label, m.due_or_created()))
}

pub type Txn = WriteTransaction;

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Every table, opened once for a write transaction (redb lets a
/// transaction hold only one handle per table).
pub struct Tables<'t> {
    pub messages: Table<'t, u128, &'static [u8]>,
    pub active: Table<'t, u128, (u64, &'static str)>,
    pub active_sets: Table<'t, u64, &'static [u8]>,
    pub schedule: Table<'t, (&'static str, u64, u128), ()>,
    pub queues: Table<'t, &'static str, (u64, u64)>,
    pub due_queues: Table<'t, (u64, &'static str), ()>,
    pub quarantine: Table<'t, u128, &'static [u8]>,
    pub bodies: Table<'t, u128, &'static [u8]>,
    pub body_refs: Table<'t, u128, u64>,
}

impl<'t> Tables<'t> {
    pub fn open(w: &'t Txn) -> Result<Tables<'t>, redb::Error> {
        Ok(Tables {
            messages: w.open_table(MESSAGES)?,
            active: w.open_table(ACTIVE)?,
            active_sets: w.open_table(ACTIVE_SETS)?,
            schedule: w.open_table(SCHEDULE)?,
            queues: w.open_table(QUEUES)?,
            due_queues: w.open_table(DUE_QUEUES)?,
            quarantine: w.open_table(QUARANTINE)?,
            bodies: w.open_table(BODIES)?,
            body_refs: w.open_table(BODY_REFS)?,
        })
    }

    /// The body a record holds or refers to.
    pub fn body<'b>(
        &self,
        stored: StoredBody<'b>,
    ) -> Result<Option<std::borrow::Cow<'b, [u8]>>, redb::Error> {
        Ok(match stored {
            StoredBody::Inline(b) => Some(b.into()),
            StoredBody::Shared(id) => self.bodies.get(id)?.map(|b| b.value().to_vec().into()),
        })
    }

    /// Counts down the shared bodies that `released` records referred to
    /// (id → how many); a body no record refers to any more is deleted.
    pub fn release_bodies(&mut self, released: HashMap<u128, u64>) -> Result<(), redb::Error> {
        for (id, n) in released {
            let left = self
                .body_refs
                .get(id)?
                .map_or(0, |c| c.value())
                .saturating_sub(n);
            if left == 0 {
                self.body_refs.remove(id)?;
                self.bodies.remove(id)?;
            } else {
                self.body_refs.insert(id, left)?;
            }
        }
        Ok(())
    }

    /// Sets `QUEUES` and `DUE_QUEUES` for `label` from `SCHEDULE`, with
    /// `delta` added to its count.
    pub fn refresh_queue(&mut self, label: &str, delta: i64) -> Result<(), redb::Error> {
        let old = self.queues.get(label)?.map(|v| v.value());
        let first = self
            .schedule
            .range((label, 0u64, 0u128)..=(label, u64::MAX, u128::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        if let Some((_, due)) = old {
            self.due_queues.remove((due, label))?;
        }
        match first {
            Some(due) => {
                let count = (old.map_or(0, |(c, _)| c) as i64 + delta).max(1) as u64;
                self.queues.insert(label, (count, due))?;
                self.due_queues.insert((due, label), ())?;
            }
            None => {
                self.queues.remove(label)?;
            }
        }
        Ok(())
    }

    /// Every set row's ids, the rows deleted (on open, before anything is
    /// active).
    fn take_active_sets(&mut self) -> Result<Vec<u128>, redb::Error> {
        let mut ids = Vec::new();
        while let Some((_, row)) = self.active_sets.pop_first()? {
            ids.extend(set_ids(row.value()));
        }
        Ok(ids)
    }

    /// Sets undecodable records aside.
    pub fn quarantine(&mut self, key: u128, raw: &[u8], why: &str) -> Result<(), redb::Error> {
        tracing::error!(id = %MessageId::from_u128(key), reason = %why, "corrupt spool record set aside in the quarantine table");
        self.quarantine.insert(key, raw)?;
        self.messages.remove(key)?;
        Ok(())
    }

    /// A spool written before the schedule existed: every message goes on
    /// it (one pass over the records, once). Returns how many were set aside.
    fn build_schedule(&mut self) -> Result<usize, redb::Error> {
        let mut in_sets = 0;
        for row in self.active_sets.iter()? {
            in_sets += set_ids(row?.1.value()).count() as u64;
        }
        let indexed = self.schedule.len()? + self.active.len()? + in_sets;
        if indexed >= self.messages.len()? {
            return Ok(0);
        }
        let mut bad = Vec::new();
        let mut counts: HashMap<String, i64> = HashMap::new();
        for row in self.messages.iter()? {
            let (k, v) = row?;
            match place_of(k.value(), v.value()) {
                Ok((label, due)) => {
                    self.schedule.insert((label.as_str(), due, k.value()), ())?;
                    *counts.entry(label).or_default() += 1;
                }
                Err(why) => bad.push((k.value(), v.value().to_vec(), why)),
            }
        }
        let n: i64 = counts.values().sum();
        for (label, n) in counts {
            self.refresh_queue(&label, n)?;
        }
        for (key, raw, why) in &bad {
            self.quarantine(*key, raw, why)?;
        }
        tracing::info!(messages = n, "spool schedule built");
        Ok(bad.len())
    }

    /// Messages the last process had in memory go back on the schedule.
    /// Returns how many records were set aside.
    fn reschedule_active(&mut self) -> Result<usize, redb::Error> {
        let mut counts: HashMap<String, i64> = HashMap::new();
        while let Some((k, v)) = self.active.pop_first()? {
            let (due, label) = v.value();
            self.schedule.insert((label, due, k.value()), ())?;
            *counts.entry(label.to_owned()).or_default() += 1;
        }
        let mut bad = Vec::new();
        for id in self.take_active_sets()? {
            let Some(record) = self.messages.get(id)?.map(|r| r.value().to_vec()) else {
                continue; // delivered since
            };
            match place_of(id, &record) {
                Ok((label, due)) => {
                    // A retried one may be on the schedule already.
                    if self.schedule.get((label.as_str(), due, id))?.is_none() {
                        self.schedule.insert((label.as_str(), due, id), ())?;
                        *counts.entry(label).or_default() += 1;
                    }
                }
                Err(why) => bad.push((id, record, why)),
            }
        }
        for (label, n) in counts {
            self.refresh_queue(&label, n)?;
        }
        for (id, record, why) in &bad {
            self.quarantine(*id, record, why)?;
        }
        Ok(bad.len())
    }
}

/// Moves messages of the two-table layout into `MESSAGES`; returns how many
/// were torn (envelope without body) and set aside.
fn migrate_two_tables(w: &Txn) -> Result<usize, String> {
    let names: Vec<String> = w
        .list_tables()
        .map_err(e)?
        .map(|t| t.name().to_owned())
        .collect();
    if !names.iter().any(|n| n == OLD_META.name()) {
        return Ok(0);
    }
    let (mut moved, mut torn) = (0, 0);
    {
        let meta = w.open_table(OLD_META).map_err(e)?;
        let data = w.open_table(OLD_DATA).map_err(e)?;
        let mut messages = w.open_table(MESSAGES).map_err(e)?;
        let mut q = w.open_table(QUARANTINE).map_err(e)?;
        for row in meta.iter().map_err(e)? {
            let (k, env) = row.map_err(e)?;
            let key = k.value();
            match data.get(key).map_err(e)? {
                Some(body) => {
                    let record = encode_record(env.value(), StoredBody::Inline(body.value()));
                    messages.insert(key, record.as_slice()).map_err(e)?;
                    moved += 1;
                }
                None => {
                    tracing::error!(id = %MessageId::from_u128(key), "spool record without a body set aside in the quarantine table");
                    q.insert(key, env.value()).map_err(e)?;
                    torn += 1;
                }
            }
        }
    }
    w.delete_table(OLD_META).map_err(e)?;
    w.delete_table(OLD_DATA).map_err(e)?;
    tracing::info!(messages = moved, "spool migrated to one record per message");
    Ok(torn)
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Messages in the spool, all of them on the schedule now.
    pub messages: u64,
    pub quarantined: usize,
}

/// Brings a spool of any earlier layout to the current one, in one transaction.
pub fn prepare(w: &Txn) -> Result<Opened, String> {
    let torn = migrate_two_tables(w)?;
    let mut t = Tables::open(w).map_err(e)?;
    let bad = t.build_schedule().map_err(e)?;
    let bad_active = t.reschedule_active().map_err(e)?;
    Ok(Opened {
        messages: t.messages.len().map_err(e)?,
        quarantined: torn + bad + bad_active,
    })
}

/// An `ACTIVE_SETS` row: the ids of messages made active together, 16 bytes
/// each (little-endian).
pub fn set_row(ids: &[u128]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// The ids a set row lists.
pub fn set_ids(row: &[u8]) -> impl Iterator<Item = u128> + '_ {
    row.chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("chunks of 16")))
}
