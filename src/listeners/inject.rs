//! The injection request (KumoMTA's `/api/inject/v1` shape), parsed,
//! checked and expanded apart from the HTTP handler that serves it.
//!
//! As in KumoMTA, `content` is a MiniJinja template unless
//! `template_dialect` is `Static`: for each recipient it is rendered with the
//! request's `substitutions`, then the recipient's own, then its `email` and
//! `name`. A template that does not compile or render is a 422.

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
    substitutions: Map<String, Value>,
    #[serde(default)]
    template_dialect: Option<String>,
    #[serde(default)]
    deferred_spool: bool,
    #[serde(default)]
    deferred_generation: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipient {
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    substitutions: Map<String, Value>,
    /// Stored on the message as the meta value `extra`, as KumoMTA does.
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// A valid request: one message per recipient.
#[derive(Debug)]
pub struct Injection {
    pub sender: String,
    pub recipients: Vec<Rcpt>,
}

#[derive(Debug)]
pub struct Rcpt {
    pub email: String,
    /// The message for this recipient (shared when nothing was templated).
    pub content: Bytes,
    /// The recipient's `metadata`, for the meta key `extra`.
    pub extra: Option<Map<String, Value>>,
}

/// Why a request was refused: KumoMTA answers 400 for a malformed request
/// and 422 for a template that does not compile or render.
#[derive(Debug, PartialEq, Eq)]
pub enum InjectError {
    Invalid(String),
    Template(String),
}

impl InjectError {
    pub fn message(&self) -> &str {
        match self {
            InjectError::Invalid(m) | InjectError::Template(m) => m,
        }
    }
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

/// MiniJinja instructions one recipient's rendering may take: a normal
/// message needs a few thousand, a 100,000-item loop about a million.
const TEMPLATE_FUEL: u64 = 10_000_000;

/// Largest rendered message (KumoMTA's and this relay's SMTP default size limit).
const MAX_RENDERED: usize = 20 * 1024 * 1024;

enum Dialect {
    Jinja,
    Static,
}

fn check(req: &Request) -> Result<Dialect, InjectError> {
    let invalid = |m: String| Err(InjectError::Invalid(m));
    if req.recipients.is_empty() {
        return invalid("recipients: at least one recipient is required".into());
    }
    if req.deferred_spool {
        return invalid(
            "deferred_spool: true is not provided; every message is spooled before the reply"
                .into(),
        );
    }
    if req.deferred_generation {
        return invalid(
            "deferred_generation: true is not provided; messages are generated before the reply"
                .into(),
        );
    }
    match req.template_dialect.as_deref() {
        None | Some("Jinja") => Ok(Dialect::Jinja),
        Some("Static") => Ok(Dialect::Static),
        Some(other) => invalid(format!(
            "template_dialect: {other:?} is not provided (use \"Jinja\", the default, or \"Static\")"
        )),
    }
}

/// Parses a request body; the error says what is wrong and where.
pub fn parse(body: &[u8]) -> Result<Injection, InjectError> {
    let req: Request = serde_json::from_slice(body)
        .map_err(|e| InjectError::Invalid(format!("invalid inject request: {e}")))?;
    let dialect = check(&req)?;
    let content = match &req.content {
        Value::String(s) => s.as_str(),
        Value::Object(_) => {
            return Err(InjectError::Invalid(
                "content: the builder form is not provided; send the full message as a string"
                    .into(),
            ));
        }
        other => {
            return Err(InjectError::Invalid(format!(
                "content must be a string holding the full message, not {}",
                json_type(other)
            )));
        }
    };
    let templated =
        matches!(dialect, Dialect::Jinja) && ["{{", "{%", "{#"].iter().any(|t| content.contains(t));
    let recipients = if templated {
        render_each(content, &req)?
    } else {
        let shared = Bytes::copy_from_slice(content.as_bytes());
        req.recipients
            .iter()
            .map(|r| rcpt(r, shared.clone()))
            .collect()
    };
    Ok(Injection {
        sender: req.envelope_sender,
        recipients,
    })
}

fn rcpt(r: &Recipient, content: Bytes) -> Rcpt {
    Rcpt {
        email: r.email.clone(),
        content,
        extra: (!r.metadata.is_empty()).then(|| r.metadata.clone()),
    }
}

fn render_each(content: &str, req: &Request) -> Result<Vec<Rcpt>, InjectError> {
    let mut env = minijinja::Environment::new();
    // The message ends as the client wrote it (Jinja would drop a final newline).
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    // A request cannot make the relay loop or build without end.
    env.set_fuel(Some(TEMPLATE_FUEL));
    let template = env
        .template_from_str(content)
        .map_err(|e| InjectError::Template(format!("content: {e:#}")))?;
    req.recipients
        .iter()
        .map(|r| {
            let mut vars = req.substitutions.clone();
            vars.extend(r.substitutions.clone());
            vars.insert("email".into(), Value::String(r.email.clone()));
            if let Some(name) = &r.name {
                vars.insert("name".into(), Value::String(name.clone()));
            }
            let text = template
                .render(minijinja::Value::from(minijinja::value::Serde(vars)))
                .map_err(|e| InjectError::Template(format!("content for {}: {e:#}", r.email)))?;
            if text.len() > MAX_RENDERED {
                return Err(InjectError::Template(format!(
                    "content for {}: the rendered message is {} bytes; at most {MAX_RENDERED}",
                    r.email,
                    text.len()
                )));
            }
            Ok(rcpt(r, Bytes::from(text)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Rcpt) -> &str {
        std::str::from_utf8(&r.content).unwrap()
    }

    #[test]
    fn valid_and_invalid_requests() {
        let ok = parse(br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@amqp","name":"R"}]}"#).unwrap();
        assert_eq!(ok.recipients[0].email, "r@amqp");
        for (body, want) in [
            (&b"{"[..], "EOF"),
            (br#"{"envelope_sender":"a@b","content":"x"}"#, "missing field `recipients`"),
            (br#"{"envelope_sender":"a@b","content":1,"recipients":[{"email":"r@x"}]}"#, "not a number"),
            (br#"{"envelope_sender":"a@b","content":{},"recipients":[{"email":"r@x"}]}"#, "builder form"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[]}"#, "at least one"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"deferred_spool":true}"#, "deferred_spool"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"template_dialect":"Handlebars"}"#, "\"Handlebars\" is not provided"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"trace_headers":{}}"#, "unknown field `trace_headers`"),
        ] {
            match parse(body).unwrap_err() {
                InjectError::Invalid(e) => assert!(e.contains(want), "{e}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn content_is_rendered_per_recipient_as_kumomta_does() {
        let req = br#"{
            "envelope_sender": "noreply@example.com",
            "content": "Subject: hello {{ name }}\r\n\r\nDear {{ name }} <{{ email }}>, {{ greeting }} from {{ team }}.{% if vip %} VIP{% endif %}",
            "substitutions": {"greeting": "hi", "team": "ops"},
            "recipients": [
                {"email": "a@amqp", "name": "Ann", "substitutions": {"greeting": "hello", "vip": true}, "metadata": {"cid": 7}},
                {"email": "b@amqp"}
            ]
        }"#;
        let inj = parse(req).unwrap();
        assert_eq!(
            text(&inj.recipients[0]),
            "Subject: hello Ann\r\n\r\nDear Ann <a@amqp>, hello from ops. VIP"
        );
        assert_eq!(
            text(&inj.recipients[1]),
            "Subject: hello \r\n\r\nDear  <b@amqp>, hi from ops."
        );
        assert_eq!(
            inj.recipients[0].extra,
            Some(serde_json::json!({"cid": 7}).as_object().unwrap().clone())
        );
        assert_eq!(inj.recipients[1].extra, None);
    }

    #[test]
    fn static_dialect_and_plain_content_are_taken_as_they_are() {
        let s = parse(br#"{"envelope_sender":"a@b","content":"{{ x }}","template_dialect":"Static","recipients":[{"email":"r@x"},{"email":"s@x"}]}"#).unwrap();
        assert_eq!(text(&s.recipients[0]), "{{ x }}");
        // Nothing to expand: one shared body for every recipient.
        let plain = parse(br#"{"envelope_sender":"a@b","content":"no tags","recipients":[{"email":"r@x"},{"email":"s@x"}]}"#).unwrap();
        assert_eq!(
            plain.recipients[0].content.as_ptr(),
            plain.recipients[1].content.as_ptr()
        );
    }

    #[test]
    fn a_template_cannot_loop_or_grow_without_end() {
        for (content, want) in [
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                "fuel",
            ),
            (
                "{{ 'x' * 50000000 }}",
                "the rendered message is 50000000 bytes",
            ),
        ] {
            let body = serde_json::json!({
                "envelope_sender": "a@b",
                "content": content,
                "recipients": [{"email": "r@x"}],
            });
            match parse(body.to_string().as_bytes()).unwrap_err() {
                InjectError::Template(m) => assert!(m.contains(want), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_template_is_a_422_naming_the_problem() {
        let err = parse(br#"{"envelope_sender":"a@b","content":"Subject: {{ oops }\r\n\r\nx","recipients":[{"email":"r@x"}]}"#).unwrap_err();
        match err {
            InjectError::Template(m) => assert!(
                m.starts_with("content: syntax error") && m.contains(":1)"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
