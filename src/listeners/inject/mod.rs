//! The injection request (KumoMTA's `/api/inject/v1` shape), parsed,
//! checked and expanded apart from the HTTP handler that serves it.
//!
//! As in KumoMTA, `content` is a MiniJinja template unless
//! `template_dialect` is `Static`: for each recipient it is rendered with the
//! request's `substitutions`, then the recipient's own, then its `email` and
//! `name`. A template that does not compile or render is a 422.

mod builder;
mod crlf;
mod template;

use crate::model::trace::TraceHeaders;
use builder::Builder;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
pub use template::has_markup;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    envelope_sender: String,
    recipients: Vec<Recipient>,
    /// A string (the message) or an object (KumoMTA's builder form).
    content: Value,
    #[serde(default)]
    substitutions: Map<String, Value>,
    #[serde(default)]
    template_dialect: Option<String>,
    #[serde(default)]
    deferred_spool: bool,
    #[serde(default)]
    deferred_generation: bool,
    #[serde(default)]
    trace_headers: Option<TraceHeaders>,
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
    /// `trace_headers.received_header`: add a `Received:` header.
    pub received_header: bool,
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
    /// The request would build more than one request may (413).
    TooLarge(String),
    /// The listener's memory for requests is in use now (503: try again).
    Busy(String),
}

impl InjectError {
    pub fn message(&self) -> &str {
        match self {
            InjectError::Invalid(m)
            | InjectError::Template(m)
            | InjectError::TooLarge(m)
            | InjectError::Busy(m) => m,
        }
    }
}

/// What one request may build, checked before and while it builds, so no
/// request (however its templates, attachments and recipients combine) takes
/// more memory or time than these allow.
pub struct Limits {
    /// Recipients one request may name; checked before anything is built.
    pub max_recipients: usize,
    /// Bytes of messages one request may build (a body its recipients share
    /// counts once).
    pub max_bytes: usize,
    /// Building stops past this (templates are rendered per recipient).
    pub deadline: Option<std::time::Instant>,
    /// The listener's memory the request and what it builds are held in.
    pub memory: Option<crate::listeners::memory::Reservation>,
    built: usize,
}

impl Limits {
    pub fn new(max_recipients: usize, max_bytes: usize) -> Limits {
        Limits {
            max_recipients,
            max_bytes,
            deadline: None,
            memory: None,
            built: 0,
        }
    }

    /// Counts `n` more bytes built for `recipients` recipients so far.
    fn charge(&mut self, n: usize) -> Result<(), InjectError> {
        self.built = self.built.saturating_add(n);
        if self.built > self.max_bytes {
            return Err(InjectError::TooLarge(format!(
                "the request builds more than {} bytes of messages; send fewer recipients (or a smaller message) per request",
                self.max_bytes
            )));
        }
        if let Some(m) = &mut self.memory
            && !m.grow(n)
        {
            return Err(InjectError::Busy(
                "the relay's memory for requests is in use; try again shortly".into(),
            ));
        }
        Ok(())
    }

    /// Refuses up front what `each` bytes per recipient would make too much.
    fn expect(&self, each: usize, recipients: usize) -> Result<(), InjectError> {
        let total = each.saturating_mul(recipients);
        if total > self.max_bytes {
            return Err(InjectError::TooLarge(format!(
                "the request would build {total} bytes of messages ({recipients} recipients of about {each} bytes); at most {} per request: send fewer recipients per request",
                self.max_bytes
            )));
        }
        Ok(())
    }

    fn in_time(&self) -> Result<(), InjectError> {
        match self.deadline {
            Some(d) if std::time::Instant::now() > d => Err(InjectError::Template(
                "rendering the request's messages took longer than the request may".into(),
            )),
            _ => Ok(()),
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

enum Dialect {
    Jinja,
    Static,
}

fn check(req: &Request) -> Result<(Dialect, bool), InjectError> {
    let invalid = |m: String| Err(InjectError::Invalid(m));
    if req.recipients.is_empty() {
        return invalid("recipients: at least one recipient is required".into());
    }
    // As over SMTP: the null sender, or an address.
    if !req.envelope_sender.is_empty()
        && let Err(why) = crate::model::address::check(&req.envelope_sender)
    {
        return invalid(format!("envelope_sender {:?}: {why}", req.envelope_sender));
    }
    for (i, r) in req.recipients.iter().enumerate() {
        if let Err(why) = crate::model::address::check(&r.email) {
            return invalid(format!("recipients[{i}].email {:?}: {why}", r.email));
        }
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
    let received = match &req.trace_headers {
        Some(t) => t.received(false).map_err(InjectError::Invalid)?,
        None => false,
    };
    let dialect = match req.template_dialect.as_deref() {
        None | Some("Jinja") => Dialect::Jinja,
        Some("Static") => Dialect::Static,
        Some(other) => {
            return invalid(format!(
                "template_dialect: {other:?} is not provided (use \"Jinja\", the default, or \"Static\")"
            ));
        }
    };
    Ok((dialect, received))
}

/// Parses a request body with no bound but the templates' own (tests, fuzzing).
pub fn parse(body: &[u8]) -> Result<Injection, InjectError> {
    parse_within(body, &mut Limits::new(usize::MAX, usize::MAX))
}

/// Parses a request body and builds its messages within `limits`; the error
/// says what is wrong and where.
pub fn parse_within(body: &[u8], limits: &mut Limits) -> Result<Injection, InjectError> {
    let mut req: Request = serde_json::from_slice(body)
        .map_err(|e| InjectError::Invalid(format!("invalid inject request: {e}")))?;
    let (dialect, received_header) = check(&req)?;
    if req.recipients.len() > limits.max_recipients {
        return Err(InjectError::Invalid(format!(
            "recipients: {} in one request; this listener takes at most {} (max_recipients_per_request)",
            req.recipients.len(),
            limits.max_recipients
        )));
    }
    let content = std::mem::take(&mut req.content);
    let recipients = match content {
        Value::String(s) => full_message(s, dialect, &req, limits)?,
        Value::Object(o) => {
            let builder = Builder::from_value(Value::Object(o))?;
            build_each(&builder, dialect, &req, limits)?
        }
        other => {
            return Err(InjectError::Invalid(format!(
                "content must be the full message as a string or a builder object, not {}",
                json_type(&other)
            )));
        }
    };
    Ok(Injection {
        sender: req.envelope_sender,
        recipients,
        received_header,
    })
}

/// `content` as a string: the message, a template unless Static.
fn full_message(
    content: String,
    dialect: Dialect,
    req: &Request,
    limits: &mut Limits,
) -> Result<Vec<Rcpt>, InjectError> {
    let templated = matches!(dialect, Dialect::Jinja) && template::has_markup(content.as_bytes());
    if !templated {
        // Nothing to expand: one shared body for every recipient.
        limits.charge(content.len())?;
        let shared = crlf::normalize(Bytes::from(content.into_bytes()));
        return Ok(req
            .recipients
            .iter()
            .map(|r| rcpt(r, shared.clone()))
            .collect());
    }
    let env = template::environment();
    let t = template::compile(Some(&env), "content", &content, "content")?;
    let mut out = Vec::with_capacity(req.recipients.len());
    for r in &req.recipients {
        limits.in_time()?;
        let vars = variables(req, r);
        let mut budget = template::MAX_RENDERED;
        let text = template::render(&t, &vars, "content", &r.email, &mut budget)?;
        if out.is_empty() {
            limits.expect(text.len(), req.recipients.len())?;
        }
        limits.charge(text.len())?;
        out.push(rcpt(r, crlf::normalize(Bytes::from(text))));
    }
    Ok(out)
}

/// `content` as a builder object: a MIME message per recipient.
/// A recipient's message differs by its `To:` at least, so each is built;
/// the first one's size tells up front whether all of them fit.
fn build_each(
    builder: &Builder,
    dialect: Dialect,
    req: &Request,
    limits: &mut Limits,
) -> Result<Vec<Rcpt>, InjectError> {
    let env = template::environment();
    let jinja = matches!(dialect, Dialect::Jinja).then_some(&env);
    let compiled = builder::compile(jinja, builder, &req.envelope_sender)?;
    let mut out = Vec::with_capacity(req.recipients.len());
    for r in &req.recipients {
        limits.in_time()?;
        let msg = compiled.build(&variables(req, r), &r.email, r.name.as_deref())?;
        if out.is_empty() {
            limits.expect(msg.len(), req.recipients.len())?;
        }
        limits.charge(msg.len())?;
        out.push(rcpt(r, Bytes::from(msg)));
    }
    Ok(out)
}

fn variables(req: &Request, r: &Recipient) -> minijinja::Value {
    template::variables(
        &req.substitutions,
        &r.substitutions,
        &r.email,
        r.name.as_deref(),
    )
}

fn rcpt(r: &Recipient, content: Bytes) -> Rcpt {
    Rcpt {
        email: r.email.clone(),
        content,
        extra: (!r.metadata.is_empty()).then(|| r.metadata.clone()),
    }
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
            (br#"{"envelope_sender":"a@b","content":{},"recipients":[{"email":"r@x"}]}"#, "at least one of text_body and html_body"),
            (br#"{"envelope_sender":"a@b","content":{"text_body":"x","attachments":[{"data":"%%","base64":true,"content_type":"image/gif"}]},"recipients":[{"email":"r@x"}]}"#, "content.attachments[0].data: not base64"),
            (br#"{"envelope_sender":"a@b","content":{"text_body":"x","attachments":[{"data":"x"}]},"recipients":[{"email":"r@x"}]}"#, "content.attachments[0]: missing field `content_type`"),
            (br#"{"envelope_sender":"a@b","content":{"text_body":"x","from":{"email":"nobody"}},"recipients":[{"email":"r@x"}]}"#, "content.from: \"nobody\" is not an address"),
            (br#"{"envelope_sender":"a@b","content":{"text_body":"x","headers":{"Bad Name":"v"}},"recipients":[{"email":"r@x"}]}"#, "content.headers: \"Bad Name\" is not a valid header name"),
            (br#"{"envelope_sender":"a@b","content":{"text_body":"x","body":"y"},"recipients":[{"email":"r@x"}]}"#, "content.body: unknown field `body`"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[]}"#, "at least one"),
            (br#"{"envelope_sender":"a@b\r\nX-Evil: 1","content":"x","recipients":[{"email":"r@x"}]}"#, "envelope_sender \"a@b\\r\\nX-Evil: 1\": an address must be"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"},{"email":"no-at"}]}"#, "recipients[1].email \"no-at\""),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"deferred_spool":true}"#, "deferred_spool"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"template_dialect":"Handlebars"}"#, "\"Handlebars\" is not provided"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"trace_headers":{}}"#, "X-KumoRef"),
            (br#"{"envelope_sender":"a@b","content":"x","recipients":[{"email":"r@x"}],"trace_headers":{"supplemental_header":false,"received":true}}"#, "unknown field `received`"),
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
    fn bare_line_endings_are_made_crlf_as_kumomta_does() {
        let inj = parse(br#"{"envelope_sender":"a@b","content":"Subject: hello\n\nHello there","recipients":[{"email":"r@x"}]}"#).unwrap();
        assert_eq!(
            text(&inj.recipients[0]),
            "Subject: hello\r\n\r\nHello there"
        );
        let inj = parse(br#"{"envelope_sender":"a@b","content":"Subject: {{ name }}\n\nHi","recipients":[{"email":"r@x","name":"N"}]}"#).unwrap();
        assert_eq!(text(&inj.recipients[0]), "Subject: N\r\n\r\nHi");
    }

    /// The builder example of KumoMTA's inject API page, with templates.
    fn builder_request() -> serde_json::Value {
        serde_json::json!({
            "envelope_sender": "noreply@example.com",
            "content": {
                "text_body": "Hello {{ name }}, this is the plain text part",
                "html_body": "<p>Hello {{ name }}, this is the <b>HTML</b> part</p>",
                "amp_html_body": "<!doctype html><html amp4email>{{ name }}</html>",
                "attachments": [
                    {"data": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7", "base64": true,
                     "content_type": "image/gif", "content_id": "my-image", "file_name": "pixel.gif"},
                    {"data": "a,b\n1,2\n", "content_type": "text/csv", "file_name": "data.csv"}
                ],
                "from": {"email": "someone@example.com", "name": "Someone"},
                "subject": "Offer for {{ name }}",
                "reply_to": {"email": "help@example.com", "name": "Help"},
                "headers": {"X-Something": "Something {{ campaign }}!"}
            },
            "substitutions": {"campaign": "spring"},
            "recipients": [{"email": "recipient@example.com", "name": "Ann <&>"}]
        })
    }

    #[test]
    fn the_builder_form_assembles_mime_per_recipient() {
        let inj = parse(builder_request().to_string().as_bytes()).unwrap();
        let raw = inj.recipients[0].content.to_vec();
        let m = mailparse::parse_mail(&raw).unwrap();
        let h = |n: &str| {
            m.headers
                .iter()
                .find(|h| h.get_key_ref() == n)
                .map(|h| h.get_value())
        };
        assert_eq!(h("Subject").as_deref(), Some("Offer for Ann <&>"));
        assert_eq!(h("X-Something").as_deref(), Some("Something spring!"));
        assert_eq!(
            h("From").as_deref(),
            Some("\"Someone\" <someone@example.com>")
        );
        assert_eq!(
            h("Reply-To").as_deref(),
            Some("\"Help\" <help@example.com>")
        );
        assert_eq!(
            h("To").as_deref(),
            Some("\"Ann <&>\" <recipient@example.com>")
        );
        assert!(h("Message-ID").unwrap().ends_with("@example.com>"));
        assert!(h("Date").is_some() && h("MIME-Version").is_some());
        // mixed [related [alternative [text, amp, html], gif], csv]
        assert_eq!(m.ctype.mimetype, "multipart/mixed");
        let related = &m.subparts[0];
        assert_eq!(related.ctype.mimetype, "multipart/related");
        let alt = &related.subparts[0];
        let types: Vec<_> = alt
            .subparts
            .iter()
            .map(|p| p.ctype.mimetype.as_str())
            .collect();
        assert_eq!(types, ["text/plain", "text/x-amp-html", "text/html"]);
        assert_eq!(
            alt.subparts[0].get_body().unwrap(),
            "Hello Ann <&>, this is the plain text part"
        );
        // HTML parts are escaped, the text part is not.
        assert_eq!(
            alt.subparts[2].get_body().unwrap(),
            "<p>Hello Ann &lt;&amp;&gt;, this is the <b>HTML</b> part</p>"
        );
        let gif = &related.subparts[1];
        assert_eq!(gif.ctype.mimetype, "image/gif");
        assert_eq!(gif.get_body_raw().unwrap()[..6], *b"GIF89a");
        let gh = |n: &str| {
            gif.headers
                .iter()
                .find(|h| h.get_key_ref() == n)
                .map(|h| h.get_value())
        };
        assert_eq!(gh("Content-ID").as_deref(), Some("<my-image>"));
        assert!(gh("Content-Disposition").unwrap().starts_with("inline"));
        let csv = &m.subparts[1];
        assert_eq!(csv.ctype.mimetype, "text/csv");
        assert_eq!(csv.get_body_raw().unwrap(), b"a,b\n1,2\n");
        assert_eq!(csv.get_content_disposition().params["filename"], "data.csv");
    }

    #[test]
    fn a_builder_with_one_body_is_a_single_part_and_static_is_taken_as_is() {
        let body = serde_json::json!({
            "envelope_sender": "a@example.com",
            "content": {"text_body": "{{ x }}", "subject": "{{ y }}"},
            "template_dialect": "Static",
            "recipients": [{"email": "r@x"}]
        });
        let inj = parse(body.to_string().as_bytes()).unwrap();
        let raw = inj.recipients[0].content.to_vec();
        let m = mailparse::parse_mail(&raw).unwrap();
        assert_eq!(m.ctype.mimetype, "text/plain");
        assert_eq!(m.get_body().unwrap(), "{{ x }}");
        assert_eq!(
            m.headers
                .iter()
                .find(|h| h.get_key_ref() == "Subject")
                .unwrap()
                .get_value(),
            "{{ y }}"
        );
    }

    #[test]
    fn a_builder_template_error_names_its_field() {
        let mut req = builder_request();
        req["content"]["headers"]["X-Something"] = "{{ oops".into();
        match parse(req.to_string().as_bytes()).unwrap_err() {
            InjectError::Template(m) => assert!(
                m.starts_with("content.headers.X-Something: syntax error"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        let mut req = builder_request();
        req["content"]["subject"] = "{{ campaign }}\r\nBcc: x@evil".into();
        match parse(req.to_string().as_bytes()).unwrap_err() {
            InjectError::Template(m) => assert!(m.contains("has a line break"), "{m}"),
            other => panic!("{other:?}"),
        }
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
            // 50 MB made by one operator: refused before it is allocated.
            ("{{ 'x' * 50000000 }}", "fuel"),
            // The issue's 176-byte request: 100 MB, then three times that.
            (
                "{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a %}{{ b|length }}",
                "fuel",
            ),
            // Doubling a string that alone fits.
            (
                "{% set a = 'x' * 1000000 %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a|length }}",
                "fuel",
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

    fn request(content: serde_json::Value, recipients: usize) -> Vec<u8> {
        let rcpts: Vec<_> = (0..recipients)
            .map(|i| serde_json::json!({"email": format!("r{i}@x")}))
            .collect();
        serde_json::json!({"envelope_sender": "a@b", "content": content, "recipients": rcpts})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn too_many_recipients_are_refused_before_anything_is_rendered() {
        // A template that would fail to render: the recipient cap comes first.
        let body = request(serde_json::json!("{{ nope() }}"), 3);
        match parse_within(&body, &mut Limits::new(2, usize::MAX)).unwrap_err() {
            InjectError::Invalid(m) => assert!(m.contains("at most 2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_a_request_builds_is_bounded_and_refused_from_its_first_message() {
        // The issue's shape: one large attachment to many recipients.
        let attachment = "A".repeat(100_000);
        let builder = serde_json::json!({"text_body": "hi {{ email }}",
            "attachments": [{"data": attachment, "content_type": "application/octet-stream"}]});
        let body = request(builder, 400);
        let mut limits = Limits::new(10_000, 1024 * 1024);
        match parse_within(&body, &mut limits).unwrap_err() {
            InjectError::TooLarge(m) => assert!(m.contains("400 recipients"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            limits.built < 200_000,
            "refused after one message: {}",
            limits.built
        );
        // A body shared by every recipient counts once.
        let shared = request(
            serde_json::json!("Subject: x\r\n\r\n".to_string() + &"y".repeat(1000)),
            5000,
        );
        let mut limits = Limits::new(10_000, 64 * 1024);
        assert_eq!(
            parse_within(&shared, &mut limits).unwrap().recipients.len(),
            5000
        );
        // The listener's memory in use: a temporary refusal.
        let memory = crate::listeners::memory::MemoryBudget::new(1000);
        let mut limits = Limits::new(10_000, usize::MAX);
        limits.memory = Some(crate::listeners::memory::Reservation::new(&memory));
        match parse_within(&shared, &mut limits).unwrap_err() {
            InjectError::Busy(m) => assert!(m.contains("try again"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rendering_stops_at_the_request_deadline() {
        let body = request(serde_json::json!("Subject: {{ email }}\r\n\r\nx"), 3);
        let mut limits = Limits::new(10, usize::MAX);
        limits.deadline = Some(std::time::Instant::now() - std::time::Duration::from_secs(1));
        match parse_within(&body, &mut limits).unwrap_err() {
            InjectError::Template(m) => assert!(m.contains("took longer"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    fn headers_named<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
        let head = msg.split("\r\n\r\n").next().unwrap();
        head.split("\r\n")
            .filter_map(|l| {
                l.split_once(": ")
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .collect()
    }

    /// KumoMTA's docs (reference/http/kumod/schemas/Recipient): `to_header` is
    /// predefined, e.g. "John Smith" <john.smith@mailbox-example.com> (2026.04.09).
    #[test]
    fn to_header_is_predefined_for_templates() {
        let body = serde_json::json!({
            "envelope_sender": "noreply@example.com",
            "content": "To: {{ to_header }}\r\nSubject: hi\r\n\r\nHello {{ name }}",
            "recipients": [{"email": "john.smith@mailbox-example.com", "name": "John Smith"}],
        });
        let inj = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            headers_named(text(&inj.recipients[0]), "To"),
            ["\"John Smith\" <john.smith@mailbox-example.com>"]
        );
    }

    /// KumoMTA's `test_builder_to_header` (2026.03.04): a `To` among the
    /// builder's headers is the only `To:`; from, reply_to and subject are
    /// templated like the other headers.
    #[test]
    fn the_builders_own_to_replaces_the_recipients_and_from_and_reply_to_are_templated() {
        let body = serde_json::json!({
            "envelope_sender": "noreply@acme.example",
            "substitutions": {"company": "Acme", "domain": "acme.example"},
            "content": {
                "text_body": "hi",
                "subject": "{{ company }} invoice",
                "from": {"name": "{{ company }} Billing", "email": "billing@{{ domain }}"},
                "reply_to": {"email": "support@{{ domain }}"},
                "headers": {"To": "team@sender.example"}
            },
            "recipients": [{"email": "ann@example.com", "name": "Ann Lee"}],
        });
        let inj = parse(body.to_string().as_bytes()).unwrap();
        let msg = text(&inj.recipients[0]);
        assert_eq!(headers_named(msg, "To"), ["team@sender.example"], "{msg}");
        assert_eq!(
            headers_named(msg, "From"),
            ["\"Acme Billing\" <billing@acme.example>"],
            "{msg}"
        );
        assert_eq!(
            headers_named(msg, "Reply-To"),
            ["<support@acme.example>"],
            "{msg}"
        );
        assert_eq!(headers_named(msg, "Subject"), ["Acme invoice"], "{msg}");
        // Without its own To, the recipient is the To.
        let mut plain = body.clone();
        plain["content"]["headers"] = serde_json::json!({});
        let inj = parse(plain.to_string().as_bytes()).unwrap();
        assert_eq!(
            headers_named(text(&inj.recipients[0]), "To"),
            ["\"Ann Lee\" <ann@example.com>"]
        );
        // A template that renders no address is a 422 naming the field.
        let mut bad = body;
        bad["content"]["from"]["email"] = serde_json::json!("{{ nothing }}");
        match parse(bad.to_string().as_bytes()).unwrap_err() {
            InjectError::Template(m) => {
                assert!(m.contains("content.from for ann@example.com"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
