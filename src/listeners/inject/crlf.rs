//! Line endings as SMTP carries them: KumoMTA turns every bare LF or CR of
//! an injected message into CRLF before the policy sees it.

use bytes::Bytes;

/// `data` with every line ending CRLF; the same buffer when it already is.
pub fn normalize(data: Bytes) -> Bytes {
    if is_crlf(&data) {
        return data;
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Bytes::from(out)
}

/// Every CR followed by LF and every LF preceded by CR (memchr's vector
/// search: this runs over every injected body).
fn is_crlf(data: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', data).all(|i| match data[i] {
        b'\r' => data.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && data[i - 1] == b'\r',
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_endings_become_crlf_and_crlf_stays_shared() {
        for (input, want) in [
            (
                &b"Subject: a\n\nbody\n"[..],
                &b"Subject: a\r\n\r\nbody\r\n"[..],
            ),
            (b"a\rb\r\nc\n\r", b"a\r\nb\r\nc\r\n\r\n"),
            (b"\na\r\n", b"\r\na\r\n"),
            (b"a\r\r\n", b"a\r\n\r\n"),
            (b"a\r\n\n", b"a\r\n\r\n"),
            (b"a\r", b"a\r\n"),
            (b"", b""),
        ] {
            assert_eq!(&normalize(Bytes::copy_from_slice(input))[..], want);
        }
        let ok = Bytes::from_static(b"Subject: a\r\n\r\nbody\r\n");
        assert_eq!(normalize(ok.clone()).as_ptr(), ok.as_ptr());
    }
}
