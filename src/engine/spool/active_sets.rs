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

use super::tables::{self, Tables};
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
        t.active_sets.insert(set, tables::set_row(ids).as_slice())?;
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
