//! How long a commit waits for company.
//!
//! Each commit costs about the same whatever it holds (the b-tree paths,
//! the table tree and the header rewritten, one `fdatasync`), so the fewer
//! commits per message, the less CPU per message. Under concurrent load
//! the writer wakes for the first request that arrives and would commit it
//! almost alone while the clients of the last commit are still sending
//! their next. When a batch holds fewer insert requests than the last
//! commit did, it waits a moment for the rest: at most what the last
//! commit took, so an acknowledgement is delayed by at most one more
//! commit's time. A lone client (one request per commit) never waits.
//!
//! Half a commit's time was the wait while redb took every message: a
//! whole one then gathered more per commit but cost 12 % of the rate. With
//! the journal's direct writes (commits ~10 % shorter, and cheaper), a
//! whole one gathers 9 messages per commit instead of 7 at the same rate
//! (the README has the rounds).

use std::time::Duration;

/// The longest wait, whatever the disk: acknowledgements stay prompt on
/// slow storage, where commits gather company on their own.
const MAX_LINGER: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
pub struct GroupCommit {
    /// Insert requests the last commit that had any held.
    last_inserts: usize,
    /// How long that commit took.
    last_took: Duration,
}

impl GroupCommit {
    /// How long a batch holding `inserts` insert requests waits for more
    /// before it commits, if at all.
    pub fn linger(&self, inserts: usize) -> Option<Duration> {
        (inserts > 0 && inserts < self.last_inserts)
            .then(|| self.last_took.min(MAX_LINGER))
            .filter(|d| !d.is_zero())
    }

    /// A commit holding `inserts` insert requests took `took`.
    pub fn committed(&mut self, inserts: usize, took: Duration) {
        if inserts > 0 {
            self.last_inserts = inserts;
            self.last_took = took;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_client_never_waits() {
        let mut g = GroupCommit::default();
        assert_eq!(g.linger(1), None, "nothing committed yet");
        g.committed(1, MS);
        assert_eq!(g.linger(1), None);
    }

    #[test]
    fn a_smaller_batch_than_the_last_waits_a_commit() {
        let mut g = GroupCommit::default();
        g.committed(8, 600 * Duration::from_micros(1));
        assert_eq!(g.linger(3), Some(Duration::from_micros(600)));
        assert_eq!(g.linger(8), None, "as many as last time: commit now");
        assert_eq!(g.linger(0), None, "no insert: nobody waits for it");
        g.committed(0, 10 * MS);
        assert_eq!(
            g.linger(3),
            Some(Duration::from_micros(600)),
            "a commit without inserts changes nothing"
        );
    }

    #[test]
    fn the_wait_is_bounded_on_slow_disks() {
        let mut g = GroupCommit::default();
        g.committed(16, 20 * MS);
        assert_eq!(g.linger(1), Some(MAX_LINGER));
    }
}
