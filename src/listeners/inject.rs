//! The injection request (KumoMTA's `/api/inject/v1` shape), parsed and
//! checked apart from the HTTP handler that serves it.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    envelope_sender: String,
    recipients: Vec<Recipient>,
    content: Value,
    #[serde(default)]
    substitutions: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipient {
    email: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted as in KumoMTA; only templates would use it
    name: Option<String>,
    #[serde(default)]
    substitutions: Option<Map<String, Value>>,
}

/// A valid request: one message per recipient, all with `content`.
#[derive(Debug)]
pub struct Injection {
    pub sender: String,
    pub recipients: Vec<String>,
    pub content: Bytes,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a request body; the error says what is wrong and where.
pub fn parse(body: &[u8]) -> Result<Injection, String> {
    let req: Request =
        serde_json::from_slice(body).map_err(|e| format!("invalid inject request: {e}"))?;
    let content = match req.content {
        Value::String(s) => Bytes::from(s),
        Value::Object(_) => {
            return Err(
                "content: the builder form is not supported; send the full message as a string"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "content must be a string holding the full message, not {}",
                json_type(&other)
            ));
        }
    };
    let templated = req.substitutions.as_ref().is_some_and(|s| !s.is_empty())
        || req
            .recipients
            .iter()
            .any(|r| r.substitutions.as_ref().is_some_and(|s| !s.is_empty()));
    if templated {
        return Err("substitutions: templating is not supported by amqp-relay".into());
    }
    if req.recipients.is_empty() {
        return Err("recipients: at least one recipient is required".into());
    }
    Ok(Injection {
        sender: req.envelope_sender,
        recipients: req.recipients.into_iter().map(|r| r.email).collect(),
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_requests() {
        let ok = parse(br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@amqp","name":"R"}]}"#).unwrap();
        assert_eq!(ok.recipients, vec!["r@amqp".to_string()]);
        for (body, want) in [
            (&b"{"[..], "EOF"),
            (br#"{"envelope_sender":"a@b","content":"x"}"#, "missing field `recipients`"),
            (br#"{"envelope_sender":"a@b","content":1,"recipients":[{"email":"r@x"}]}"#, "not a number"),
            (br#"{"envelope_sender":"a@b","content":{},"recipients":[{"email":"r@x"}]}"#, "builder form"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[]}"#, "at least one"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"substitutions":{"a":1}}"#, "templating"),
        ] {
            let err = parse(body).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
