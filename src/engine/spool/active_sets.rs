//! Which spooled messages the engine holds in memory, recorded for a restart
//! one row per commit that made messages active (the inserts of a group
//! commit, a page-in's batch) rather than one row per message: a row is
//! written once and deleted when the last of its messages is delivered or
//! scheduled again, instead of two B-tree updates per message.
//!
//! Membership is kept here, in memory (bounded by the engine's limit on
//! active messages). A row may outlive some of its messages (a retried one is
//! back on the schedule, a delivered one is gone); on open every listed id
//! still in `MESSAGES` and not on the schedule is put back on it.

use super::tables::{self, Tables};
use std::collections::HashMap;

#[derive(Default)]
pub struct ActiveSets {
    /// The id of the set this transaction adds to; earlier sets have lower ones.
    next: u64,
    /// Per set row: how many of its messages are still active.
    remaining: HashMap<u64, u32>,
    member_of: HashMap<u128, u64>,
    /// The ids this transaction added, in set `next`; its row is written by
    /// `seal`, once per transaction.
    open_ids: Vec<u128>,
}

impl ActiveSets {
    /// Starts a transaction: what a failed one left open is dropped (its
    /// rows were never written; members it left behind only cost a redelivery).
    pub fn begin(&mut self) {
        if !self.open_ids.is_empty() {
            self.open_ids.clear();
            self.next += 1;
        }
    }

    /// Records `ids` as active, in this transaction's row.
    pub fn add(&mut self, t: &mut Tables, ids: &[u128]) -> Result<(), redb::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let set = self.next;
        for id in ids {
            // Not active twice; if it were, its older row lets it go.
            match self.member_of.insert(*id, set) {
                Some(old) if old == set => continue,
                Some(old) => self.release(t, old)?,
                None => {}
            }
            *self.remaining.entry(set).or_default() += 1;
            self.open_ids.push(*id);
        }
        Ok(())
    }

    /// Writes this transaction's row, unless all its messages already left.
    pub fn seal(&mut self, t: &mut Tables) -> Result<(), redb::Error> {
        if self.open_ids.is_empty() {
            return Ok(());
        }
        if self.remaining.contains_key(&self.next) {
            t.active_sets
                .insert(self.next, tables::set_row(&self.open_ids).as_slice())?;
        }
        self.open_ids.clear();
        self.next += 1;
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
                // The open set's row is not written yet.
                if set != self.next {
                    t.active_sets.remove(set)?;
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.member_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable};

    fn fresh() -> (tempfile::TempDir, Database, ActiveSets) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        (dir, db, ActiveSets::default())
    }

    /// Runs `f` in one write transaction, then lists the rows on disk.
    fn commit_and_list(
        db: &Database,
        sets: &mut ActiveSets,
        f: impl FnOnce(&mut ActiveSets, &mut Tables),
    ) -> Vec<(u64, Vec<u128>)> {
        let w = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&w).unwrap();
            sets.begin();
            f(sets, &mut t);
            sets.seal(&mut t).unwrap();
        }
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(tables::ACTIVE_SETS).unwrap();
        t.iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value(), tables::set_ids(v.value()).collect())
            })
            .collect()
    }

    #[test]
    fn one_row_per_transaction_however_many_inserts_it_holds() {
        let (_dir, db, mut sets) = fresh();
        let rows = commit_and_list(&db, &mut sets, |s, t| {
            s.add(t, &[1, 2]).unwrap();
            s.add(t, &[3]).unwrap();
            // Added twice in one transaction: counted and listed once.
            s.add(t, &[2, 4]).unwrap();
        });
        assert_eq!(rows, vec![(0, vec![1, 2, 3, 4])]);
        assert_eq!(sets.len(), 4);
        // The next transaction's row; a member moved into it leaves the old one.
        let rows = commit_and_list(&db, &mut sets, |s, t| {
            s.add(t, &[5, 1]).unwrap();
            for id in [2, 3, 4] {
                assert!(s.leave(t, id).unwrap());
            }
        });
        assert_eq!(
            rows,
            vec![(1, vec![5, 1])],
            "row 0 went with its last member"
        );
        let rows = commit_and_list(&db, &mut sets, |s, t| {
            assert!(!s.leave(t, 9).unwrap(), "never active");
        });
        assert_eq!(
            rows,
            vec![(1, vec![5, 1])],
            "a transaction adding none writes none"
        );
    }

    #[test]
    fn a_set_whose_members_all_left_before_the_commit_writes_no_row() {
        let (_dir, db, mut sets) = fresh();
        let rows = commit_and_list(&db, &mut sets, |s, t| {
            s.add(t, &[1, 2]).unwrap();
            assert!(s.leave(t, 1).unwrap());
            assert!(s.leave(t, 2).unwrap());
        });
        assert!(rows.is_empty(), "{rows:?}");
        assert_eq!(sets.len(), 0);
        // A transaction that failed before `seal` (aborted) leaves nothing open behind.
        {
            let w = db.begin_write().unwrap();
            let mut t = Tables::open(&w).unwrap();
            sets.begin();
            sets.add(&mut t, &[3]).unwrap();
        }
        let rows = commit_and_list(&db, &mut sets, |s, t| s.add(t, &[7]).unwrap());
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].1,
            vec![7],
            "the aborted transaction's ids are not listed"
        );
        assert_ne!(rows[0].0, 1, "nor is its set id used again");
    }
}
