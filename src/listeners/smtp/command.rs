//! SMTP command parsing (RFC 5321), apart from the session that drives it.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `MAIL FROM:<addr> [SIZE=n] [BODY=8BITMIME|7BIT]`; the null sender is "".
    Mail {
        from: String,
        size: Option<u64>,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    StartTls,
    /// `AUTH mechanism [initial-response]`; the mechanism upper-cased.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// A command that could not be parsed, with the reply it deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub code: u16,
    pub text: &'static str,
}

const SYNTAX: Malformed = Malformed {
    code: 501,
    text: "5.5.4 syntax error in parameters",
};

fn verb_and_rest(line: &str) -> (String, &str) {
    match line.split_once(' ') {
        Some((v, rest)) => (v.to_ascii_uppercase(), rest.trim()),
        None => (line.to_ascii_uppercase(), ""),
    }
}

/// `<local@domain>` (or `<>` when `allow_null`), returning the address.
fn path(s: &str, allow_null: bool) -> Result<(&str, &str), Malformed> {
    let s = s.trim_start();
    let inner_end = s.find('>').ok_or(SYNTAX)?;
    if !s.starts_with('<') {
        return Err(SYNTAX);
    }
    let mut addr = &s[1..inner_end];
    let params = s[inner_end + 1..].trim();
    // A source route (`<@a,@b:user@host>`) is accepted and ignored, as RFC 5321 asks.
    if addr.starts_with('@')
        && let Some((_, rest)) = addr.split_once(':')
    {
        addr = rest;
    }
    if addr.is_empty() {
        return if allow_null {
            Ok(("", params))
        } else {
            Err(SYNTAX)
        };
    }
    if crate::model::address::check(addr).is_err() {
        return Err(Malformed {
            code: 553,
            text: "5.1.3 address must be of the form local@domain",
        });
    }
    Ok((addr, params))
}

pub fn parse(line: &str) -> Result<Command, Malformed> {
    let (verb, rest) = verb_and_rest(line.trim_end_matches(['\r', '\n']));
    let no_args = |c: Command| if rest.is_empty() { Ok(c) } else { Err(SYNTAX) };
    match verb.as_str() {
        "EHLO" | "HELO" if rest.is_empty() => Err(Malformed {
            code: 501,
            text: "5.5.4 a domain or address literal is required",
        }),
        "EHLO" => Ok(Command::Ehlo(rest.to_owned())),
        "HELO" => Ok(Command::Helo(rest.to_owned())),
        "MAIL" => {
            let arg = strip_prefix_ci(rest, "FROM:").ok_or(SYNTAX)?;
            let (from, params) = path(arg, true)?;
            let mut size = None;
            for p in params.split_ascii_whitespace() {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                match k.to_ascii_uppercase().as_str() {
                    "SIZE" => size = Some(v.parse().map_err(|_| SYNTAX)?),
                    "BODY" if matches!(v.to_ascii_uppercase().as_str(), "7BIT" | "8BITMIME") => {}
                    _ => {
                        return Err(Malformed {
                            code: 555,
                            text: "5.5.4 unsupported MAIL parameter",
                        });
                    }
                }
            }
            Ok(Command::Mail {
                from: from.to_owned(),
                size,
            })
        }
        "RCPT" => {
            let arg = strip_prefix_ci(rest, "TO:").ok_or(SYNTAX)?;
            let (to, params) = path(arg, false)?;
            if !params.is_empty() {
                return Err(Malformed {
                    code: 555,
                    text: "5.5.4 unsupported RCPT parameter",
                });
            }
            Ok(Command::Rcpt { to: to.to_owned() })
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut words = rest.split_ascii_whitespace();
            let mechanism = words.next().ok_or(SYNTAX)?.to_ascii_uppercase();
            let initial = words.next().map(str::to_owned);
            if words.next().is_some() {
                return Err(SYNTAX);
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(Malformed {
            code: 500,
            text: "5.5.1 command not recognized",
        }),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse("HELO x\r\n"), Ok(Command::Helo("x".into())));
        assert_eq!(
            parse("MAIL FROM:<a@b.c> SIZE=1234 BODY=8BITMIME"),
            Ok(Command::Mail {
                from: "a@b.c".into(),
                size: Some(1234)
            })
        );
        assert_eq!(
            parse("mail from: <>"),
            Ok(Command::Mail {
                from: "".into(),
                size: None
            })
        );
        assert_eq!(
            parse("RCPT TO:<user@amqp>"),
            Ok(Command::Rcpt {
                to: "user@amqp".into()
            })
        );
        assert_eq!(
            parse("RCPT TO:<@relay:user@amqp>"),
            Ok(Command::Rcpt {
                to: "user@amqp".into()
            })
        );
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(parse("VRFY someone"), Ok(Command::Vrfy));
        assert_eq!(
            parse("auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
    }

    #[test]
    fn malformed() {
        for (line, code) in [
            ("EHLO", 501),
            ("MAIL FROM:a@b", 501),
            ("MAIL TO:<a@b>", 501),
            ("MAIL FROM:<a@b> SIZE=big", 501),
            ("MAIL FROM:<a@b> AUTH=x", 555),
            ("RCPT TO:<>", 501),
            ("RCPT TO:<nobody>", 553),
            ("RCPT TO:<a b@c>", 553),
            ("RCPT TO:<a@b> NOTIFY=NEVER", 555),
            ("DATA now", 501),
            ("AUTH", 501),
            ("AUTH PLAIN a b", 501),
            ("FOO", 500),
            ("", 500),
            ("\u{1}\u{2}", 500),
        ] {
            assert_eq!(parse(line).map_err(|m| m.code), Err(code), "{line:?}");
        }
    }
}
