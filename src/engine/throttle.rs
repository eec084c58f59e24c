//! A rate limiter for `max_message_rate`: each permit moves the earliest time
//! of the next one forward by 1/rate (GCRA without burst).

use crate::model::config::Rate;
use std::sync::Mutex;
use tokio::time::{Duration, Instant};

pub struct Throttle {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Throttle {
    pub fn new(rate: Rate) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / rate.per_second),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until one more message may go.
    pub async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_permits_by_the_rate() {
        let t = Throttle::new(Rate::parse("10/s").unwrap());
        let start = Instant::now();
        for _ in 0..21 {
            t.acquire().await;
        }
        // With time paused, elapsed virtual time is exactly 20 intervals.
        assert_eq!(start.elapsed(), Duration::from_millis(2000));
    }
}
