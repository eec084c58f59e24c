//! The DATA state machine, apart from the session that feeds it lines: where
//! the message ends, dot-unstuffing, and what becomes of invalid line endings.
//!
//! Only `<CR><LF>.<CR><LF>` ends DATA: a `.` line ends it only when the line
//! before it ended in CRLF too (or it is the first line). A body such as
//! `hello<LF>.<CR><LF>MAIL FROM:…` therefore cannot end a message early and
//! smuggle a second transaction past the relay (CVE-2023-51764/5/6; Postfix's
//! `smtpd_forbid_bare_newline`). A bare LF or a bare CR anywhere in DATA is
//! handled as KumoMTA's `invalid_line_endings` says: `Deny` (its default)
//! refuses the message once it has been read to its end, `Fix` makes every
//! line end CRLF, `Allow` keeps the bytes as sent.

use crate::model::listener_config::InvalidLineEndings;
use std::borrow::Cow;

/// What one line of DATA means.
#[derive(Debug, PartialEq)]
pub enum Fed<'a> {
    /// The end of the message: nothing is appended.
    End,
    /// Append this line and its line ending to the message.
    Append(Cow<'a, [u8]>, &'static [u8]),
    /// The message will be refused: keep reading to its end, store nothing.
    Skip,
}

#[derive(Debug)]
pub struct DataReader {
    endings: InvalidLineEndings,
    /// The line before ended in CRLF: the next line starts a line as SMTP
    /// counts them (for the end of data and for dot-unstuffing).
    at_line_start: bool,
    /// The first invalid line ending seen.
    invalid: Option<&'static str>,
}

impl DataReader {
    pub fn new(endings: InvalidLineEndings) -> DataReader {
        DataReader {
            endings,
            at_line_start: true,
            invalid: None,
        }
    }

    /// One line as `read_line` gives it: its content without the line ending,
    /// and whether that ending was CRLF (else a bare LF).
    pub fn line<'a>(&mut self, line: &'a [u8], crlf: bool) -> Fed<'a> {
        let starts = self.at_line_start;
        if crlf && starts && line == b"." {
            return Fed::End;
        }
        self.at_line_start = crlf;
        let bare_cr = line.contains(&b'\r');
        if self.invalid.is_none() && (!crlf || bare_cr) {
            self.invalid = Some(if bare_cr { "a bare CR" } else { "a bare LF" });
        }
        let text = match line.strip_prefix(b".") {
            Some(rest) if starts => rest,
            _ => line,
        };
        match self.endings {
            InvalidLineEndings::Deny if self.invalid.is_some() => Fed::Skip,
            InvalidLineEndings::Allow if !crlf => Fed::Append(text.into(), b"\n"),
            InvalidLineEndings::Fix if bare_cr => Fed::Append(fix_bare_cr(text).into(), b"\r\n"),
            _ => Fed::Append(text.into(), b"\r\n"),
        }
    }

    /// After the end: the refusal of a message with invalid line endings
    /// under `Deny`, if it had any.
    pub fn refusal(&self) -> Option<(u16, String)> {
        match (self.endings, self.invalid) {
            (InvalidLineEndings::Deny, Some(what)) => Some((
                552,
                format!(
                    "5.6.0 the message data contains {what}: SMTP requires CRLF line endings \
                     (RFC 5321 2.3.8); refused, as invalid_line_endings = \"Deny\""
                ),
            )),
            _ => None,
        }
    }
}

/// Every CR not followed by LF becomes CRLF.
fn fix_bare_cr(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < text.len() {
        out.push(text[i]);
        if text[i] == b'\r' && text.get(i + 1) != Some(&b'\n') {
            out.push(b'\n');
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvalidLineEndings::*;

    /// Runs `input` (everything after the 354) through the reader as the
    /// session does; returns the message (or the refusal) and what was left
    /// after the end of data.
    fn run(endings: InvalidLineEndings, input: &[u8]) -> (Result<Vec<u8>, String>, Vec<u8>) {
        let mut reader = DataReader::new(endings);
        let mut body = Vec::new();
        let mut rest = input;
        loop {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                return (Err("no end of data".into()), rest.to_vec());
            };
            let (mut line, after) = (&rest[..nl], &rest[nl + 1..]);
            let crlf = line.ends_with(b"\r");
            if crlf {
                line = &line[..line.len() - 1];
            }
            rest = after;
            match reader.line(line, crlf) {
                Fed::End => break,
                Fed::Append(text, end) => {
                    body.extend_from_slice(&text);
                    body.extend_from_slice(end);
                }
                Fed::Skip => {}
            }
        }
        let result = match reader.refusal() {
            Some((code, text)) => Err(format!("{code} {text}")),
            None => Ok(body),
        };
        (result, rest.to_vec())
    }

    const SMUGGLED: &[u8] = b"hello\n.\r\nMAIL FROM:<ceo@corp.example>\r\nRCPT TO:<x@amqp>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n.\r\nQUIT\r\n";

    #[test]
    fn a_bare_lf_before_the_dot_does_not_end_the_message() {
        // Deny: read to the real end, then refused; no second transaction.
        let (msg, rest) = run(Deny, SMUGGLED);
        let err = msg.unwrap_err();
        assert!(
            err.starts_with("552 5.6.0") && err.contains("bare LF"),
            "{err}"
        );
        assert_eq!(rest, b"QUIT\r\n");
        // Fix: one message holding the would-be commands as text.
        let (msg, rest) = run(Fix, SMUGGLED);
        assert_eq!(
            msg.unwrap(),
            b"hello\r\n.\r\nMAIL FROM:<ceo@corp.example>\r\nRCPT TO:<x@amqp>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n"
        );
        assert_eq!(rest, b"QUIT\r\n");
        // Allow: the bytes as sent, still one message.
        let (msg, _) = run(Allow, SMUGGLED);
        assert!(msg.unwrap().starts_with(b"hello\n.\r\nMAIL FROM"));
    }

    #[test]
    fn bare_cr_is_invalid_too_and_fixed_to_crlf() {
        let input = b"a\rb\r\n.\r\n";
        let err = run(Deny, input).0.unwrap_err();
        assert!(err.contains("bare CR"), "{err}");
        assert_eq!(run(Fix, input).0.unwrap(), b"a\r\nb\r\n");
        assert_eq!(run(Allow, input).0.unwrap(), b"a\rb\r\n");
        // `\r.\r\n` after a CRLF line is a line holding CR and a dot, not the end.
        let (msg, rest) = run(Fix, b"x\r\n\r.\r\ny\r\n.\r\n");
        assert_eq!(msg.unwrap(), b"x\r\n\r\n.\r\ny\r\n");
        assert!(rest.is_empty());
    }

    #[test]
    fn dot_stuffing_is_undone_at_line_starts_only() {
        let (msg, _) = run(Deny, b"..leading\r\n.\r\n");
        assert_eq!(msg.unwrap(), b".leading\r\n");
        let (msg, _) = run(Deny, b"...\r\nmid.dot\r\n.\r\n");
        assert_eq!(msg.unwrap(), b"..\r\nmid.dot\r\n");
        // The first line may end the data at once: an empty message.
        let (msg, rest) = run(Deny, b".\r\nNOOP\r\n");
        assert_eq!((msg.unwrap(), rest), (vec![], b"NOOP\r\n".to_vec()));
        // After a bare LF, a leading dot is text (Fix keeps it).
        let (msg, _) = run(Fix, b"a\n.b\r\n.\r\n");
        assert_eq!(msg.unwrap(), b"a\r\n.b\r\n");
    }

    #[test]
    fn a_dot_line_ended_by_a_bare_lf_does_not_end_the_message() {
        let (msg, rest) = run(Fix, b"a\r\n.\nb\r\n.\r\n");
        assert_eq!(msg.unwrap(), b"a\r\n\r\nb\r\n");
        assert!(rest.is_empty());
    }
}
