//! Listener settings as `kumo.start_esmtp_listener{…}` and
//! `kumo.start_http_listener{…}` take them (or the command line's flags).

use super::config::de_duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `kumo.start_http_listener{…}` (or `--http-listen`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    pub listen: String,
    /// Peers that may inject and administer without credentials; KumoMTA's
    /// default is loopback only. Others authenticate (HTTP Basic, checked by
    /// `http_server_validate_auth_basic`).
    #[serde(default = "loopback")]
    pub trusted_hosts: Vec<String>,
    /// Accepted as in KumoMTA (it names the server; TLS uses the certificate).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Serve HTTPS; needs `tls_certificate` and `tls_private_key` (KumoMTA
    /// would make a self-signed certificate: this relay does not).
    #[serde(default)]
    pub use_tls: bool,
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// Largest request body, in bytes (KumoMTA's default: 2 MiB); more gets 413.
    #[serde(default = "default_request_body_limit", deserialize_with = "de_size")]
    pub request_body_limit: usize,
    /// Our extension: authenticated users who may also use the admin API
    /// (trusted hosts always may); other credentials inject only.
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Our extension: connections served at once; more are closed at once.
    #[serde(default = "default_http_connections")]
    pub max_connections: usize,
    /// Our extension: a client must send a request's headers within this.
    #[serde(default = "default_header_timeout", deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Our extension: a request (body included) must be done within this.
    #[serde(default = "default_request_timeout", deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Our extension: recipients one injection request may name.
    #[serde(default = "default_max_recipients_per_request")]
    pub max_recipients_per_request: usize,
    /// Our extension: bytes of messages one injection request may build (a
    /// body its recipients share counts once); more gets 413.
    #[serde(default = "default_max_request_messages", deserialize_with = "de_size")]
    pub max_request_messages_size: usize,
    /// Our extension: bytes all of this listener's injection requests may
    /// hold at once (request bodies and the messages built from them, until
    /// durable); past it a request gets 503.
    #[serde(default = "default_request_memory", deserialize_with = "de_size")]
    pub request_memory: usize,
}

impl HttpListener {
    /// A listener with every default but its address and trusted hosts.
    pub fn with_defaults(listen: String, trusted_hosts: Vec<String>) -> HttpListener {
        serde_json::from_value(serde_json::json!({
            "listen": listen,
            "trusted_hosts": trusted_hosts,
        }))
        .expect("defaults deserialise")
    }
}

fn default_request_body_limit() -> usize {
    2 * 1024 * 1024
}
fn default_http_connections() -> usize {
    1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_recipients_per_request() -> usize {
    10_000
}
fn default_max_request_messages() -> usize {
    32 * 1024 * 1024
}
fn default_request_memory() -> usize {
    64 * 1024 * 1024
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        T(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::N(n) => n,
        Raw::T(t) => super::config::parse_size(&t).map_err(serde::de::Error::custom)?,
    };
    usize::try_from(n).map_err(serde::de::Error::custom)
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
    #[serde(default = "default_max_data_memory", deserialize_with = "de_size")]
    pub max_data_memory: usize,
    /// Our extension: refuse MAIL until the client has started TLS.
    #[serde(default)]
    pub require_starttls: bool,
    /// Our extension: offer AUTH without TLS (credentials in the clear).
    #[serde(default)]
    pub allow_auth_without_tls: bool,
    /// KumoMTA's `trace_headers`, kept as whether to add `Received:` (on by
    /// default, as in KumoMTA and RFC 5321).
    #[serde(
        default = "yes",
        rename = "trace_headers",
        deserialize_with = "de_smtp_trace"
    )]
    pub received_header: bool,
    /// KumoMTA's `invalid_line_endings`: what becomes of a message whose
    /// DATA holds a bare LF or CR. Only CRLF.CRLF ever ends DATA.
    #[serde(default)]
    pub invalid_line_endings: InvalidLineEndings,
}

/// KumoMTA's `invalid_line_endings` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum InvalidLineEndings {
    /// Refuse the message (KumoMTA's default).
    #[default]
    Deny,
    /// Accept the bytes as sent.
    Allow,
    /// Make every line end CRLF, then accept.
    Fix,
}

fn yes() -> bool {
    true
}

fn de_smtp_trace<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    crate::model::trace::TraceHeaders::deserialize(d)?
        .received(true)
        .map_err(serde::de::Error::custom)
}

impl EsmtpListener {
    pub fn with_defaults(listen: String) -> EsmtpListener {
        serde_json::from_value(serde_json::json!({ "listen": listen }))
            .expect("defaults deserialise")
    }
}

/// IP literals and CIDRs, as `trusted_hosts`, `relay_hosts` and a listener
/// domain's `relay_from` take them.
pub fn parse_nets(hosts: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    hosts
        .iter()
        .map(|h| {
            h.parse::<ipnet::IpNet>()
                .or_else(|_| h.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{h:?} is not an IP address or CIDR"))
        })
        .collect()
}

/// `kumo.make_listener_domain{…}`: whether SMTP clients outside
/// `relay_hosts` may relay to (`relay_to`) or from (`relay_from`) a domain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerDomain {
    #[serde(default)]
    pub relay_to: bool,
    #[serde(default, rename = "relay_from")]
    relay_from_hosts: Vec<String>,
    #[serde(default)]
    log_oob: bool,
    #[serde(default)]
    log_arf: bool,
    #[serde(skip)]
    relay_from: Vec<ipnet::IpNet>,
}

impl ListenerDomain {
    pub fn validate(mut self) -> Result<Self, String> {
        if self.log_oob || self.log_arf {
            return Err(
                "log_oob and log_arf are not provided by amqp-relay (it does not parse \
                 bounce or feedback reports; relay them with relay_to and parse them downstream)"
                    .into(),
            );
        }
        self.relay_from =
            parse_nets(&self.relay_from_hosts).map_err(|e| format!("relay_from: {e}"))?;
        Ok(self)
    }

    /// Whether a client at `ip` may relay mail from this (sender) domain.
    pub fn relays_from(&self, ip: std::net::IpAddr) -> bool {
        self.relay_from.iter().any(|n| n.contains(&ip))
    }
}
