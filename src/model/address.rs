//! Envelope addresses as the relay takes them, over SMTP and HTTP alike:
//! `local@domain`, both parts present, no spaces, angle brackets or control
//! characters (a CR or LF in an address would end up inside headers the
//! relay writes, such as `Message-ID:`).

/// Longest address (RFC 5321's path limit, without the brackets).
pub const MAX_LEN: usize = 254;

/// Why `addr` is not an envelope address, if it is not.
pub fn check(addr: &str) -> Result<(), &'static str> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("an address must be of the form local@domain");
    };
    let bad = |c: char| c.is_control() || c == ' ' || c == '<' || c == '>';
    if local.is_empty() || domain.is_empty() || addr.chars().any(bad) {
        return Err("an address must be of the form local@domain");
    }
    if addr.len() > MAX_LEN {
        return Err("an address may be at most 254 bytes long");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn addresses() {
        for ok in ["a@b", "first.last+tag@example.com", "a@[192.0.2.1]"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "nobody",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@example.com\r\nBcc: x@y",
            "a\n@example.com",
            "<a@example.com>",
            "a@exa\u{0}mple.com",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
