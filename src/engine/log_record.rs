//! Log records in KumoMTA's JSON shape, for local logs and log hooks.

use crate::model::message::Message;
use serde::Serialize;
use serde_json::{Map, Value};
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

#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub code: u16,
    pub content: String,
}

impl Response {
    /// Splits `"250 2.0.0 text"` into its code and the rest.
    pub fn parse(text: &str) -> Response {
        let code = text.get(..3).and_then(|c| c.parse().ok());
        match code {
            Some(code) => Response {
                code,
                content: text[3..].trim_start().to_owned(),
            },
            None => Response {
                code: 0,
                content: text.to_owned(),
            },
        }
    }
}

/// Which headers and meta keys a consumer wants copied into each record.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub headers: Vec<String>,
    pub meta: Vec<String>,
}

/// Everything that describes one event, before per-consumer selection.
pub struct Event<'a> {
    pub kind: RecordType,
    pub msg: &'a Message,
    pub queue: &'a str,
    pub response: Response,
    pub delivery_protocol: Option<&'static str>,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Event<'_> {
    pub fn record(&self, sel: &Selection) -> Value {
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
        serde_json::json!({
            "type": self.kind,
            "id": self.msg.id().simple().to_string(),
            "sender": env.sender,
            "recipient": env.recipient,
            "queue": self.queue,
            "site": self.queue,
            "size": self.msg.size(),
            "response": self.response,
            "timestamp": now,
            "created": rfc3339(env.created_ms),
            "num_attempts": env.num_attempts,
            "bounce_classification": "Uncategorized",
            "meta": meta,
            "headers": headers,
            "delivery_protocol": self.delivery_protocol,
            "reception_protocol": reception,
        })
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
            meta,
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
        });
        assert_eq!(r["type"], "Delivery");
        assert_eq!(r["response"]["code"], 250);
        assert_eq!(r["response"]["content"], "2.0.0 ok");
        assert_eq!(r["headers"]["Subject"], "hi");
        assert!(r["headers"].get("Missing").is_none());
        assert_eq!(r["meta"]["tenant"], "t");
        assert!(r["meta"].get("secret").is_none(), "only the selected meta");
        assert_eq!(r["reception_protocol"], "HTTP");
        assert!(r["created"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r["size"], m.size());
    }

    #[test]
    fn responses() {
        let r = Response::parse("451 4.0.0 later");
        assert_eq!((r.code, r.content.as_str()), (451, "4.0.0 later"));
        assert_eq!(Response::parse("oops").code, 0);
    }
}
