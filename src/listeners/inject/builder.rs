//! The builder form of `content`: KumoMTA assembles the MIME message from
//! its parts, templating `text_body`, `html_body` (HTML-escaped),
//! `amp_html_body`, `subject` and `headers` per recipient; attachments are
//! taken as they are. mail-builder writes the MIME.

use super::InjectError;
use super::template::{self, MAX_RENDERED};
use crate::model::headers::{check_name, check_value};
use base64::Engine as _;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use minijinja::Environment;
use serde::Deserialize;
use std::collections::BTreeMap;
use template::Piece;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    #[serde(default)]
    text_body: Option<String>,
    #[serde(default)]
    html_body: Option<String>,
    #[serde(default)]
    amp_html_body: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    from: Option<Mailbox>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    reply_to: Option<Mailbox>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mailbox {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attachment {
    data: String,
    content_type: String,
    #[serde(default)]
    content_id: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    base64: bool,
}

/// An attachment checked and decoded once per request.
struct Part {
    content_type: String,
    data: Vec<u8>,
    content_id: Option<String>,
    file_name: Option<String>,
}

fn invalid(m: String) -> InjectError {
    InjectError::Invalid(m)
}

impl Builder {
    /// Reads the builder object, naming the field that is wrong.
    pub fn from_value(v: serde_json::Value) -> Result<Self, InjectError> {
        let mut b: Builder = serde_path_to_error::deserialize(v).map_err(|e| {
            let at = match e.path().to_string() {
                p if p == "." => "content".to_owned(),
                p => format!("content.{p}"),
            };
            invalid(format!("{at}: {}", e.inner()))
        })?;
        if b.text_body.is_none() && b.html_body.is_none() {
            return Err(invalid(
                "content: at least one of text_body and html_body must be given".into(),
            ));
        }
        // As in KumoMTA, the subject is one more templated header.
        if let Some(subject) = b.subject.take() {
            b.headers.insert("Subject".into(), subject);
        }
        for name in b.headers.keys() {
            check_name(name).map_err(|e| invalid(format!("content.headers: {e}")))?;
        }
        for (field, m) in [("from", &b.from), ("reply_to", &b.reply_to)] {
            if let Some(m) = m {
                check_address(&format!("content.{field}"), m)?;
            }
        }
        Ok(b)
    }

    fn parts(&self) -> Result<Vec<Part>, InjectError> {
        self.attachments
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let at = format!("content.attachments[{i}]");
                if !a.content_type.contains('/') || check_value(&a.content_type).is_err() {
                    return Err(invalid(format!(
                        "{at}.content_type: {:?} is not a MIME type",
                        a.content_type
                    )));
                }
                for v in [&a.content_id, &a.file_name].into_iter().flatten() {
                    if v.contains(['\r', '\n', '<', '>', '"']) {
                        return Err(invalid(format!("{at}: {v:?} has a character not allowed")));
                    }
                }
                let data = if a.base64 {
                    let clean: Vec<u8> = a
                        .data
                        .bytes()
                        .filter(|b| !b.is_ascii_whitespace())
                        .collect();
                    base64::engine::general_purpose::STANDARD
                        .decode(clean)
                        .map_err(|e| invalid(format!("{at}.data: not base64: {e}")))?
                } else {
                    a.data.as_bytes().to_vec()
                };
                Ok(Part {
                    content_type: a.content_type.clone(),
                    data,
                    content_id: a.content_id.clone(),
                    file_name: a.file_name.clone(),
                })
            })
            .collect()
    }
}

fn check_address(at: &str, m: &Mailbox) -> Result<(), InjectError> {
    let bad = |s: &str| s.contains(['\r', '\n']);
    // A templated address is checked once rendered, per recipient.
    let templated = m.email.contains("{{") || m.email.contains("{%");
    if (!m.email.contains('@') && !templated) || bad(&m.email) || m.name.as_deref().is_some_and(bad)
    {
        return Err(invalid(format!(
            "{at}: {:?} is not an address (user@domain, a name without line breaks)",
            m.email
        )));
    }
    Ok(())
}

/// The request's templates, compiled once.
pub struct Compiled<'e, 's> {
    /// `from` and `reply_to`, templated as KumoMTA templates them: name and address.
    from: Option<(Option<Piece<'e, 's>>, Piece<'e, 's>)>,
    reply_to: Option<(Option<Piece<'e, 's>>, Piece<'e, 's>)>,
    /// The request gives its own `To:` header: the recipient's is left out
    /// (KumoMTA's `test_builder_to_header`).
    own_to: bool,
    text: Option<Piece<'e, 's>>,
    html: Option<Piece<'e, 's>>,
    amp: Option<Piece<'e, 's>>,
    headers: Vec<(&'s str, Piece<'e, 's>)>,
    parts: Vec<Part>,
    /// For the Message-ID: the envelope sender's domain.
    domain: &'s str,
}

/// `env` is `None` for the Static dialect: every part taken as it is.
pub fn compile<'e, 's>(
    env: Option<&'e Environment<'s>>,
    builder: &'s Builder,
    sender: &'s str,
) -> Result<Compiled<'e, 's>, InjectError> {
    let one = |name: &'static str, src: &'s Option<String>| {
        src.as_deref()
            .map(|s| template::compile(env, name, s, name.trim_end_matches(".html")))
            .transpose()
    };
    let headers = builder
        .headers
        .iter()
        .map(|(name, src)| {
            let t = template::compile(env, name, src, &format!("content.headers.{name}"))?;
            Ok((name.as_str(), t))
        })
        .collect::<Result<_, InjectError>>()?;
    let mailbox = |field: &'static str, m: &'s Option<Mailbox>| {
        m.as_ref()
            .map(|m| {
                let name = m
                    .name
                    .as_deref()
                    .map(|n| template::compile(env, field, n, &format!("content.{field}.name")))
                    .transpose()?;
                let email =
                    template::compile(env, field, &m.email, &format!("content.{field}.email"))?;
                Ok::<_, InjectError>((name, email))
            })
            .transpose()
    };
    Ok(Compiled {
        from: mailbox("from", &builder.from)?,
        reply_to: mailbox("reply_to", &builder.reply_to)?,
        own_to: builder.headers.keys().any(|h| h.eq_ignore_ascii_case("to")),
        text: one("text_body", &builder.text_body)?,
        html: one("html_body.html", &builder.html_body)?,
        amp: one("amp_html_body.html", &builder.amp_html_body)?,
        headers,
        parts: builder.parts()?,
        domain: sender.rsplit_once('@').map_or("localhost", |(_, d)| d),
    })
}

impl Compiled<'_, '_> {
    /// One recipient's message.
    pub fn build(
        &self,
        vars: &minijinja::Value,
        email: &str,
        name: Option<&str>,
    ) -> Result<Vec<u8>, InjectError> {
        let mut budget = MAX_RENDERED;
        let mut render = |t: &Option<Piece>, field: &str| {
            t.as_ref()
                .map(|t| template::render(t, vars, field, email, &mut budget))
                .transpose()
        };
        let text = render(&self.text, "content.text_body")?;
        let amp = render(&self.amp, "content.amp_html_body")?;
        let html = render(&self.html, "content.html_body")?;
        let mut msg = MessageBuilder::new().message_id(format!(
            "{}@{}",
            uuid::Uuid::new_v4().simple(),
            self.domain
        ));
        if let Some(pieces) = &self.from {
            let (n, e) = render_mailbox(pieces, vars, "from", email, &mut budget)?;
            msg = msg.from(address_owned(n, e));
        }
        if !self.own_to {
            msg = msg.to(address(name, email));
        }
        if let Some(pieces) = &self.reply_to {
            let (n, e) = render_mailbox(pieces, vars, "reply_to", email, &mut budget)?;
            msg = msg.reply_to(address_owned(n, e));
        }
        for (header, t) in &self.headers {
            let field = format!("content.headers.{header}");
            let value = template::render(t, vars, &field, email, &mut budget)?;
            if value.contains(['\r', '\n']) {
                return Err(InjectError::Template(format!(
                    "{field} for {email}: the rendered value has a line break"
                )));
            }
            msg = msg.header(*header, Text::new(value));
        }
        msg = msg.body(self.body(text, amp, html));
        Ok(msg.write_to_vec().expect("writing to a Vec does not fail"))
    }

    /// text, AMP and HTML as alternatives; inline attachments with them in
    /// multipart/related; the others after them in multipart/mixed.
    fn body<'a>(
        &'a self,
        text: Option<String>,
        amp: Option<String>,
        html: Option<String>,
    ) -> MimePart<'a> {
        let mut alternatives: Vec<MimePart> = [
            ("text/plain", text),
            ("text/x-amp-html", amp),
            ("text/html", html),
        ]
        .into_iter()
        .filter_map(|(ct, body)| body.map(|b| MimePart::new(ct, b)))
        .collect();
        let mut body = if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            MimePart::new("multipart/alternative", alternatives)
        };
        let (inline, attached): (Vec<&Part>, Vec<&Part>) =
            self.parts.iter().partition(|p| p.content_id.is_some());
        if !inline.is_empty() {
            let mut related = vec![body];
            related.extend(inline.into_iter().map(attachment));
            body = MimePart::new("multipart/related", related);
        }
        if !attached.is_empty() {
            let mut mixed = vec![body];
            mixed.extend(attached.into_iter().map(attachment));
            body = MimePart::new("multipart/mixed", mixed);
        }
        body
    }
}

/// A templated mailbox rendered for one recipient, its address checked.
fn render_mailbox(
    (name, addr): &(Option<Piece>, Piece),
    vars: &minijinja::Value,
    field: &str,
    email: &str,
    budget: &mut usize,
) -> Result<(Option<String>, String), InjectError> {
    let name = name
        .as_ref()
        .map(|t| template::render(t, vars, &format!("content.{field}.name"), email, budget))
        .transpose()?;
    let at = format!("content.{field}.email");
    let addr = template::render(addr, vars, &at, email, budget)?;
    let bad_name = name.as_deref().is_some_and(|n| n.contains(['\r', '\n']));
    if crate::model::address::check(&addr).is_err() || bad_name {
        return Err(InjectError::Template(format!(
            "content.{field} for {email}: {addr:?} is not an address (user@domain, a name without line breaks)"
        )));
    }
    Ok((name, addr))
}

fn address_owned(
    name: Option<String>,
    email: String,
) -> mail_builder::headers::address::Address<'static> {
    match name {
        Some(n) => (n, email).into(),
        None => email.into(),
    }
}

fn address<'a>(
    name: Option<&'a str>,
    email: &'a str,
) -> mail_builder::headers::address::Address<'a> {
    match name {
        Some(n) => (n, email).into(),
        None => email.into(),
    }
}

fn attachment(p: &Part) -> MimePart<'_> {
    let mut part = MimePart::new(p.content_type.as_str(), p.data.as_slice());
    let disposition = if p.content_id.is_some() {
        "inline"
    } else {
        "attachment"
    };
    let mut d = ContentType::new(disposition);
    if let Some(f) = &p.file_name {
        d = d.attribute("filename", f.as_str());
    }
    part = part.header("Content-Disposition", d);
    if let Some(cid) = &p.content_id {
        part = part.cid(cid.as_str());
    }
    part
}
