//! An SMTP-style response as KumoMTA's log records and delivery outcomes
//! carry it: code, enhanced code and text, typed from where it is made to
//! where it leaves the process.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

impl Response {
    /// A response with no enhanced code: what KumoMTA records for a
    /// custom_lua outcome (`200` and what `send` returned, or the code and
    /// text given to `kumo.reject`).
    pub fn new(code: u16, content: impl Into<String>) -> Response {
        Response {
            code,
            enhanced_code: None,
            content: content.into(),
            command: None,
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced_code {
            write!(f, " {}.{}.{}", e.class, e.subject, e.detail)?;
        }
        if !self.content.is_empty() {
            write!(f, " {}", self.content)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn display_is_the_wire_form() {
        for text in ["451 4.0.0 later", "250 Ack", "200 ok", "550"] {
            assert_eq!(Response::parse(text).to_string(), text);
        }
        assert_eq!(Response::new(200, "250 ok").to_string(), "200 250 ok");
    }
}
