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
}
