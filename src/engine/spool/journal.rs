//! The journal: where a new message the engine holds in memory is made
//! durable. Most messages are delivered within milliseconds of arriving; for
//! them, one append and one sync per group commit replace a B-tree insert, a
//! B-tree delete and redb's commit (the spool writer's CPU per message fell by
//! a third, see the README). Appends are whole blocks, written directly
//! where the file system allows (`direct_file`): one that ends inside a
//! block rewrites that block's written part unchanged the next time.
//!
//! The file starts with a header: a magic number, the generation, and their
//! CRC-32. A record is `u32` LE payload length, the generation (`u32` LE),
//! the CRC-32 of those two and the payload, then the payload: a kind byte,
//! the message id (`u128` LE) and, for an insert, the spool record
//! (`tables::encode_record`, body inline). A message is live from its
//! insert until its `FORGET`: delivered, or moved into redb (then written
//! only after the redb commit that holds it).
//!
//! The journal is emptied when it has grown past its limit: the live
//! messages are first moved into redb (`Writer::checkpoint`). On open every
//! live message goes into redb, on the schedule, and the journal is emptied.
//! Emptying writes a new generation into the header and starts again at the
//! front, over the old records, which no longer count: the file keeps its
//! blocks, so an append does not allocate and its sync writes no metadata
//! (on ext4 with a journal, no journal commit per sync). The log ends at the
//! first record of an older generation (or zeros); a record of the current
//! one that is torn (a power cut during an append: its length or checksum
//! is wrong) ends it too, and was never acknowledged.

use super::direct_file::BLOCK;
use redb::StorageBackend;
use std::collections::HashMap;
use std::io;

const INSERT: u8 = 1;
const FORGET: u8 = 2;
const MAGIC: u32 = u32::from_le_bytes(*b"ARJ1");
/// Magic, generation, CRC.
const FILE_HEADER: u64 = 12;
/// Length, generation, CRC.
const HEADER: usize = 12;
/// Kind and id, before an insert's record.
const PREFIX: usize = 17;
/// The journal is emptied once it is this long (live messages go to redb
/// first): at 15,000 messages of 1 KiB a second, every four seconds or so.
pub const DEFAULT_LIMIT: u64 = 64 * 1024 * 1024;
/// The file grows by this much at a time, not at every write.
const GROW: u64 = 1024 * 1024;

pub struct Journal {
    file: Box<dyn StorageBackend>,
    /// The header's; 0 until a valid header is known.
    generation: u32,
    /// Where the next write goes: everything before it is written.
    end: u64,
    /// The file's length: `end` and room (zeros or old records) after it.
    capacity: u64,
    /// Live messages: id → (where its record starts, how long it is).
    live: HashMap<u128, (u64, u32)>,
    /// Records not written yet; they start at `end`.
    buf: Vec<u8>,
    /// What the file holds from the start of `end`'s block to `end`: a
    /// write rewrites that block whole (direct writes take whole blocks),
    /// its written part unchanged, so a torn rewrite loses nothing synced.
    tail: Vec<u8>,
    /// The blocks of the next write.
    out: Vec<u8>,
    /// Messages whose inserts are in `buf`: they need a sync, and are
    /// forgotten again if the write fails.
    fresh: Vec<u128>,
    limit: u64,
    /// A sync or a reset failed.
    broken: bool,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn file_header(generation: u32) -> [u8; FILE_HEADER as usize] {
    let mut h = [0u8; FILE_HEADER as usize];
    h[..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Over the record's length and generation and its payload.
fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..8]);
    h.update(payload);
    h.finalize()
}

impl Journal {
    /// Reads what the file holds: the live messages are then listed by
    /// `live_ids` (and read by `read`) until `reset`, which must come before
    /// anything is added.
    pub fn open(file: Box<dyn StorageBackend>, limit: u64) -> io::Result<Journal> {
        let mut j = Journal {
            file,
            generation: 0,
            end: FILE_HEADER,
            capacity: 0,
            live: HashMap::new(),
            buf: Vec::new(),
            tail: Vec::new(),
            out: Vec::new(),
            fresh: Vec::new(),
            limit,
            broken: false,
        };
        j.capacity = j.file.len()?;
        if j.capacity >= FILE_HEADER {
            let mut h = [0u8; FILE_HEADER as usize];
            j.file.read(0, &mut h)?;
            if h == file_header(u32_at(&h, 4)) && u32_at(&h, 4) != 0 {
                j.generation = u32_at(&h, 4);
                j.scan()?;
            } else {
                // Only a reset writes the header, and only once nothing
                // live is left in the file.
                tracing::warn!("spool journal has no valid header; starting a new one");
            }
        }
        Ok(j)
    }

    /// Walks this generation's records up to the first that is not whole.
    fn scan(&mut self) -> io::Result<()> {
        let len = self.capacity;
        let mut payload = Vec::new();
        let mut at = FILE_HEADER;
        let mut header = [0u8; HEADER];
        let torn = loop {
            if at + HEADER as u64 > len {
                break false;
            }
            self.file.read(at, &mut header)?;
            let (n, generation) = (u32_at(&header, 0) as u64, u32_at(&header, 4));
            if generation != self.generation {
                // Room never written, or records from before the last reset.
                break false;
            }
            let start = at + HEADER as u64;
            if n < PREFIX as u64 || start + n > len {
                break true;
            }
            payload.resize(n as usize, 0);
            self.file.read(start, &mut payload)?;
            if record_crc(&header, &payload) != u32_at(&header, 8) {
                break true;
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
                _ => break true,
            }
            at = start + n;
        };
        if torn {
            tracing::warn!(
                at,
                "spool journal ends in a torn record; it was never acknowledged"
            );
        }
        self.end = at;
        Ok(())
    }

    fn push(&mut self, kind: u8, id: u128, record: &[u8]) -> u64 {
        debug_assert!(self.generation != 0, "added to before a reset");
        let n = PREFIX + record.len();
        let start = self.buf.len();
        self.buf.extend_from_slice(&(n as u32).to_le_bytes());
        self.buf.extend_from_slice(&self.generation.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(kind);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(record);
        let (header, payload) = self.buf[start..].split_at(HEADER);
        let crc = record_crc(header, payload);
        self.buf[start + 8..start + HEADER].copy_from_slice(&crc.to_le_bytes());
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
    /// new messages again; a failed sync also retires the journal.
    pub fn write(&mut self, sync: bool) -> io::Result<bool> {
        if self.broken {
            self.buf.clear();
            return Ok(false);
        }
        if self.buf.is_empty() {
            if sync && self.generation != 0 {
                self.sync()?;
            }
            return Ok(false);
        }
        let sync = sync || !self.fresh.is_empty();
        let at = self.end - self.tail.len() as u64;
        self.out.clear();
        self.out.extend_from_slice(&self.tail);
        self.out.extend_from_slice(&self.buf);
        let used = self.out.len();
        self.out.resize(used.next_multiple_of(BLOCK), 0);
        if let Err(e) = self
            .grow(at + self.out.len() as u64)
            .and_then(|()| self.file.write(at, &self.out))
        {
            self.discard();
            // A part that reached the file must not be read as records
            // behind the next write.
            match self.file.set_len(self.end) {
                Ok(()) => self.capacity = self.end,
                Err(_) => self.broken = true,
            }
            return Err(e);
        }
        if sync && let Err(e) = self.sync() {
            self.discard();
            return Err(e);
        }
        self.end += self.buf.len() as u64;
        let keep = self.end as usize % BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&self.out[used - keep..used]);
        self.buf.clear();
        self.fresh.clear();
        Ok(sync)
    }

    /// After a failed sync the file's state is unknown (the kernel may have
    /// dropped the pages it could not write): nothing more goes into it.
    fn sync(&mut self) -> io::Result<()> {
        let synced = self.file.sync_data();
        if synced.is_err() {
            tracing::error!("spool journal sync failed: new messages go to redb until restart");
            self.broken = true;
        }
        synced
    }

    /// Whether new messages may go in (not after a failed sync).
    pub fn usable(&self) -> bool {
        !self.broken
    }

    /// Makes the file at least `need` long (redb's storage backends write
    /// only within the file's length).
    fn grow(&mut self, need: u64) -> io::Result<()> {
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

    /// Whether it has grown past its limit.
    pub fn is_due(&self) -> bool {
        !self.broken && self.end >= self.limit
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

    /// Empties the journal; every message added must be held elsewhere now.
    /// A failure retires the journal.
    pub fn reset(&mut self) -> io::Result<()> {
        self.live.clear();
        self.fresh.clear();
        self.buf.clear();
        let reset = self.start_generation();
        if reset.is_err() {
            self.broken = true;
        }
        reset
    }

    fn start_generation(&mut self) -> io::Result<()> {
        if self.generation == 0 && self.capacity > 0 {
            // No valid header: records of any generation may be in there.
            self.file.set_len(0)?;
            self.capacity = 0;
        }
        let generation = self.generation.checked_add(1).unwrap_or(1);
        self.grow(BLOCK as u64)?;
        // Synced before anything is added: an old record must never count
        // again after a crash, behind new ones.
        let mut first = vec![0; BLOCK];
        first[..FILE_HEADER as usize].copy_from_slice(&file_header(generation));
        self.file.write(0, &first)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.end = FILE_HEADER;
        self.tail = first[..FILE_HEADER as usize].to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An in-memory file that a test can still look at after handing it
    /// over, and whose syncs it can make fail.
    #[derive(Debug, Clone, Default)]
    struct Shared(Arc<InMemoryBackend>, Arc<AtomicBool>);

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
            if self.1.load(Ordering::Relaxed) {
                return Err(io::Error::other("sync failed"));
            }
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            // As the direct file: whole blocks only.
            assert!(
                (offset as usize).is_multiple_of(BLOCK) && data.len().is_multiple_of(BLOCK),
                "a write of {} bytes at {offset} is not whole blocks",
                data.len()
            );
            self.0.write(offset, data)
        }
    }

    /// What the writer does at start: read the file, then empty it.
    fn fresh(file: &Shared) -> Journal {
        let mut j = Journal::open(Box::new(file.clone()), 1 << 20).unwrap();
        j.reset().unwrap();
        j
    }

    fn live(file: &Shared) -> Vec<u128> {
        let mut ids = Journal::open(Box::new(file.clone()), 1 << 20)
            .unwrap()
            .live_ids();
        ids.sort();
        ids
    }

    #[test]
    fn live_messages_come_back_with_their_records() {
        let file = Shared::default();
        let mut j = fresh(&file);
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
        assert_eq!(j.read(2).unwrap().as_deref(), Some(&b"two"[..]));

        let again = Journal::open(Box::new(file.clone()), 1 << 20).unwrap();
        assert_eq!(again.live_ids(), vec![2]);
        assert_eq!(again.read(2).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(again.read(1).unwrap(), None);
        assert_eq!(again.read(3).unwrap(), None);
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log_there() {
        let file = Shared::default();
        let mut j = fresh(&file);
        j.insert(1, b"kept");
        j.write(false).unwrap();
        let good = j.end;
        j.insert(2, &[7; 300]);
        j.insert(3, b"after the tear");
        j.write(false).unwrap();
        assert_eq!(live(&file), vec![1, 2, 3]);
        // The second write reached the disk only up to a sector.
        let lost = (j.end - good - 200) as usize;
        file.0.write(good + 200, &vec![0; lost]).unwrap();
        assert_eq!(live(&file), vec![1]);

        // A flipped bit in the first record's payload: its checksum fails.
        let mut byte = [0u8];
        let at = FILE_HEADER + HEADER as u64 + 2;
        file.read(at, &mut byte).unwrap();
        file.0.write(at, &[byte[0] ^ 1]).unwrap();
        assert!(live(&file).is_empty());
        file.0.write(at, &byte).unwrap();
        // A length running past the end of the file.
        file.0.write(FILE_HEADER, &u32::MAX.to_le_bytes()).unwrap();
        assert!(live(&file).is_empty());
    }

    #[test]
    fn rewriting_a_partly_written_block_keeps_its_records_even_when_torn() {
        let file = Shared::default();
        let mut j = fresh(&file);
        // Records of every size across several blocks, each write rewriting
        // the block the last one ended in.
        let mut ids = Vec::new();
        for id in 1..=40u128 {
            j.insert(id, &vec![id as u8; 37 * id as usize]);
            ids.push(id);
            if id % 3 == 0 {
                j.write(false).unwrap();
                assert_eq!(live(&file), ids, "after a write ending at {}", j.end);
            }
        }
        j.write(false).unwrap();
        assert!(j.end > 4 * BLOCK as u64);
        // A power cut during the next write: the rewritten block reached the
        // disk only up to a sector, and the rest of the write not at all.
        let synced = j.end;
        let block_start = synced - synced % BLOCK as u64;
        let before: Vec<u8> = {
            let mut b = vec![0; BLOCK];
            file.0.read(block_start, &mut b).unwrap();
            b
        };
        j.insert(41, &[41; 3000]);
        j.write(false).unwrap();
        let sector = 512;
        let mut torn = vec![0; BLOCK];
        file.0.read(block_start, &mut torn).unwrap();
        torn[sector..].copy_from_slice(&before[sector..]);
        file.0.write(block_start, &torn).unwrap();
        file.0
            .write(block_start + BLOCK as u64, &[0; 2 * BLOCK])
            .unwrap();
        assert_eq!(live(&file), ids, "every synced record is still whole");
        let again = Journal::open(Box::new(file.clone()), 1 << 20).unwrap();
        assert_eq!(again.read(40).unwrap(), Some(vec![40; 37 * 40]));
    }

    #[test]
    fn records_from_before_a_reset_never_count_again() {
        let file = Shared::default();
        let mut j = fresh(&file);
        // Past the first block: the new header and the next write rewrite
        // only that one.
        for id in 1..=3 {
            j.insert(id, &[id as u8; 2500]);
        }
        j.write(false).unwrap();
        let (payload_at, payload_len) = j.live[&3];
        let old_at = payload_at - (HEADER + PREFIX) as u64;
        assert!(
            old_at >= BLOCK as u64,
            "record 3 lies beyond what is rewritten"
        );
        let old_len = (payload_at - old_at) as usize + payload_len as usize;
        let old = |file: &Shared| {
            let mut b = vec![0; old_len];
            file.0.read(old_at, &mut b).unwrap();
            b
        };
        let before = old(&file);
        let len = file.len().unwrap();
        j.reset().unwrap();
        assert_eq!(file.len().unwrap(), len, "the file keeps its room");
        j.insert(4, b"short");
        j.write(false).unwrap();
        // Record 3 is still whole behind 4, of the old generation.
        assert_eq!(old(&file), before);
        assert_eq!(live(&file), vec![4]);
    }

    #[test]
    fn without_a_valid_header_nothing_counts_and_the_reset_clears_the_file() {
        let file = Shared::default();
        let mut j = fresh(&file);
        j.insert(1, b"one");
        j.write(false).unwrap();
        file.0.write(0, b"XXXX").unwrap();
        assert!(live(&file).is_empty());
        // A new header could carry the generation of the records left in
        // the file: the reset drops them first.
        let mut j = fresh(&file);
        assert_eq!(j.generation, 1);
        assert!(live(&file).is_empty());
        j.insert(2, b"two");
        j.write(false).unwrap();
        assert_eq!(live(&file), vec![2]);
    }

    #[test]
    fn a_failed_write_leaves_its_new_messages_out() {
        let file = Shared::default();
        let mut j = fresh(&file);
        j.insert(1, b"one");
        j.write(false).unwrap();
        j.insert(2, b"two");
        j.discard();
        assert!(!j.contains(2));
        assert!(j.contains(1));
        j.insert(3, b"three");
        j.write(false).unwrap();
        assert_eq!(live(&file), vec![1, 3]);
    }

    #[test]
    fn a_failed_sync_retires_the_journal() {
        let file = Shared::default();
        let mut j = Journal::open(Box::new(file.clone()), 64).unwrap();
        j.reset().unwrap();
        j.insert(1, &[1; 100]);
        j.write(false).unwrap();
        assert!(j.is_due());
        file.1.store(true, Ordering::Relaxed);
        j.insert(2, b"two");
        assert!(j.write(false).is_err());
        assert!(!j.contains(2), "not acknowledged, not live");
        assert!(!j.usable());
        assert!(!j.is_due(), "nothing more goes in, not even a reset");
        assert!(j.forget(1));
        assert!(!j.write(true).unwrap(), "nothing is written");
    }
}
