//! Log settings as `kumo.configure_local_logs{…}` and
//! `kumo.configure_log_hook{…}` take them.

use super::config::{de_opt_duration, parse_size};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

fn default_max_file_size() -> u64 {
    1024 * 1024 * 1024
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        T(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::T(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// `kumo.configure_local_logs{…}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLogsConfig {
    pub log_dir: PathBuf,
    #[serde(default = "default_max_file_size", deserialize_with = "de_size")]
    pub max_file_size: u64,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_segment_duration: Option<Duration>,
    /// 0 writes plain JSON lines; 1–22 writes zstd segments (`.zst`).
    #[serde(default)]
    pub compression_level: i32,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub per_record: PerRecord,
}

/// KumoMTA's `per_record`: settings by record type, `Any` for the types not
/// listed. Of its settings this relay has `enable`; the others (suffix,
/// log_dir, template, segment_header) are refused when the policy loads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(try_from = "std::collections::BTreeMap<String, RecordParams>")]
pub struct PerRecord(std::collections::BTreeMap<String, RecordParams>);

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordParams {
    #[serde(default = "yes")]
    pub enable: bool,
}

fn yes() -> bool {
    true
}

/// The record types KumoMTA names in `per_record` (and `Any`).
const RECORD_TYPES: &[&str] = &[
    "Reception",
    "Delivery",
    "Bounce",
    "TransientFailure",
    "Expiration",
    "AdminBounce",
    "OOB",
    "Feedback",
    "Any",
];

impl TryFrom<std::collections::BTreeMap<String, RecordParams>> for PerRecord {
    type Error = String;
    fn try_from(m: std::collections::BTreeMap<String, RecordParams>) -> Result<Self, String> {
        match m.keys().find(|k| !RECORD_TYPES.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "per_record: unknown record type {k:?} (expected one of {})",
                RECORD_TYPES.join(", ")
            )),
            None => Ok(PerRecord(m)),
        }
    }
}

impl PerRecord {
    /// Whether records of `kind` are written: its own entry, else `Any`'s, else yes.
    pub fn enabled(&self, kind: &str) -> bool {
        self.0
            .get(kind)
            .or_else(|| self.0.get("Any"))
            .is_none_or(|p| p.enable)
    }
}

/// `kumo.configure_log_hook{…}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHookConfig {
    pub name: String,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub meta: Vec<String>,
    #[serde(default)]
    pub per_record: PerRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_record_enables_by_type_then_any() {
        let h: LogHookConfig = serde_json::from_value(serde_json::json!({
            "name": "h",
            "per_record": {"Any": {"enable": false}, "Delivery": {}}
        }))
        .unwrap();
        assert!(h.per_record.enabled("Delivery"));
        assert!(!h.per_record.enabled("Reception"));
        assert!(
            LogHookConfig {
                per_record: PerRecord::default(),
                ..h.clone()
            }
            .per_record
            .enabled("Bounce")
        );
        let err = serde_json::from_value::<LogHookConfig>(serde_json::json!({
            "name": "h", "per_record": {"Delivered": {}}
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown record type \"Delivered\""), "{err}");
        let err = serde_json::from_value::<LogHookConfig>(serde_json::json!({
            "name": "h", "per_record": {"Bounce": {"template": "x"}}
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `template`"), "{err}");
    }
}
