//! Queues whose spooled messages the running policy cannot deliver now: it
//! does not route them, or its queue config failed. Their messages are
//! *held* on the spool's schedule, never bounced; the pager leaves them be
//! until a reload, a change of routes or the periodic re-check clears the
//! verdicts and the policy is asked again. A route deleted for good must not
//! keep mail forever: held messages expire after `Limits::held_max_age`.

use super::Refusal;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct Held {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Why each queue is held now.
    verdicts: HashMap<String, Refusal>,
    /// Queues logged as held and not yet released: logged once, not per check.
    warned: HashSet<String>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `queue`'s messages.
    pub fn hold(&self, queue: &str, why: Refusal) {
        let mut st = self.lock();
        if st.warned.insert(queue.to_owned()) {
            tracing::warn!(
                %queue,
                code = why.code,
                reason = %why.reason,
                "holding the spooled messages of a queue the running policy cannot deliver; \
                 they wait until a policy routes it"
            );
        }
        st.verdicts.insert(queue.to_owned(), why);
    }

    /// The policy routes `queue` again.
    pub fn release(&self, queue: &str) {
        let mut st = self.lock();
        st.verdicts.remove(queue);
        if st.warned.remove(queue) {
            tracing::info!(%queue, "released: the running policy routes this queue again");
        }
    }

    pub fn refusal(&self, queue: &str) -> Option<Refusal> {
        self.lock().verdicts.get(queue).cloned()
    }

    pub fn contains(&self, queue: &str) -> bool {
        self.lock().verdicts.contains_key(queue)
    }

    /// Held and not released since (whether or not the verdict is current).
    pub fn is_held(&self, queue: &str) -> bool {
        self.lock().warned.contains(queue)
    }

    /// Queues held and not released since.
    pub fn queues(&self) -> Vec<String> {
        self.lock().warned.iter().cloned().collect()
    }

    /// Forgets every verdict: the policy is asked again.
    pub fn clear(&self) {
        self.lock().verdicts.clear();
    }
}
