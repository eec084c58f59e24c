//! Log records in KumoMTA's JSON shape, for local logs and log hooks.

use crate::model::message::Message;
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

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

#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub code: u16,
    /// The ENHANCEDSTATUSCODE (`2.0.0`) taken out of the text.
    pub enhanced_code: Option<EnhancedCode>,
    pub content: String,
    /// The SMTP verb the response answered; none for AMQP deliveries.
    pub command: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    fn parse(word: &str) -> Option<EnhancedCode> {
        let mut parts = word.split('.');
        let class = parts
            .next()?
            .parse()
            .ok()
            .filter(|c| matches!(c, 2 | 4 | 5))?;
        let subject = parts.next()?.parse().ok()?;
        let detail = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(EnhancedCode {
            class,
            subject,
            detail,
        })
    }
}

impl Response {
    /// Splits `"250 2.0.0 text"` into its code, enhanced code and the rest.
    pub fn parse(text: &str) -> Response {
        let code = text.get(..3).and_then(|c| c.parse().ok());
        let Some(code) = code else {
            return Response {
                code: 0,
                enhanced_code: None,
                content: text.to_owned(),
                command: None,
            };
        };
        let rest = text[3..].trim_start();
        let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
        let (enhanced_code, content) = match EnhancedCode::parse(first) {
            Some(e) => (Some(e), after.trim_start()),
            None => (None, rest),
        };
        Response {
            code,
            enhanced_code,
            content: content.to_owned(),
            command: None,
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
    pub delivery_protocol: Option<&'static str>,
}

/// A record field for field as KumoMTA's `JsonLogRecord` writes it
/// (times in seconds since the epoch); what a relay to AMQP never has
/// (peer, TLS, egress source, feedback report) is null, as in KumoMTA for a
/// record without it.
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
    pub peer_address: Option<()>,
    pub timestamp: u64,
    pub created: u64,
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
        let mut meta = Map::new();
        for k in &sel.meta {
            if let Some(v) = env.meta.get(k) {
                meta.insert(k.clone(), v.clone());
            }
        }
        let mut headers = Map::new();
        for h in &sel.headers {
            if let Some(v) = self.msg.first_header(h) {
                headers.insert(h.clone(), Value::String(v));
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let site = match self.kind {
            RecordType::Reception => String::new(),
            _ => self.queue.to_owned(),
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
            peer_address: None,
            timestamp: now,
            created: env.created_ms / 1000,
            num_attempts: env.num_attempts,
            bounce_classification: "Uncategorized",
            egress_pool: None,
            egress_source: None,
            source_address: None,
            feedback_report: None,
            meta,
            headers,
            delivery_protocol: self.delivery_protocol,
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
            delivery_protocol: Some("Lua"),
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
        // Every field of KumoMTA's JsonLogRecord, and no other.
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bounce_classification",
                "created",
                "delivery_protocol",
                "egress_pool",
                "egress_source",
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

    #[test]
    fn responses() {
        let r = Response::parse("451 4.0.0 later");
        assert_eq!((r.code, r.content.as_str()), (451, "later"));
        assert_eq!(
            r.enhanced_code,
            Some(EnhancedCode {
                class: 4,
                subject: 0,
                detail: 0
            })
        );
        let plain = Response::parse("250 Ack");
        assert_eq!((plain.enhanced_code, plain.content.as_str()), (None, "Ack"));
        assert_eq!(Response::parse("oops").code, 0);
        assert_eq!(Response::parse("550 9.9.9 x").enhanced_code, None);
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
