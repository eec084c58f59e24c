//! Draining: a relay that stops (a scale-in, a rolling update) or a drain
//! job on a spool left behind delivers what the spool holds before it exits,
//! and says what it could not.

use super::Engine;
use super::spool::SpoolError;
use crate::model::message::now_ms;
pub use crate::model::spool_report::{DrainEnd, SpoolReport, SpoolState};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a drain looks at what is left.
const LOOK_EVERY: Duration = Duration::from_millis(100);

impl Engine {
    /// Delivers what is deliverable until the spool is empty, nothing left
    /// can go out before `limit` passes, or it passes.
    pub async fn drain(self: &Arc<Self>, limit: Duration) -> Result<DrainEnd, SpoolError> {
        let deadline = Instant::now() + limit;
        let deadline_ms = now_ms() + limit.as_millis() as u64;
        loop {
            if self.spool.counts().await?.messages == 0 {
                return Ok(DrainEnd::Empty);
            }
            if Instant::now() >= deadline {
                return Ok(DrainEnd::Deadline);
            }
            if self.active() == 0 && self.routes_ready() {
                let skip = {
                    let engine = self.clone();
                    Box::new(move |label: &str| {
                        engine.held.is_held(label) || engine.is_suspended_label(label)
                    })
                };
                let due = self.spool.due_queues(1, skip).await?;
                if due.due.is_empty() && due.next.is_none_or(|next| next > deadline_ms) {
                    // Removals of delivered messages wait for a commit:
                    // what looked left may be gone once they are made.
                    self.spool.flush().await?;
                    if self.spool.counts().await?.messages == 0 {
                        return Ok(DrainEnd::Empty);
                    }
                    return Ok(DrainEnd::Undeliverable);
                }
            }
            tokio::time::sleep(LOOK_EVERY.min(deadline - Instant::now())).await;
        }
    }

    /// Makes every message waiting for a later retry due now (a drain job
    /// on a spool left behind tries each once, as `postqueue -f` does).
    /// Returns how many moved.
    pub async fn retry_now(&self) -> Result<u64, SpoolError> {
        let mut moved = 0;
        loop {
            let n = self.spool.retry_now(RETRY_NOW_STEP).await?;
            moved += n;
            if n < RETRY_NOW_STEP as u64 {
                self.wake_pager();
                return Ok(moved);
            }
        }
    }

    /// What the spool holds now.
    pub async fn spool_report(&self, drain: Option<DrainEnd>) -> Result<SpoolReport, SpoolError> {
        let counts = self.spool.counts().await?;
        let held = counts
            .scheduled
            .iter()
            .filter(|(q, _)| self.held.is_held(q))
            .map(|(q, _)| q.clone())
            .collect();
        Ok(SpoolReport {
            state: SpoolState::Stopped,
            left: counts.messages,
            queues: counts.scheduled.into_iter().collect(),
            held,
            drain,
            at: now_ms() / 1000,
        })
    }
}

/// Schedule entries moved per spool round trip by `retry_now` (one commit
/// each, so a large backlog never makes one large transaction).
const RETRY_NOW_STEP: usize = 10_000;
