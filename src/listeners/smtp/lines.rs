//! Reading CRLF (or bare LF) terminated lines with a hard length limit, so a
//! client cannot make the relay buffer without bound.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

pub enum Line {
    /// The line without its terminator; `crlf` is false when it ended in a
    /// bare LF (or at end of input).
    Line {
        crlf: bool,
    },
    Eof,
    /// Longer than the limit; the rest of it was read and dropped.
    TooLong,
}

/// Reads one line into `buf` (cleared first), at most `limit` bytes.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Line { crlf: false }
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > limit + 2 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            buf.pop();
            let crlf = buf.ends_with(b"\r");
            if crlf {
                buf.pop();
            }
            return Ok(Line::Line { crlf });
        }
    }
}
