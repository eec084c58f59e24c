#![no_main]
//! DATA as the session reads it: the line reader feeding the DATA state
//! machine (`smtp::data`). Two properties over any bytes:
//! - one message in, one message out: the bytes a client sends for any
//!   content (line endings made CRLF, dot-stuffed, then `.CRLF`) come out as
//!   exactly that content, and what follows the end is left unread;
//! - raw bytes: the message ends only at a `.CRLF` line that follows a CRLF
//!   (or starts the data), never anywhere else; no panic, always progress.
use amqp_relay::listeners::smtp::data::{DataReader, Fed};
use amqp_relay::listeners::smtp::lines::{Line, read_line};
use amqp_relay::model::listener_config::InvalidLineEndings;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

const LIMIT: usize = 1 << 20;
const AFTER: &[u8] = b"NOOP\r\n";

/// A client's encoding of `content`: CRLF line endings, dot-stuffing, the end.
fn encode(content: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < content.len() {
        match content[i] {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                lines.push(std::mem::take(&mut cur));
                i += 1;
            }
            b'\r' | b'\n' => lines.push(std::mem::take(&mut cur)),
            b => cur.push(b),
        }
        i += 1;
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    let (mut wire, mut expected) = (Vec::new(), Vec::new());
    for l in &lines {
        if l.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(l);
        wire.extend_from_slice(b"\r\n");
        expected.extend_from_slice(l);
        expected.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    wire.extend_from_slice(AFTER);
    (wire, expected)
}

/// Reads DATA from `input`; the message (or None at the end of input) and
/// the bytes left after its end.
async fn read(input: &[u8], endings: InvalidLineEndings) -> (Option<Result<Vec<u8>, String>>, Vec<u8>, usize) {
    let mut r = tokio::io::BufReader::with_capacity(13, input);
    let mut reader = DataReader::new(endings);
    let (mut buf, mut body) = (Vec::new(), Vec::new());
    let mut consumed = 0;
    let mut lines = 0usize;
    loop {
        let line = read_line(&mut r, &mut buf, LIMIT).await.unwrap();
        lines += 1;
        assert!(lines <= input.len() + 1, "no progress");
        let crlf = match line {
            Line::Eof => return (None, Vec::new(), consumed),
            Line::TooLong => unreachable!("lines are shorter than the limit"),
            Line::Line { crlf } => crlf,
        };
        consumed += buf.len() + if crlf { 2 } else { 1 };
        match reader.line(&buf, crlf) {
            Fed::End => break,
            Fed::Skip => {}
            Fed::Append(text, end) => {
                body.extend_from_slice(&text);
                body.extend_from_slice(end);
            }
        }
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    let msg = match reader.refusal() {
        Some((code, text)) => Err(format!("{code} {text}")),
        None => Ok(body),
    };
    (Some(msg), rest, consumed)
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let (wire, expected) = encode(data);
        for endings in [InvalidLineEndings::Deny, InvalidLineEndings::Fix, InvalidLineEndings::Allow] {
            let (msg, rest, _) = read(&wire, endings).await;
            assert_eq!(msg, Some(Ok(expected.clone())), "one message in, one message out");
            assert_eq!(rest, AFTER, "the end of data is where the client put it");
        }
        // Raw bytes: an end only at CRLF "." CRLF (or "." CRLF first).
        let (msg, _, consumed) = read(data, InvalidLineEndings::Deny).await;
        if msg.is_some() {
            let head = &data[..consumed];
            assert!(head.ends_with(b".\r\n"), "ended after {head:?}");
            let before = &head[..head.len() - 3];
            assert!(before.is_empty() || before.ends_with(b"\r\n"), "ended after a bare line end: {head:?}");
        }
    });
});
