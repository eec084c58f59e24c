//! The spool's tables and record format, and what happens to them when a
//! spool is opened: layouts of earlier versions migrated, messages that were
//! in memory when the last process ended put back on the schedule.
//!
//! Every message is in `MESSAGES` and in exactly one of `ACTIVE` (in the
//! engine's memory) or `SCHEDULE` (on disk only, by queue and due time).
//! `QUEUES` and `DUE_QUEUES` summarise the schedule per queue, so finding
//! what is due never walks the whole backlog.

use crate::model::message::{Envelope, Message, MessageId};
use bytes::Bytes;
use redb::{
    ReadableTable, ReadableTableMetadata, Table, TableDefinition, TableHandle, WriteTransaction,
};
use std::collections::HashMap;

/// `u32` LE envelope length, the envelope (JSON), then the body.
pub const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
/// In memory: id → (due, queue).
pub const ACTIVE: TableDefinition<u128, (u64, &str)> = TableDefinition::new("active");
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

pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    serde_json::to_vec(e).expect("an envelope is plain JSON data")
}

pub fn encode_record(envelope: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(4 + envelope.len() + body.len());
    r.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    r.extend_from_slice(envelope);
    r.extend_from_slice(body);
    r
}

/// The envelope bytes and the body of a record.
pub fn split_record(r: &[u8]) -> Result<(&[u8], &[u8]), String> {
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

/// A record as a message; its body only when `with_body`.
pub fn decode_record(key: u128, r: &[u8], with_body: bool) -> Result<Message, String> {
    let (env, body) = split_record(r)?;
    let env: Envelope = serde_json::from_slice(env).map_err(|e| e.to_string())?;
    let id = MessageId::from_u128(key);
    Ok(if with_body {
        Message::from_parts(id, env, Bytes::copy_from_slice(body))
    } else {
        Message::without_body(id, env, body.len())
    })
}

/// The queue label and due time of a spooled message, from its record.
fn place_of(key: u128, r: &[u8]) -> Result<(String, u64), String> {
    let m = decode_record(key, r, false)?;
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
    pub schedule: Table<'t, (&'static str, u64, u128), ()>,
    pub queues: Table<'t, &'static str, (u64, u64)>,
    pub due_queues: Table<'t, (u64, &'static str), ()>,
    pub quarantine: Table<'t, u128, &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub fn open(w: &'t Txn) -> Result<Tables<'t>, redb::Error> {
        Ok(Tables {
            messages: w.open_table(MESSAGES)?,
            active: w.open_table(ACTIVE)?,
            schedule: w.open_table(SCHEDULE)?,
            queues: w.open_table(QUEUES)?,
            due_queues: w.open_table(DUE_QUEUES)?,
            quarantine: w.open_table(QUARANTINE)?,
        })
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
        let indexed = self.schedule.len()? + self.active.len()?;
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
    fn reschedule_active(&mut self) -> Result<(), redb::Error> {
        let mut counts: HashMap<String, i64> = HashMap::new();
        while let Some((k, v)) = self.active.pop_first()? {
            let (due, label) = v.value();
            self.schedule.insert((label, due, k.value()), ())?;
            *counts.entry(label.to_owned()).or_default() += 1;
        }
        for (label, n) in counts {
            self.refresh_queue(&label, n)?;
        }
        Ok(())
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
                    messages
                        .insert(key, encode_record(env.value(), body.value()).as_slice())
                        .map_err(e)?;
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
    t.reschedule_active().map_err(e)?;
    Ok(Opened {
        messages: t.messages.len().map_err(e)?,
        quarantined: torn + bad,
    })
}
