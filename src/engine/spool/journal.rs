//! The journal: where a new message the engine holds in memory is made
//! durable. Most messages are delivered within milliseconds of arriving; for
//! them, one append and one sync per group commit replace a B-tree insert, a
//! B-tree delete and redb's commit (the spool writer's CPU per message fell by
//! a third, see the README).
//!
//! A record is `u32` LE payload length, `u32` LE CRC-32 of the payload, then
//! the payload: a kind byte, the message id (`u128` LE) and, for an insert,
//! the spool record (`tables::encode_record`, body inline). A message is live
//! from its insert until its `FORGET`: delivered, or moved into redb (then
//! written only after the redb commit that holds it).
//!
//! The file is emptied when it has grown past its limit: the live messages
//! are first moved into redb (`Writer::checkpoint`). On open every live
//! message goes into redb, on the schedule, and the file is emptied. A torn
//! tail (a power cut during an append) ends the log at the first record
//! whose length or checksum is wrong: it was never acknowledged.

use redb::StorageBackend;
use std::collections::HashMap;
use std::io;

const INSERT: u8 = 1;
const FORGET: u8 = 2;
const HEADER: usize = 8;
/// Kind and id, before an insert's record.
const PREFIX: usize = 17;
/// The journal is emptied once it is this long (live messages go to redb
/// first): at 15,000 messages of 1 KiB a second, every four seconds or so.
pub const DEFAULT_LIMIT: u64 = 64 * 1024 * 1024;
/// The file grows by this much at a time (zeros, which end the log), not
/// at every write.
const GROW: u64 = 1024 * 1024;

pub struct Journal {
    file: Box<dyn StorageBackend>,
    /// Where the next write goes: everything before it is written.
    end: u64,
    /// The file's length: `end` and the zeros after it.
    capacity: u64,
    /// Live messages: id → (where its record starts, how long it is).
    live: HashMap<u128, (u64, u32)>,
    /// Records not written yet; they start at `end`.
    buf: Vec<u8>,
    /// Messages whose inserts are in `buf`: they need a sync, and are
    /// forgotten again if the write fails.
    fresh: Vec<u128>,
    limit: u64,
}

impl Journal {
    /// Reads what the file holds: the live messages are then listed by
    /// `live_ids` (and read by `read`) until `reset`.
    pub fn open(file: Box<dyn StorageBackend>, limit: u64) -> io::Result<Journal> {
        let mut j = Journal {
            file,
            end: 0,
            capacity: 0,
            live: HashMap::new(),
            buf: Vec::new(),
            fresh: Vec::new(),
            limit,
        };
        j.scan()?;
        Ok(j)
    }

    /// Walks the records up to the first one that is torn.
    fn scan(&mut self) -> io::Result<()> {
        let len = self.file.len()?;
        self.capacity = len;
        let mut payload = Vec::new();
        let mut at = 0u64;
        let mut header = [0u8; HEADER];
        while at + HEADER as u64 <= len {
            self.file.read(at, &mut header)?;
            let n = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            let start = at + HEADER as u64;
            if n == 0 && crc == 0 {
                // Room the file grew by, never written.
                self.end = at;
                return Ok(());
            }
            if n < PREFIX as u64 || start + n > len {
                break;
            }
            payload.resize(n as usize, 0);
            self.file.read(start, &mut payload)?;
            if crc32fast::hash(&payload) != crc {
                break;
            }
            let id = u128::from_le_bytes(payload[1..PREFIX].try_into().expect("16 bytes"));
            match payload[0] {
                INSERT => {
                    let record = (start + PREFIX as u64, (n - PREFIX as u64) as u32);
                    self.live.insert(id, record);
                }
                FORGET => {
                    self.live.remove(&id);
                }
                _ => break,
            }
            at = start + n;
        }
        if at < len {
            tracing::warn!(
                at,
                bytes = len - at,
                "spool journal ends in a torn record; it was never acknowledged"
            );
        }
        self.end = at;
        Ok(())
    }

    fn push(&mut self, kind: u8, id: u128, record: &[u8]) -> u64 {
        let n = PREFIX + record.len();
        let start = self.buf.len();
        self.buf.extend_from_slice(&(n as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(kind);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(record);
        let crc = crc32fast::hash(&self.buf[start + HEADER..]);
        self.buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        self.end + (start + HEADER + PREFIX) as u64
    }

    /// Adds a new message (durable after the next `write`).
    pub fn insert(&mut self, id: u128, record: &[u8]) {
        let at = self.push(INSERT, id, record);
        self.live.insert(id, (at, record.len() as u32));
        self.fresh.push(id);
    }

    /// The message is delivered or held by redb now. False if it was not live.
    pub fn forget(&mut self, id: u128) -> bool {
        if self.live.remove(&id).is_none() {
            return false;
        }
        self.push(FORGET, id, &[]);
        true
    }

    pub fn contains(&self, id: u128) -> bool {
        self.live.contains_key(&id)
    }

    /// A live message's record.
    pub fn read(&self, id: u128) -> io::Result<Option<Vec<u8>>> {
        let Some(&(at, n)) = self.live.get(&id) else {
            return Ok(None);
        };
        let mut out = vec![0; n as usize];
        match at.checked_sub(self.end) {
            Some(in_buf) => {
                let start = in_buf as usize;
                out.copy_from_slice(&self.buf[start..start + n as usize]);
            }
            None => self.file.read(at, &mut out)?,
        }
        Ok(Some(out))
    }

    /// Writes what was added; syncs if it holds new messages or `sync` says
    /// so (forgetting can wait: a crash before then only means a
    /// redelivery). Returns whether it synced. A failed write forgets the
    /// new messages again.
    pub fn write(&mut self, sync: bool) -> io::Result<bool> {
        if self.buf.is_empty() {
            if sync && self.end > 0 {
                self.file.sync_data()?;
            }
            return Ok(false);
        }
        let sync = sync || !self.fresh.is_empty();
        let written = self
            .grow()
            .and_then(|()| self.file.write(self.end, &self.buf))
            .and_then(|()| {
                if sync {
                    self.file.sync_data()?;
                }
                Ok(())
            });
        match written {
            Ok(()) => {
                self.end += self.buf.len() as u64;
                self.buf.clear();
                self.fresh.clear();
                Ok(sync)
            }
            Err(e) => {
                self.discard();
                // Best effort: a part that reached the file must not be
                // read as records behind the next write.
                if self.file.set_len(self.end).is_ok() {
                    self.capacity = self.end;
                }
                Err(e)
            }
        }
    }

    /// Makes room for `buf` (redb's storage backends write only within the
    /// file's length).
    fn grow(&mut self) -> io::Result<()> {
        let need = self.end + self.buf.len() as u64;
        if need > self.capacity {
            let capacity = need.next_multiple_of(GROW);
            self.file.set_len(capacity)?;
            self.capacity = capacity;
        }
        Ok(())
    }

    /// Drops what was added since the last write: new messages are not
    /// live. (Forgotten ones stay forgotten; their records were lost, which
    /// only means a redelivery after a crash.)
    pub fn discard(&mut self) {
        for id in self.fresh.drain(..) {
            self.live.remove(&id);
        }
        self.buf.clear();
    }

    /// Whether the file has grown past its limit.
    pub fn is_due(&self) -> bool {
        self.end >= self.limit
    }

    pub fn live_ids(&self) -> Vec<u128> {
        self.live.keys().copied().collect()
    }

    /// How long a live message's record is (0 if it is not live).
    pub fn record_len(&self, id: u128) -> usize {
        self.live.get(&id).map_or(0, |&(_, n)| n as usize)
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Empties the file; every message added must be held elsewhere now.
    pub fn reset(&mut self) -> io::Result<()> {
        self.live.clear();
        self.fresh.clear();
        self.buf.clear();
        // Synced at once: an old record must never come back after a crash
        // behind new ones.
        self.file.set_len(0)?;
        self.capacity = 0;
        self.end = 0;
        self.file.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use std::sync::Arc;

    /// An in-memory file that a test can still look at after handing it over.
    #[derive(Debug, Clone, Default)]
    struct Shared(Arc<InMemoryBackend>);

    impl StorageBackend for Shared {
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.0.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0.write(offset, data)
        }
    }

    fn open(file: &Shared) -> Journal {
        Journal::open(Box::new(file.clone()), 1 << 20).unwrap()
    }

    fn sorted(mut ids: Vec<u128>) -> Vec<u128> {
        ids.sort();
        ids
    }

    #[test]
    fn live_messages_come_back_with_their_records() {
        let file = Shared::default();
        let mut j = open(&file);
        j.insert(1, b"one");
        j.insert(2, b"two");
        assert_eq!(
            j.read(2).unwrap().as_deref(),
            Some(&b"two"[..]),
            "read before the write"
        );
        assert!(j.write(false).unwrap(), "new messages are synced");
        j.insert(3, b"three");
        assert!(j.forget(1));
        assert!(!j.forget(1), "forgotten once");
        assert!(j.write(false).unwrap());
        assert!(j.forget(3));
        assert!(!j.write(false).unwrap(), "forgetting alone is not synced");
        assert!(j.forget(2));
        assert!(j.write(true).unwrap(), "unless asked");
        assert_eq!(j.read(2).unwrap(), None, "forgotten");

        let mut again = open(&file);
        assert!(again.live_ids().is_empty());
        again.insert(5, b"five");
        again.write(false).unwrap();
        let again = open(&file);
        assert_eq!(again.live_ids(), vec![5]);
        assert_eq!(again.read(5).unwrap().as_deref(), Some(&b"five"[..]));
        assert_eq!(again.read(3).unwrap(), None);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log_there() {
        let file = Shared::default();
        let mut j = open(&file);
        j.insert(1, b"kept");
        j.write(false).unwrap();
        let good = j.end;
        j.insert(2, &[7; 300]);
        j.insert(3, b"after the tear");
        j.write(false).unwrap();
        // The second write reached the disk only up to a sector.
        let lost = (j.end - good - 200) as usize;
        file.write(good + 200, &vec![0; lost]).unwrap();
        let mut torn = open(&file);
        assert_eq!(torn.live_ids(), vec![1]);
        // Appends go where the log ended, over the torn bytes.
        torn.insert(4, b"new");
        torn.write(false).unwrap();
        assert_eq!(sorted(open(&file).live_ids()), vec![1, 4]);

        // A flipped bit in a record's payload: its checksum no longer matches.
        let mut byte = [0u8];
        file.read(good + 10, &mut byte).unwrap();
        file.write(good + 10, &[byte[0] ^ 1]).unwrap();
        assert_eq!(open(&file).live_ids(), vec![1]);
        // A length running past the end of the file.
        file.write(0, &u32::MAX.to_le_bytes()).unwrap();
        assert!(open(&file).live_ids().is_empty());
    }

    #[test]
    fn a_failed_write_leaves_its_new_messages_out() {
        let file = Shared::default();
        let mut j = open(&file);
        j.insert(1, b"one");
        j.write(false).unwrap();
        j.insert(2, b"two");
        j.discard();
        assert!(!j.contains(2));
        assert!(j.contains(1));
        j.insert(3, b"three");
        j.write(false).unwrap();
        assert_eq!(sorted(open(&file).live_ids()), vec![1, 3]);
    }

    #[test]
    fn a_reset_empties_the_file_for_good() {
        let file = Shared::default();
        let mut j = Journal::open(Box::new(file.clone()), 64).unwrap();
        j.insert(1, &[1; 100]);
        j.write(false).unwrap();
        assert!(j.is_due());
        j.reset().unwrap();
        assert!(!j.is_due());
        assert_eq!(file.len().unwrap(), 0);
        j.insert(2, b"two");
        j.write(false).unwrap();
        assert_eq!(open(&file).live_ids(), vec![2]);
    }
}
