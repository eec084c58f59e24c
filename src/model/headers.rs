//! Editing a message's header block in place, as KumoMTA's message methods
//! do (`prepend_header`, `append_header`, `remove_all_named_headers`,
//! `import_x_headers`, `remove_x_headers`): the body and every other field
//! stay byte for byte as they were.

use mail_builder::headers::Header;
use mail_builder::headers::text::Text;

/// One header field: its name and where its bytes (folded lines and line
/// ending included) are in the message.
struct Field {
    name: String,
    start: usize,
    end: usize,
}

/// The header fields, and where the header block ends (where a new last
/// field goes: before the blank line, or at the end of a message that has
/// no body).
fn fields(data: &[u8]) -> (Vec<Field>, usize) {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let line_end = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| pos + i + 1);
        let line = &data[pos..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // A continuation of the field before it.
            match out.last_mut() {
                Some(f) => f.end = line_end,
                None => break,
            }
        } else {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                break; // Not a header line: the body starts here.
            };
            out.push(Field {
                name: String::from_utf8_lossy(&line[..colon]).trim().to_owned(),
                start: pos,
                end: line_end,
            });
        }
        pos = line_end;
    }
    (out, pos)
}

/// `Name: value` and CRLF; with `encode`, non-ASCII values are RFC 2047
/// encoded and long ones folded (KumoMTA's ENCODE parameter).
fn field(name: &str, value: &str, encode: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    if encode {
        Text::new(value).write_header(&mut out, name.len() + 2);
    } else {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Checks a header name as RFC 5322 defines it (printable ASCII, no colon).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// Checks a header value taken as-is: a line break only as folding (CRLF
/// then a space or tab), so a value cannot end its field and start another.
pub fn check_value(value: &str) -> Result<(), String> {
    let b = value.as_bytes();
    let folded = |i: usize| {
        b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') && matches!(b.get(i + 2), Some(b' ' | b'\t'))
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if folded(i) => i += 3,
            b'\r' | b'\n' => {
                return Err(
                    "a header value taken as-is may break lines only to fold them (CRLF, then a space or tab)"
                        .into(),
                );
            }
            _ => i += 1,
        }
    }
    Ok(())
}

pub fn prepend(data: &[u8], name: &str, value: &str, encode: bool) -> Vec<u8> {
    let mut out = field(name, value, encode);
    out.extend_from_slice(data);
    out
}

pub fn append(data: &[u8], name: &str, value: &str, encode: bool) -> Vec<u8> {
    let (_, end) = fields(data);
    let mut out = Vec::with_capacity(data.len() + name.len() + value.len() + 4);
    out.extend_from_slice(&data[..end]);
    if end > 0 && data[end - 1] != b'\n' {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&field(name, value, encode));
    out.extend_from_slice(&data[end..]);
    out
}

/// The message without the fields `remove` picks; `None` when none did.
fn without(data: &[u8], remove: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let (fields, _) = fields(data);
    if !fields.iter().any(|f| remove(&f.name)) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut pos = 0;
    for f in fields.iter().filter(|f| remove(&f.name)) {
        out.extend_from_slice(&data[pos..f.start]);
        pos = f.end;
    }
    out.extend_from_slice(&data[pos..]);
    Some(out)
}

pub fn remove_named(data: &[u8], name: &str) -> Option<Vec<u8>> {
    without(data, |n| n.eq_ignore_ascii_case(name))
}

fn is_x(name: &str) -> bool {
    name.len() > 2 && name[..2].eq_ignore_ascii_case("x-")
}

/// Which fields `import_x_headers` / `remove_x_headers` take: every `X-`
/// field, or those named (any name, case-insensitively).
fn picked<'a>(names: Option<&'a [String]>) -> impl Fn(&str) -> bool + 'a {
    move |n: &str| match names {
        None => is_x(n),
        Some(list) => list.iter().any(|l| l.eq_ignore_ascii_case(n)),
    }
}

pub fn remove_x(data: &[u8], names: Option<&[String]>) -> Option<Vec<u8>> {
    without(data, picked(names))
}

/// The values of the fields `names` picks (or every `X-` field), each under
/// KumoMTA's meta key: lowercase, `-` as `_`. Values are unfolded and RFC
/// 2047 decoded; a later field of a name wins, as it does in KumoMTA.
pub fn x_values(data: &[u8], names: Option<&[String]>) -> Vec<(String, String)> {
    let Ok((headers, _)) = mailparse::parse_headers(data) else {
        return Vec::new();
    };
    let pick = picked(names);
    headers
        .iter()
        .filter(|h| pick(&h.get_key_ref()))
        .map(|h| {
            (
                h.get_key_ref().to_ascii_lowercase().replace('-', "_"),
                h.get_value(),
            )
        })
        .collect()
}

/// Every value of the fields named `name`, unfolded and decoded, in order.
pub fn all_named(data: &[u8], name: &str) -> Vec<String> {
    use mailparse::MailHeaderMap;
    mailparse::parse_headers(data)
        .map(|(h, _)| h.get_all_values(name))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"X-Campaign-ID: 12345\r\nX-Mailer: foo\r\n bar\r\nSubject: the subject\r\n\r\nThe body\r\nX-Not: a header\r\n";

    fn text(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn prepend_and_append_keep_everything_else_as_it_was() {
        let p = prepend(MSG, "X-First", "1", false);
        assert_eq!(text(&p), format!("X-First: 1\r\n{}", text(MSG)));
        let a = append(MSG, "X-Last", "2", false);
        assert_eq!(
            text(&a),
            "X-Campaign-ID: 12345\r\nX-Mailer: foo\r\n bar\r\nSubject: the subject\r\nX-Last: 2\r\n\r\nThe body\r\nX-Not: a header\r\n"
        );
        // A message that is all header.
        assert_eq!(
            text(&append(b"Subject: s", "X-A", "b", false)),
            "Subject: s\r\nX-A: b\r\n"
        );
    }

    #[test]
    fn encode_turns_non_ascii_into_encoded_words_and_folds() {
        let p = prepend(b"\r\nbody", "Subject", "Grüße aus Köln", true);
        let line = text(&p).lines().next().unwrap().to_owned();
        assert!(line.starts_with("Subject: =?utf-8?"), "{line}");
        assert_eq!(all_named(&p, "subject"), ["Grüße aus Köln"]);
        let long = "word ".repeat(40);
        let folded = prepend(b"\r\nbody", "X-Long", long.trim(), true);
        let header = text(&folded).split("\r\n\r\n").next().unwrap().to_owned();
        assert!(
            header.lines().count() > 1 && header.lines().all(|l| l.len() <= 78),
            "{header}"
        );
        assert_eq!(all_named(&folded, "x-long"), [long.trim()]);
    }

    #[test]
    fn x_headers_are_imported_and_removed_as_kumomta_documents() {
        assert_eq!(
            x_values(MSG, None),
            [
                ("x_campaign_id".to_string(), "12345".to_string()),
                ("x_mailer".to_string(), "foo bar".to_string())
            ]
        );
        let one = ["x-campaign-id".to_string()];
        assert_eq!(x_values(MSG, Some(&one)).len(), 1);
        let subject = ["Subject".to_string()];
        assert_eq!(x_values(MSG, Some(&subject))[0].0, "subject");
        assert_eq!(
            text(&remove_x(MSG, None).unwrap()),
            "Subject: the subject\r\n\r\nThe body\r\nX-Not: a header\r\n"
        );
        assert_eq!(
            text(&remove_x(MSG, Some(&one)).unwrap()),
            "X-Mailer: foo\r\n bar\r\nSubject: the subject\r\n\r\nThe body\r\nX-Not: a header\r\n"
        );
        assert_eq!(remove_named(MSG, "Received"), None);
        assert_eq!(
            all_named(&remove_named(MSG, "x-mailer").unwrap(), "X-Mailer"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn names_and_raw_values_are_checked() {
        assert!(check_name("X-Ok").is_ok());
        for bad in ["", "X Bad", "X:Bad", "X-\u{e9}"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("a\r\nBcc: x@y").is_err());
        assert!(check_value("a\nb").is_err());
        assert!(check_value("folded\r\n continues").is_ok());
    }
}
