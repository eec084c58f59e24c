//! What a spool holds when its relay stops: written by the relay (and by a
//! drain job) to the spool's directory and, in a cluster, to a ConfigMap key
//! named for the spool, where the operator reads it to drain spools left
//! behind by a scale-in.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainEnd {
    /// The spool is empty.
    Empty,
    /// What is left cannot go out before the deadline: held (no route),
    /// suspended, or waiting for a retry that falls later.
    Undeliverable,
    /// The deadline passed with deliverable mail left.
    Deadline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolState {
    /// A relay (or a drain job) has the spool open.
    Running,
    /// Its last user stopped; `left` says what it left.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolReport {
    pub state: SpoolState,
    /// Messages left in the spool.
    #[serde(default)]
    pub left: u64,
    /// Per queue with messages waiting on the schedule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, u64>,
    /// Queues no route serves now (their mail waits for one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// How the drain before the stop ended (absent: no drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainEnd>,
    /// Unix seconds.
    pub at: u64,
}

impl SpoolReport {
    pub fn running(at: u64) -> SpoolReport {
        SpoolReport {
            state: SpoolState::Running,
            left: 0,
            queues: BTreeMap::new(),
            held: Vec::new(),
            drain: None,
            at,
        }
    }

    /// Stopped with nothing left.
    pub fn is_empty(&self) -> bool {
        self.state == SpoolState::Stopped && self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written_and_names_its_fields() {
        let r = SpoolReport {
            state: SpoolState::Stopped,
            left: 3,
            queues: [("amqp".to_string(), 3)].into(),
            held: vec!["amqp".into()],
            drain: Some(DrainEnd::Undeliverable),
            at: 1_700_000_000,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"state":"stopped","left":3,"queues":{"amqp":3},"held":["amqp"],"drain":"undeliverable","at":1700000000}"#
        );
        assert_eq!(serde_json::from_str::<SpoolReport>(&text).unwrap(), r);
        let running: SpoolReport = serde_json::from_str(r#"{"state":"running","at":1}"#).unwrap();
        assert!(!running.is_empty());
        assert!(serde_json::from_str::<SpoolReport>(r#"{"state":"gone","at":1}"#).is_err());
    }
}
