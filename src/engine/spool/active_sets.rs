//! Which spooled messages the engine holds in memory, recorded for a restart
//! one row per set of messages made active together (an insert's recipients,
//! a page-in's batch) rather than one row per message: a row is written once
//! and deleted when the last of its messages is delivered or scheduled again,
//! instead of two B-tree updates per message.
//!
//! Membership is kept here, in memory (bounded by the engine's limit on
//! active messages). A row may outlive some of its messages (a retried one is
//! back on the schedule, a delivered one is gone); on open every listed id
//! still in `MESSAGES` and not on the schedule is put back on it.

use super::tables::Tables;
use std::collections::HashMap;

#[derive(Default)]
pub struct ActiveSets {
    next: u64,
    /// Per set row: how many of its messages are still active.
    remaining: HashMap<u64, u32>,
    member_of: HashMap<u128, u64>,
}

impl ActiveSets {
    /// Records `ids` as active, in one row.
    pub fn add(&mut self, t: &mut Tables, ids: &[u128]) -> Result<(), redb::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let set = self.next;
        self.next += 1;
        let row: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        t.active_sets.insert(set, row.as_slice())?;
        for id in ids {
            // Not active twice; if it were, its older row lets it go.
            if let Some(old) = self.member_of.insert(*id, set) {
                self.release(t, old)?;
            }
        }
        self.remaining.insert(set, ids.len() as u32);
        Ok(())
    }

    /// The message is no longer held in memory. False if it was not.
    pub fn leave(&mut self, t: &mut Tables, id: u128) -> Result<bool, redb::Error> {
        match self.member_of.remove(&id) {
            Some(set) => {
                self.release(t, set)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn release(&mut self, t: &mut Tables, set: u64) -> Result<(), redb::Error> {
        if let Some(n) = self.remaining.get_mut(&set) {
            *n -= 1;
            if *n == 0 {
                self.remaining.remove(&set);
                t.active_sets.remove(set)?;
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.member_of.len()
    }
}

/// The ids a set row lists.
pub fn ids_of(row: &[u8]) -> impl Iterator<Item = u128> + '_ {
    row.chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("chunks of 16")))
}

/// Every row's ids, and the rows deleted (on open, before anything is active).
pub fn take_all(t: &mut Tables) -> Result<Vec<u128>, redb::Error> {
    let mut ids = Vec::new();
    while let Some((_, row)) = t.active_sets.pop_first()? {
        ids.extend(ids_of(row.value()));
    }
    Ok(ids)
}
