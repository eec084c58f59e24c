//! Bytes a listener's requests may hold in memory at once (SMTP bodies being
//! received, HTTP request bodies and the messages built from them), each
//! counted from its first byte until the message is durable: past the bound
//! a request is refused for now (SMTP 452, HTTP 503) instead of the pod
//! growing with the number of clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(n) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes held from a budget by one request; given back when dropped.
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Reservation {
    pub fn new(budget: &Arc<MemoryBudget>) -> Reservation {
        Reservation {
            budget: budget.clone(),
            held: 0,
        }
    }

    /// Holds `n` more bytes; false (and nothing held) past the bound.
    pub fn grow(&mut self, n: usize) -> bool {
        if !self.budget.take(n) {
            return false;
        }
        self.held += n;
        true
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Gives everything back (what it was for was dropped).
    pub fn release(&mut self) {
        self.budget.give(self.held);
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_until_dropped_and_never_pass_the_bound() {
        let budget = MemoryBudget::new(10);
        let mut a = Reservation::new(&budget);
        assert!(a.grow(6));
        let mut b = Reservation::new(&budget);
        assert!(!b.grow(5), "6 + 5 > 10");
        assert_eq!(b.held(), 0);
        assert!(b.grow(4));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        b.release();
        assert_eq!(budget.used(), 0);
        assert!(!Reservation::new(&budget).grow(usize::MAX), "no overflow");
    }
}
