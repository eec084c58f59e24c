//! Log records in KumoMTA's JSON shape, for local logs and log hooks.

use crate::model::message::Message;
pub use crate::model::response::{EnhancedCode, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RecordType {
    Reception,
    Delivery,
    TransientFailure,
    Bounce,
    Expiration,
    AdminBounce,
}

impl RecordType {
    pub fn name(self) -> &'static str {
        match self {
            RecordType::Reception => "Reception",
            RecordType::Delivery => "Delivery",
            RecordType::TransientFailure => "TransientFailure",
            RecordType::Bounce => "Bounce",
            RecordType::Expiration => "Expiration",
            RecordType::AdminBounce => "AdminBounce",
        }
    }
}

/// This relay's node id in every record (KumoMTA's `nodeid`): kept in the
/// spool directory, so it survives restarts; random until set.
static NODE_ID: std::sync::OnceLock<uuid::Uuid> = std::sync::OnceLock::new();

/// Sets the records' node id from `<dir>/nodeid` (made if missing).
pub fn init_node_id(dir: &std::path::Path) -> std::io::Result<uuid::Uuid> {
    let id = load_node_id(dir)?;
    Ok(*NODE_ID.get_or_init(|| id))
}

fn load_node_id(dir: &std::path::Path) -> std::io::Result<uuid::Uuid> {
    let path = dir.join("nodeid");
    let id = match std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| uuid::Uuid::parse_str(t.trim()).ok())
    {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4();
            std::fs::create_dir_all(dir)?;
            std::fs::write(&path, id.hyphenated().to_string())?;
            id
        }
    };
    Ok(id)
}

fn node_id() -> uuid::Uuid {
    *NODE_ID.get_or_init(uuid::Uuid::new_v4)
}

/// Which records a consumer wants, and which headers and meta keys copied into each.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub headers: Vec<String>,
    pub meta: Vec<String>,
    pub per_record: crate::model::log_config::PerRecord,
}

impl Selection {
    pub fn wants(&self, kind: RecordType) -> bool {
        self.per_record.enabled(kind.name())
    }
}

/// Everything that describes one event, before per-consumer selection.
pub struct Event<'a> {
    pub kind: RecordType,
    pub msg: &'a Message,
    pub queue: &'a str,
    pub response: Response,
    /// The custom_lua constructor of a delivery attempt: KumoMTA's
    /// `delivery_protocol` "Lua" and peer "Lua via <constructor>".
    pub lua_constructor: Option<&'a str>,
}

/// KumoMTA's `ResolvedAddress`: the peer's name (EHLO name when receiving)
/// and IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedAddress {
    pub name: String,
    pub addr: IpAddr,
}

/// A record in the shape of KumoMTA's `JsonLogRecord`
/// (`timestamp`/`created` in seconds since the epoch, `event_time`/
/// `created_time` the same instants in RFC 3339 with their fraction); what a
/// relay to AMQP never has (TLS, source address, feedback report) is null,
/// as in KumoMTA for a record without it.
#[derive(Debug, Serialize)]
pub struct LogRecord {
    #[serde(rename = "type")]
    pub kind: RecordType,
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub queue: String,
    /// Empty for Reception records, as KumoMTA's.
    pub site: String,
    pub size: u64,
    pub response: Response,
    pub peer_address: Option<ResolvedAddress>,
    pub timestamp: u64,
    pub created: u64,
    pub event_time: String,
    pub created_time: String,
    pub num_attempts: u32,
    pub bounce_classification: &'static str,
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
    pub source_address: Option<()>,
    pub feedback_report: Option<()>,
    pub meta: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub delivery_protocol: Option<&'static str>,
    pub reception_protocol: Option<String>,
    pub nodeid: uuid::Uuid,
    pub tls_cipher: Option<String>,
    pub tls_protocol_version: Option<String>,
    pub tls_peer_subject_name: Option<Vec<String>>,
    pub provider_name: Option<String>,
    pub session_id: Option<uuid::Uuid>,
}

impl Event<'_> {
    /// The meta keys and headers `sel` copies into the record.
    fn selected(
        &self,
        env: &crate::model::message::Envelope,
        sel: &Selection,
    ) -> (Map<String, Value>, Map<String, Value>) {
        let meta = sel
            .meta
            .iter()
            .filter_map(|k| Some((k.clone(), env.meta.get(k)?.clone())))
            .collect();
        let headers = sel
            .headers
            .iter()
            .filter_map(|h| Some((h.clone(), Value::String(self.msg.first_header(h)?))))
            .collect();
        (meta, headers)
    }

    pub fn record(&self, sel: &Selection) -> Value {
        serde_json::to_value(self.log_record(sel)).unwrap_or(Value::Null)
    }

    pub fn log_record(&self, sel: &Selection) -> LogRecord {
        let env = self.msg.envelope();
        let reception = env
            .meta
            .get("reception_protocol")
            .and_then(Value::as_str)
            .unwrap_or("HTTP")
            .to_owned();
        let (meta, headers) = self.selected(&env, sel);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let site = match self.kind {
            RecordType::Reception => String::new(),
            _ => self.queue.to_owned(),
        };
        // KumoMTA's custom_lua dispatcher records the "unspecified" pool and
        // source, and itself as the peer.
        let lua = self.lua_constructor;
        let egress = lua.map(|_| "unspecified".to_owned());
        let peer_address = match (self.kind, lua) {
            (RecordType::Reception, _) => reception_peer(&env.meta),
            (_, Some(constructor)) => Some(ResolvedAddress {
                name: format!("Lua via {constructor}"),
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            }),
            (_, None) => None,
        };
        LogRecord {
            kind: self.kind,
            id: self.msg.id().simple().to_string(),
            sender: env.sender.clone(),
            recipient: env.recipient.clone(),
            queue: self.queue.to_owned(),
            site,
            size: self.msg.size() as u64,
            response: self.response.clone(),
            peer_address,
            timestamp: now.as_secs(),
            created: env.created_ms / 1000,
            event_time: rfc3339(now),
            created_time: rfc3339(Duration::from_millis(env.created_ms)),
            num_attempts: env.num_attempts,
            bounce_classification: "Uncategorized",
            egress_pool: egress.clone(),
            egress_source: egress,
            source_address: None,
            feedback_report: None,
            meta,
            headers,
            delivery_protocol: lua.map(|_| "Lua"),
            reception_protocol: Some(reception),
            nodeid: node_id(),
            tls_cipher: None,
            tls_protocol_version: None,
            tls_peer_subject_name: None,
            provider_name: None,
            session_id: None,
        }
    }
}

/// The submitter, as KumoMTA's listeners record it: the EHLO name (empty
/// over HTTP) and the peer's IP, from the `received_from` the listener put
/// in the message's meta.
fn reception_peer(meta: &Map<String, Value>) -> Option<ResolvedAddress> {
    let from = meta.get("received_from")?.as_str()?;
    let addr = from
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| from.parse::<IpAddr>())
        .ok()?;
    let name = meta
        .get("ehlo_domain")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(ResolvedAddress { name, addr })
}

/// An instant since the epoch as chrono's serde writes a `DateTime<Utc>`
/// (KumoMTA's `event_time`): RFC 3339 in UTC, with 0, 3, 6 or 9 digits of
/// fraction.
fn rfc3339(since_epoch: Duration) -> String {
    let Ok(ts) = jiff::Timestamp::new(
        since_epoch.as_secs() as i64,
        since_epoch.subsec_nanos() as i32,
    ) else {
        return String::new();
    };
    let nanos = since_epoch.subsec_nanos();
    let digits = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    format!("{ts:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn record_shape() {
        let mut meta = Map::new();
        meta.insert("tenant".into(), "t".into());
        meta.insert("secret".into(), "s".into());
        let m = Message::new(
            "s@x".into(),
            "r@amqp".into(),
            meta.into(),
            Bytes::from_static(b"Subject: hi\r\nX-Id: 7\r\n\r\nbody"),
        );
        let ev = Event {
            kind: RecordType::Delivery,
            msg: &m,
            queue: "t@amqp",
            response: Response::parse("250 2.0.0 ok"),
            lua_constructor: Some("make.amqp"),
        };
        let r = ev.record(&Selection {
            headers: vec!["Subject".into(), "Missing".into()],
            meta: vec!["tenant".into()],
            ..Default::default()
        });
        assert_eq!(r["type"], "Delivery");
        assert_eq!(r["response"]["code"], 250);
        assert_eq!(r["response"]["content"], "ok");
        assert_eq!(
            r["response"]["enhanced_code"],
            serde_json::json!({"class": 2, "subject": 0, "detail": 0})
        );
        assert_eq!(r["headers"]["Subject"], "hi");
        assert!(r["headers"].get("Missing").is_none());
        assert_eq!(r["meta"]["tenant"], "t");
        assert!(r["meta"].get("secret").is_none(), "only the selected meta");
        assert_eq!(r["reception_protocol"], "HTTP");
        // Seconds since the epoch, as KumoMTA writes them.
        let created = r["created"].as_u64().unwrap();
        assert!(created > 1_700_000_000 && created <= r["timestamp"].as_u64().unwrap());
        assert_eq!(r["size"], m.size());
        assert_eq!(r["site"], "t@amqp");
        assert!(uuid::Uuid::parse_str(r["nodeid"].as_str().unwrap()).is_ok());
        // KumoMTA's custom_lua dispatcher (lua_deliver.rs): peer "Lua via
        // <constructor>" at 0.0.0.0, protocol "Lua", the unspecified pool.
        assert_eq!(
            r["peer_address"],
            serde_json::json!({"name": "Lua via make.amqp", "addr": "0.0.0.0"})
        );
        assert_eq!(r["delivery_protocol"], "Lua");
        assert_eq!(r["egress_pool"], "unspecified");
        assert_eq!(r["egress_source"], "unspecified");
        // event_time and created_time: the same instants as timestamp and
        // created, in RFC 3339 with their fraction.
        for (rfc, secs) in [("event_time", "timestamp"), ("created_time", "created")] {
            let t: jiff::Timestamp = r[rfc].as_str().unwrap().parse().unwrap();
            assert_eq!(t.as_second() as u64, r[secs].as_u64().unwrap(), "{rfc}");
            assert!(r[rfc].as_str().unwrap().ends_with('Z'), "{}", r[rfc]);
        }
        // Every field of KumoMTA's JsonLogRecord, and no other.
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bounce_classification",
                "created",
                "created_time",
                "delivery_protocol",
                "egress_pool",
                "egress_source",
                "event_time",
                "feedback_report",
                "headers",
                "id",
                "meta",
                "nodeid",
                "num_attempts",
                "peer_address",
                "provider_name",
                "queue",
                "reception_protocol",
                "recipient",
                "response",
                "sender",
                "session_id",
                "site",
                "size",
                "source_address",
                "timestamp",
                "tls_cipher",
                "tls_peer_subject_name",
                "tls_protocol_version",
                "type"
            ]
        );
        let reception = Event {
            kind: RecordType::Reception,
            ..ev
        };
        assert_eq!(reception.record(&Selection::default())["site"], "");
    }

    /// KumoMTA's SMTP listener records the EHLO name and the peer's IP as a
    /// reception's `peer_address` (smtp_server.rs); its HTTP injection an
    /// empty name (inject_v1.rs); a record without a peer, null.
    #[test]
    fn reception_peer_address_as_kumomta() {
        let reception = |meta: serde_json::Value| {
            let m = Message::new(
                "s@x".into(),
                "r@amqp".into(),
                meta.as_object().unwrap().clone().into(),
                Bytes::from_static(b"Subject: hi\r\n\r\nbody"),
            );
            Event {
                kind: RecordType::Reception,
                msg: &m,
                queue: "amqp",
                response: Response::new(250, ""),
                lua_constructor: None,
            }
            .record(&Selection::default())
        };
        let smtp = reception(serde_json::json!({
            "reception_protocol": "ESMTP",
            "received_from": "192.0.2.7:41000",
            "ehlo_domain": "mta.sender.example",
        }));
        assert_eq!(
            smtp["peer_address"],
            serde_json::json!({"name": "mta.sender.example", "addr": "192.0.2.7"})
        );
        assert_eq!(
            smtp["response"],
            serde_json::json!({"code": 250, "enhanced_code": null, "content": "", "command": null})
        );
        assert_eq!(smtp["delivery_protocol"], serde_json::Value::Null);
        assert_eq!(smtp["egress_pool"], serde_json::Value::Null);
        let http = reception(serde_json::json!({"received_from": "2001:db8::1"}));
        assert_eq!(
            http["peer_address"],
            serde_json::json!({"name": "", "addr": "2001:db8::1"})
        );
        assert_eq!(
            reception(serde_json::json!({}))["peer_address"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn rfc3339_as_chrono_writes_it() {
        let s = |secs, nanos| rfc3339(Duration::new(secs, nanos));
        assert_eq!(s(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(s(1_700_000_000, 120_000_000), "2023-11-14T22:13:20.120Z");
        assert_eq!(s(1_700_000_000, 123_456_000), "2023-11-14T22:13:20.123456Z");
        assert_eq!(
            s(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }

    #[test]
    fn the_node_id_is_kept_in_the_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_node_id(dir.path()).unwrap();
        let stored = std::fs::read_to_string(dir.path().join("nodeid")).unwrap();
        assert_eq!(uuid::Uuid::parse_str(&stored).unwrap(), id);
        assert_eq!(
            load_node_id(dir.path()).unwrap(),
            id,
            "kept across restarts"
        );
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_node_id(other.path()).unwrap(), id);
    }
}
