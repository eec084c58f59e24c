//! How the spool's commits go, for /metrics: their time says how fast the
//! disk makes mail durable (every acknowledgement waits for one), and
//! failures say it stopped doing so.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::LazyLock;

/// Seconds per committed write transaction, its fsync included.
pub static COMMIT_SECONDS: LazyLock<Histogram> =
    LazyLock::new(crate::engine::metrics::seconds_histogram);

/// Write transactions that failed (a full disk, an I/O error).
pub static COMMIT_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);
