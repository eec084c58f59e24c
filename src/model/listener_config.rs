//! Listener settings as `kumo.start_esmtp_listener{…}` and
//! `kumo.start_http_listener{…}` take them (or the command line's flags).

use super::config::de_duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    pub listen: String,
    /// CIDRs allowed to inject and administer; KumoMTA's default is loopback only.
    #[serde(default = "loopback")]
    pub trusted_hosts: Vec<String>,
}

pub fn loopback() -> Vec<String> {
    vec!["127.0.0.1/32".into(), "::1/128".into()]
}

fn default_hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "amqp-relay".into())
}
fn default_max_message_size() -> usize {
    20 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    1024
}
fn default_max_messages() -> usize {
    10_000
}
fn default_client_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    // Idle, a session costs about 16 KiB (buffers, state): 1,024 of them
    // 16 MiB. Message bodies being received are bounded apart, by
    // max_data_memory.
    1024
}
fn default_max_data_memory() -> usize {
    64 * 1024 * 1024
}
fn default_line_limit() -> usize {
    // RFC 5321 allows 998 bytes; generous headroom for sloppy clients.
    4096
}

/// `kumo.start_esmtp_listener{…}` (or `--smtp-listen`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmtpListener {
    pub listen: String,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Clients allowed to relay; others get 550 5.7.1 at RCPT.
    #[serde(default = "loopback")]
    pub relay_hosts: Vec<String>,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_max_recipients")]
    pub max_recipients_per_message: usize,
    #[serde(default = "default_max_messages")]
    pub max_messages_per_connection: usize,
    #[serde(default = "default_client_timeout", deserialize_with = "de_duration")]
    pub client_timeout: Duration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_line_limit")]
    pub line_length_hard_limit: usize,
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    #[serde(default)]
    pub banner: Option<String>,
    /// Our extension: bytes of message bodies all this listener's sessions
    /// may hold while receiving DATA; past it a transaction gets 452 4.3.1.
    #[serde(default = "default_max_data_memory")]
    pub max_data_memory: usize,
    /// Our extension: refuse MAIL until the client has started TLS.
    #[serde(default)]
    pub require_starttls: bool,
    /// Our extension: offer AUTH without TLS (credentials in the clear).
    #[serde(default)]
    pub allow_auth_without_tls: bool,
}

impl EsmtpListener {
    pub fn with_defaults(listen: String) -> EsmtpListener {
        serde_json::from_value(serde_json::json!({ "listen": listen }))
            .expect("defaults deserialise")
    }
}
