//! A spooled message: envelope, metadata, body, and the retry bookkeeping that
//! survives restarts.
//!
//! Once a message is durable its body need not stay in memory: the engine
//! keeps it only while a byte budget allows ([`BodyBudget`]) and reads it back
//! from the spool to deliver it.

use crate::model::queue_name::QueueName;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub type MessageId = uuid::Uuid;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message's metadata. Shared, copy-on-write: the recipients of one
/// injection start with the same map, and the spool reads it back once for
/// all of them.
pub type Meta = Arc<Map<String, Value>>;

/// Everything but the body; this is what the spool's meta table stores as
/// JSON (read back by `spool::tables::decode_envelope`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Envelope {
    pub sender: String,
    pub recipient: String,
    pub meta: Meta,
    /// Reception time, unix milliseconds.
    pub created_ms: u64,
    pub num_attempts: u32,
    /// When the next attempt is due, unix milliseconds; absent means now.
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
    body: Option<Body>,
    /// Of the body, known even when the body is not in memory.
    size: usize,
    /// The policy changed the body (`set_data`) since it was spooled.
    body_dirty: bool,
}

/// A body in memory, with the budget it was charged to (if any).
#[derive(Debug)]
struct Body {
    bytes: Bytes,
    charge: Option<Charge>,
}

/// Bytes of bodies the engine keeps in memory for messages waiting to be
/// delivered; past the limit, bodies are read back from the spool instead.
#[derive(Debug)]
pub struct BodyBudget {
    used: AtomicUsize,
    limit: usize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(self: &Arc<Self>, n: usize) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + n > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Charge {
                        budget: self.clone(),
                        n,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Given back to the budget when the body leaves memory.
#[derive(Debug)]
struct Charge {
    budget: Arc<BodyBudget>,
    n: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

pub type MessageRef = Arc<Message>;

impl Message {
    pub fn new(sender: String, recipient: String, meta: Meta, data: Bytes) -> Self {
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
            state: Mutex::new(State {
                envelope,
                size: data.len(),
                body: Some(Body {
                    bytes: data,
                    charge: None,
                }),
                body_dirty: false,
            }),
        }
    }

    /// A message read back from the spool without its body.
    pub fn without_body(id: MessageId, envelope: Envelope, size: usize) -> Self {
        Self {
            id,
            state: Mutex::new(State {
                envelope,
                size,
                body: None,
                body_dirty: false,
            }),
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

    /// The body, when it is in memory.
    pub fn data(&self) -> Option<Bytes> {
        self.lock().body.as_ref().map(|b| b.bytes.clone())
    }

    pub fn has_body(&self) -> bool {
        self.lock().body.is_some()
    }

    /// The policy's new body: kept in memory until the message leaves, and
    /// written to the spool if the message is retried.
    pub fn set_data(&self, data: Bytes) {
        let mut st = self.lock();
        st.size = data.len();
        st.body = Some(Body {
            bytes: data,
            charge: None,
        });
        st.body_dirty = true;
    }

    /// The body changed since it was spooled: returns it, and forgets that.
    pub fn take_dirty_body(&self) -> Option<Bytes> {
        let mut st = self.lock();
        if !std::mem::take(&mut st.body_dirty) {
            return None;
        }
        st.body.as_ref().map(|b| b.bytes.clone())
    }

    /// Puts a body read back from the spool in place (not charged to a budget:
    /// it is wanted for a delivery attempt now).
    pub fn attach_body(&self, data: Bytes) {
        let mut st = self.lock();
        if st.body.is_none() {
            st.body = Some(Body {
                bytes: data,
                charge: None,
            });
        }
    }

    /// Keeps the body in memory if `budget` has room for it; drops it
    /// otherwise (unless the policy changed it and it is not spooled yet).
    /// Returns whether it is kept.
    pub fn keep_body_within(&self, budget: &Arc<BodyBudget>) -> bool {
        let mut st = self.lock();
        let size = st.size;
        let dirty = st.body_dirty;
        match &mut st.body {
            None => false,
            Some(b) if b.charge.is_some() => true,
            Some(b) => match budget.take(size) {
                Some(c) => {
                    b.charge = Some(c);
                    true
                }
                None if dirty => true,
                None => {
                    st.body = None;
                    false
                }
            },
        }
    }

    /// Drops a body that was attached for one attempt and is not charged.
    pub fn drop_uncharged_body(&self) {
        let mut st = self.lock();
        if !st.body_dirty && st.body.as_ref().is_some_and(|b| b.charge.is_none()) {
            st.body = None;
        }
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
        let meta = Arc::make_mut(&mut st.envelope.meta);
        if value.is_null() {
            meta.remove(key);
        } else {
            meta.insert(key.to_owned(), value);
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

    /// When the message is next due: its retry time, or its reception.
    pub fn due_or_created(&self) -> u64 {
        let st = self.lock();
        st.envelope.due_ms.unwrap_or(st.envelope.created_ms)
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
        self.lock().size
    }

    /// `None` also when the body is not in memory.
    pub fn first_header(&self, name: &str) -> Option<String> {
        let data = self.data()?;
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
            meta.into(),
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
