//! KumoMTA's `trace_headers` (listener option and inject request field):
//! the `Received:` trace header of RFC 5321 §4.4. KumoMTA's supplemental
//! `X-KumoRef` header is not added (it serves matching feedback reports
//! back to mail KumoMTA delivered by SMTP, and is per recipient where this
//! relay spools one body for all of a request's recipients); asking for it
//! is refused rather than ignored.

use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeaders {
    #[serde(default)]
    pub received_header: Option<bool>,
    #[serde(default)]
    pub supplemental_header: Option<bool>,
    #[serde(default)]
    pub header_name: Option<String>,
    #[serde(default)]
    pub include_meta_names: Vec<String>,
}

impl TraceHeaders {
    /// Whether to add `Received:`, given the default of where it is used
    /// (KumoMTA: on for SMTP, off for HTTP injection); an error names what
    /// is not provided.
    pub fn received(&self, default: bool) -> Result<bool, String> {
        if self.supplemental_header != Some(false) {
            return Err(
                "trace_headers: the supplemental (X-KumoRef) header is not provided by amqp-relay; \
                 set supplemental_header = false"
                    .into(),
            );
        }
        Ok(self.received_header.unwrap_or(default))
    }
}

/// How the message came: `with` of the Received header (RFC 3848).
pub struct Via<'a> {
    pub helo: Option<&'a str>,
    pub peer: IpAddr,
    pub by: &'a str,
    pub protocol: &'static str,
    /// Named when the message has a single recipient (as Postfix does).
    pub for_rcpt: Option<&'a str>,
}

/// `Received: from helo (ip) by host with proto[ for <rcpt>]; date`, folded.
pub fn received(via: &Via) -> String {
    let from = via.helo.unwrap_or("unknown");
    let mut out = format!(
        "Received: from {from} ({})\r\n\tby {} (amqp-relay) with {}",
        via.peer, via.by, via.protocol
    );
    if let Some(r) = via.for_rcpt {
        out.push_str(&format!("\r\n\tfor <{r}>"));
    }
    out.push_str(";\r\n\t");
    out.push_str(&mail_builder::headers::date::Date::now().to_rfc822());
    out.push_str("\r\n");
    out
}

/// The SMTP `with` keyword: ESMTP, plus S for TLS and A for AUTH.
pub fn esmtp_protocol(tls: bool, auth: bool) -> &'static str {
    match (tls, auth) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    }
}

/// Strips characters that would end the header or break its syntax from a
/// client-chosen word (the HELO name).
pub fn clean_word(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header_names_peer_host_protocol_and_recipient() {
        let h = received(&Via {
            helo: Some("client.example"),
            peer: "192.0.2.7".parse().unwrap(),
            by: "relay.local",
            protocol: esmtp_protocol(true, false),
            for_rcpt: Some("a@amqp"),
        });
        assert!(
            h.starts_with(
                "Received: from client.example (192.0.2.7)\r\n\tby relay.local (amqp-relay) with ESMTPS\r\n\tfor <a@amqp>;\r\n\t"
            ),
            "{h}"
        );
        assert!(h.ends_with("\r\n") && mailparse::parse_header(h.as_bytes()).is_ok());
        assert_eq!(clean_word("evil\r\nX-Bad: (1);"), "evilX-Bad:1");
    }

    #[test]
    fn the_supplemental_header_is_refused_unless_turned_off() {
        let t = |v: serde_json::Value| serde_json::from_value::<TraceHeaders>(v).unwrap();
        assert!(t(serde_json::json!({})).received(true).is_err());
        assert!(
            t(serde_json::json!({"supplemental_header": true}))
                .received(false)
                .unwrap_err()
                .contains("X-KumoRef")
        );
        let off = t(serde_json::json!({"supplemental_header": false}));
        assert_eq!(off.received(true), Ok(true));
        assert_eq!(off.received(false), Ok(false));
    }
}
