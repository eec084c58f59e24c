//! KumoMTA message methods this relay does not provide, found in a policy's
//! source when it loads (so `check` and a reload refuse it) instead of as
//! "attempt to call a nil value" at the first message.

/// Method, and what to do instead.
pub const MESSAGE_METHODS: &[(&str, &str)] = &[
    (
        "dkim_sign",
        "DKIM signing is out of scope: sign before the relay or leave it to the consumer",
    ),
    ("dkim_verify", "DKIM verification is out of scope"),
    ("arc_seal", "ARC is out of scope"),
    ("arc_verify", "ARC is out of scope"),
    (
        "add_authentication_results",
        "authentication results are out of scope",
    ),
    ("check_fix_conformance", "messages are relayed as received"),
    (
        "append_text_plain",
        "MIME part editing is not provided; use set_data",
    ),
    (
        "append_text_html",
        "MIME part editing is not provided; use set_data",
    ),
    ("parse_mime", "MIME parsing is not provided"),
    ("parse_rfc3464", "bounce report parsing is not provided"),
    (
        "import_scheduling_header",
        "scheduling is the queue's retry_interval and max_age",
    ),
    (
        "set_scheduling",
        "scheduling is the queue's retry_interval and max_age",
    ),
    (
        "set_due",
        "scheduling is the queue's retry_interval and max_age",
    ),
    (
        "set_force_sync",
        "every message is synced to the spool before it is acknowledged",
    ),
    (
        "shrink_data",
        "bodies leave memory on their own once spooled",
    ),
    (
        "increment_num_attempts",
        "attempts are counted by the relay",
    ),
    (
        "get_address_header",
        "address header parsing is not provided; use get_first_named_header_value",
    ),
    (
        "from_header",
        "address header parsing is not provided; use get_first_named_header_value",
    ),
    (
        "to_header",
        "address header parsing is not provided; use get_first_named_header_value",
    ),
    ("get_all_headers", "use get_all_named_header_values"),
    (
        "recipient_list",
        "each message has one recipient: use recipient()",
    ),
    ("set_sender", "the envelope is fixed at reception"),
    ("set_recipient", "the envelope is fixed at reception"),
];

/// The first call of an unsupported message method in `source`, as
/// `file:line: …`. A call is `:name` then `(`, `{`, `'` or `"`, outside a
/// `--` comment.
pub fn scan(file: &str, source: &str) -> Result<(), String> {
    for (i, line) in source.lines().enumerate() {
        let code = line.split("--").next().unwrap_or("");
        for (name, instead) in MESSAGE_METHODS {
            let pattern = format!(":{name}");
            let called = code.match_indices(&pattern).any(|(at, _)| {
                let rest = code[at + pattern.len()..].trim_start();
                let ends_name = !code[at + pattern.len()..]
                    .starts_with(|c: char| c.is_alphanumeric() || c == '_');
                ends_name && rest.starts_with(['(', '{', '\'', '"'])
            });
            if called {
                return Err(format!(
                    "{file}:{}: message:{name}() is a KumoMTA method amqp-relay does not provide ({instead})",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// Code of a line: without its `--` comment, with the text of string
/// literals blanked (so `'kumo.x'` in a message is not a reference).
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                    out.push(c);
                    continue;
                }
                out.push(' ');
            }
            None if c == '-' && chars.peek() == Some(&'-') => break,
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// The first use of a `kumo.NAME` or `kumo.MODULE.NAME` that `provided`
/// says this relay lacks, as `file:line: …` (assignments to them are the
/// policy's own).
pub fn scan_kumo(
    file: &str,
    source: &str,
    provided: &dyn Fn(&str, Option<&str>) -> bool,
) -> Result<(), String> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    for (i, line) in source.lines().enumerate() {
        let code = code_of(line);
        for (at, _) in code.match_indices("kumo.") {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let rest = &code[at + 5..];
            let name = &rest[..ident(rest)];
            let after = &rest[name.len()..];
            let sub = after
                .strip_prefix('.')
                .map(|r| &r[..ident(r)])
                .filter(|s| !s.is_empty());
            let tail = after[sub.map_or(0, |s| s.len() + 1)..].trim_start();
            let assigned = tail.starts_with('=') && !tail.starts_with("==");
            if name.is_empty() || assigned || provided(name, sub) {
                continue;
            }
            let what = match sub {
                Some(sub) if provided(name, None) => format!("kumo.{name}.{sub}"),
                _ => format!("kumo.{name}"),
            };
            return Err(format!(
                "{file}:{}: {what} is a KumoMTA function amqp-relay does not provide \
                 (it relays to AMQP only: no SMTP delivery, DKIM, traffic shaping or other KumoMTA features)",
                i + 1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kumo_references_are_checked_outside_strings_and_comments() {
        let provided = |name: &str, sub: Option<&str>| {
            matches!(
                (name, sub),
                ("on" | "reject", None) | ("string", None | Some("split"))
            )
        };
        let src = "kumo.on('x', function()\n  local s = kumo.string.split('a', 'b')\n  -- kumo.dkim.rsa_sha256_signer {}\n  kumo.reject(500, 'kumo.dns.lookup failed')\n  local t = kumo.string.psl_domain(s)\nend)\n";
        let err = scan_kumo("p.lua", src, &provided).unwrap_err();
        assert!(
            err.starts_with("p.lua:5: kumo.string.psl_domain is a KumoMTA function"),
            "{err}"
        );
        let err = scan_kumo(
            "p.lua",
            "local d = kumo.dkim.rsa_sha256_signer {}",
            &provided,
        )
        .unwrap_err();
        assert!(err.starts_with("p.lua:1: kumo.dkim is"), "{err}");
        for fine in [
            "kumo.my_helper = function() end",
            "local x = 'generator.kumomta.internal'",
            "local kumo = require 'kumo'",
            "mykumo.thing()",
            "x.kumo.thing()",
            "local s = \"it's kumo.dns\"",
        ] {
            assert!(scan_kumo("p.lua", fine, &provided).is_ok(), "{fine}");
        }
    }

    #[test]
    fn calls_are_found_with_their_line_and_other_text_is_not() {
        let src = "local x = 1\n-- msg:dkim_sign(s) in a comment\nkumo.on('e', function(msg)\n  msg:dkim_sign { key = 'k' }\nend)\n";
        let err = scan("p.lua", src).unwrap_err();
        assert!(err.starts_with("p.lua:4: message:dkim_sign()"), "{err}");
        assert!(scan("p.lua", "msg:set_sender('a@b')").is_err());
        for fine in [
            "msg:dkim_signer()",
            "local s = 'set_due'",
            "t.set_due = 1",
            "msg:get_meta 'to_header'",
        ] {
            assert!(scan("p.lua", fine).is_ok(), "{fine}");
        }
    }
}
