//! A spooled message: envelope, metadata, body, and the retry bookkeeping that
//! survives restarts.

use crate::model::queue_name::QueueName;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub type MessageId = uuid::Uuid;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything but the body; this is what the spool's meta table stores as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub sender: String,
    pub recipient: String,
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// Reception time, unix milliseconds.
    pub created_ms: u64,
    #[serde(default)]
    pub num_attempts: u32,
    /// When the next attempt is due, unix milliseconds; absent means now.
    #[serde(default)]
    pub due_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Message {
    id: MessageId,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    envelope: Envelope,
    data: Bytes,
}

pub type MessageRef = Arc<Message>;

impl Message {
    pub fn new(sender: String, recipient: String, meta: Map<String, Value>, data: Bytes) -> Self {
        Self::from_parts(
            uuid::Uuid::now_v7(),
            Envelope {
                sender,
                recipient,
                meta,
                created_ms: now_ms(),
                num_attempts: 0,
                due_ms: None,
            },
            data,
        )
    }

    pub fn from_parts(id: MessageId, envelope: Envelope, data: Bytes) -> Self {
        Self {
            id,
            state: Mutex::new(State { envelope, data }),
        }
    }

    pub fn id(&self) -> MessageId {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written
        // (every mutation is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn envelope(&self) -> Envelope {
        self.lock().envelope.clone()
    }

    pub fn data(&self) -> Bytes {
        self.lock().data.clone()
    }

    pub fn set_data(&self, data: Bytes) {
        self.lock().data = data;
    }

    pub fn sender(&self) -> String {
        self.lock().envelope.sender.clone()
    }

    pub fn recipient(&self) -> String {
        self.lock().envelope.recipient.clone()
    }

    pub fn created_ms(&self) -> u64 {
        self.lock().envelope.created_ms
    }

    pub fn num_attempts(&self) -> u32 {
        self.lock().envelope.num_attempts
    }

    pub fn get_meta(&self, key: &str) -> Option<Value> {
        self.lock().envelope.meta.get(key).cloned()
    }

    pub fn set_meta(&self, key: &str, value: Value) {
        let mut st = self.lock();
        if value.is_null() {
            st.envelope.meta.remove(key);
        } else {
            st.envelope.meta.insert(key.to_owned(), value);
        }
    }

    pub fn due_ms(&self) -> Option<u64> {
        self.lock().envelope.due_ms
    }

    /// Counts a failed attempt and schedules the next one.
    pub fn record_attempt(&self, next_due_ms: u64) {
        let mut st = self.lock();
        st.envelope.num_attempts += 1;
        st.envelope.due_ms = Some(next_due_ms);
    }

    pub fn set_due(&self, due_ms: Option<u64>) {
        self.lock().envelope.due_ms = due_ms;
    }

    /// The queue this message belongs in: meta `queue` names it outright;
    /// otherwise `campaign`, `tenant`, `routing_domain` and the recipient's domain.
    pub fn queue_name(&self) -> Result<QueueName, String> {
        let st = self.lock();
        let meta = &st.envelope.meta;
        let text = |k: &str| meta.get(k).and_then(Value::as_str);
        if let Some(q) = text("queue") {
            return QueueName::parse(q);
        }
        let domain = recipient_domain(&st.envelope.recipient)?;
        Ok(QueueName::new(
            domain,
            text("tenant"),
            text("campaign"),
            text("routing_domain"),
        ))
    }

    pub fn size(&self) -> usize {
        self.lock().data.len()
    }

    pub fn first_header(&self, name: &str) -> Option<String> {
        let data = self.data();
        let (headers, _) = mailparse::parse_headers(&data).ok()?;
        use mailparse::MailHeaderMap;
        headers.get_first_value(name)
    }
}

pub fn recipient_domain(recipient: &str) -> Result<&str, String> {
    match recipient.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(domain),
        _ => Err(format!(
            "recipient {recipient:?} is not an address of the form local@domain"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(meta: Value) -> Message {
        let Value::Object(meta) = meta else { panic!() };
        Message::new(
            "s@example.com".into(),
            "User@Amqp".into(),
            meta,
            Bytes::from_static(b"Subject: hi\r\nX-Thing: a\r\n b\r\n\r\nbody"),
        )
    }

    #[test]
    fn queue_from_recipient_and_meta() {
        assert_eq!(
            msg(serde_json::json!({})).queue_name().unwrap().to_string(),
            "amqp"
        );
        let m = msg(serde_json::json!({"tenant": "t", "campaign": "c"}));
        assert_eq!(m.queue_name().unwrap().to_string(), "c:t@amqp");
        m.set_meta("queue", Value::String("other".into()));
        assert_eq!(m.queue_name().unwrap().to_string(), "other");
    }

    #[test]
    fn bad_recipient_is_an_error() {
        assert!(recipient_domain("nobody").is_err());
        assert!(recipient_domain("@d").is_err());
        assert!(recipient_domain("a@").is_err());
    }

    #[test]
    fn headers_unfold() {
        let m = msg(serde_json::json!({}));
        assert_eq!(m.first_header("subject").as_deref(), Some("hi"));
        assert_eq!(m.first_header("x-thing").as_deref(), Some("a b"));
        assert_eq!(m.first_header("missing"), None);
    }
}
