//! Lua-facing configuration: each is a serde struct with `deny_unknown_fields`,
//! so a typo in a policy is an error naming the key.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Seconds as a number, or a string such as `"5m"`, `"20 minutes"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(secs) = compact.parse::<f64>() {
        return secs_to_duration(secs);
    }
    humantime::parse_duration(&compact).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

fn secs_to_duration(secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs >= 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "invalid duration {secs}: must be a non-negative number of seconds"
        ))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(f64),
    Text(String),
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match RawDuration::deserialize(d)? {
        RawDuration::Secs(s) => secs_to_duration(s),
        RawDuration::Text(t) => parse_duration(&t),
    }
    .map_err(serde::de::Error::custom)
}

pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A size such as `"100MB"`, `"1 GiB"`, `"512k"` or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// A rate such as `"100/s"`, `"6000/m"`, `"10/h"`, or a bare number per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let err = || format!("invalid rate {text:?}: expected N/s, N/m, N/h or N/d");
        let (n, unit) = text.split_once('/').unwrap_or((text, "s"));
        let n: f64 = n.trim().parse().map_err(|_| err())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hr" | "hour" => 3600.0,
            "d" | "day" => 86400.0,
            _ => return Err(err()),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(err());
        }
        Ok(Rate {
            per_second: n / per,
        })
    }
}

fn de_opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(f64),
        T(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Rate::parse(&n.to_string()),
        Raw::T(t) => Rate::parse(&t),
    }
    .map(Some)
    .map_err(serde::de::Error::custom)
}

fn default_retry_interval() -> Duration {
    Duration::from_secs(20 * 60)
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 86400)
}
fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "default_retry_interval", deserialize_with = "de_duration")]
    pub retry_interval: Duration,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_retry_interval: Option<Duration>,
    #[serde(default = "default_max_age", deserialize_with = "de_duration")]
    pub max_age: Duration,
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub max_message_rate: Option<Rate>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retry_interval: default_retry_interval(),
            max_retry_interval: None,
            max_age: default_max_age(),
            max_message_rate: None,
            protocol: Protocol::default(),
        }
    }
}

impl QueueConfig {
    pub fn validate(self) -> Result<Self, String> {
        if let Protocol::CustomLua(c) = &self.protocol {
            if c.batch_size == 0 || c.min_batch_size == 0 {
                return Err("batch_size and min_batch_size must be at least 1".into());
            }
            if c.min_batch_size > c.batch_size {
                return Err("min_batch_size must not exceed batch_size".into());
            }
        }
        if self.retry_interval.is_zero() {
            return Err("retry_interval must be more than 0".into());
        }
        Ok(self)
    }

    /// Delay before attempt `attempts + 1`: `retry_interval × 2^attempts`, capped, ±10 % jitter.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let base = self.retry_interval.as_secs_f64() * 2f64.powi(attempts.min(62) as i32);
        let cap = self
            .max_retry_interval
            .map(|d| d.as_secs_f64())
            .unwrap_or(f64::MAX);
        let delay = base.min(cap);
        let jitter = 1.0 + (fastrand::f64() - 0.5) * 0.2;
        Duration::from_secs_f64((delay * jitter).clamp(0.0, 1e9))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// KumoMTA's default: SMTP delivery, which this relay does not do.
    #[default]
    Smtp,
    CustomLua(CustomLua),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomLua {
    pub constructor: String,
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub min_batch_size: usize,
    #[serde(default, deserialize_with = "de_duration")]
    pub max_batch_latency: Duration,
}

/// A count as KumoMTA takes it: a number, or a string with `,` or `_`
/// between digits (`'1,000'`).
fn de_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(usize),
        T(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::T(t) => {
            let digits: String = t
                .trim()
                .chars()
                .filter(|c| !matches!(c, ',' | '_'))
                .collect();
            digits.parse().map_err(|_| {
                serde::de::Error::custom(format!("{t:?} is not a count (e.g. 1000 or '1,000')"))
            })
        }
    }
}

fn default_connection_limit() -> usize {
    32
}
fn default_max_deliveries() -> usize {
    1024
}
fn default_max_ready() -> usize {
    1024
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressPathConfig {
    #[serde(default = "default_connection_limit", deserialize_with = "de_count")]
    pub connection_limit: usize,
    #[serde(default = "default_max_deliveries", deserialize_with = "de_count")]
    pub max_deliveries_per_connection: usize,
    #[serde(default = "default_max_ready", deserialize_with = "de_count")]
    pub max_ready: usize,
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub max_message_rate: Option<Rate>,
    /// Bound on one `send`/`send_batch` call (and on the constructor).
    #[serde(default = "default_send_timeout", deserialize_with = "de_duration")]
    pub send_timeout: Duration,
}

impl EgressPathConfig {
    pub fn validate(self) -> Result<Self, String> {
        for (key, v) in [
            ("connection_limit", self.connection_limit),
            (
                "max_deliveries_per_connection",
                self.max_deliveries_per_connection,
            ),
            ("max_ready", self.max_ready),
        ] {
            if v == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        Ok(self)
    }
}

impl Default for EgressPathConfig {
    fn default() -> Self {
        Self {
            connection_limit: default_connection_limit(),
            max_deliveries_per_connection: default_max_deliveries(),
            max_ready: default_max_ready(),
            idle_timeout: default_idle_timeout(),
            max_message_rate: None,
            send_timeout: default_send_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_spelling() {
        for (text, secs) in [
            ("5m", 300.0),
            ("20 minutes", 1200.0),
            ("1h 30m", 5400.0),
            ("90", 90.0),
            ("1.5", 1.5),
            ("7d", 604800.0),
        ] {
            assert_eq!(parse_duration(text).unwrap().as_secs_f64(), secs, "{text}");
        }
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3").is_err());
    }

    #[test]
    fn counts_as_kumomta_takes_them() {
        let e: EgressPathConfig =
            serde_json::from_value(serde_json::json!({"connection_limit": "1,000", "max_ready": 20, "max_deliveries_per_connection": "10_000"}))
                .unwrap();
        assert_eq!(
            (
                e.connection_limit,
                e.max_ready,
                e.max_deliveries_per_connection
            ),
            (1000, 20, 10_000)
        );
        let err = serde_json::from_value::<EgressPathConfig>(
            serde_json::json!({"connection_limit": "lots"}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"lots\" is not a count"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("2 KiB").unwrap(), 2048);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 furlongs").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("100/s").unwrap().per_second, 100.0);
        assert_eq!(Rate::parse("60/m").unwrap().per_second, 1.0);
        assert_eq!(Rate::parse("5").unwrap().per_second, 5.0);
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("3/fortnight").is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = serde_json::from_str::<QueueConfig>(r#"{"retry_intervl": 5}"#).unwrap_err();
        assert!(err.to_string().contains("retry_intervl"), "{err}");
        let err = serde_json::from_str::<QueueConfig>(
            r#"{"protocol": {"custom_lua": {"constructor": "x", "batchsize": 3}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn retry_backoff_doubles_and_caps() {
        let q = QueueConfig {
            retry_interval: Duration::from_secs(10),
            max_retry_interval: Some(Duration::from_secs(60)),
            ..QueueConfig::default()
        };
        for (attempts, expect) in [(0, 10.0), (1, 20.0), (2, 40.0), (3, 60.0), (40, 60.0)] {
            let d = q.retry_delay(attempts).as_secs_f64();
            assert!((d - expect).abs() <= expect * 0.1 + 1e-9, "{attempts}: {d}");
        }
    }
}
