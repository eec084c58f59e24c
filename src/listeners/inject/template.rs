//! MiniJinja as KumoMTA's injection API uses it, bounded so that a request
//! cannot make the relay loop or build without end.

use super::InjectError;
use minijinja::{Environment, Template};
use serde_json::{Map, Value};

/// MiniJinja's fuel for one recipient's rendering. Since 3.1 fuel is charged
/// per instruction and per 64 bytes of data the template makes (strings
/// built by `~`, `*`, filters, output), and sizes known up front are checked
/// before they are allocated, so this bounds memory as well as time: about
/// 32 MB of data made (measured peak 45 MB; 10 million allowed 640 MB and a
/// 176-byte template took 1,160 MB). A normal message needs a few thousand;
/// 20,000 templated lines fit.
const TEMPLATE_FUEL: u64 = 500_000;

/// Largest rendered message (KumoMTA's and this relay's SMTP default size limit).
pub const MAX_RENDERED: usize = 20 * 1024 * 1024;

/// An environment for one request's templates. Templates named `*.html`
/// are HTML-escaped, as in KumoMTA (its `html_body`).
/// Whether `s` holds template markup (`{{`, `{%` or `{#`); memchr's vector
/// search, as this runs over every injected body.
pub fn has_markup(s: &[u8]) -> bool {
    memchr::memchr_iter(b'{', s).any(|i| matches!(s.get(i + 1), Some(b'{' | b'%' | b'#')))
}

pub fn environment<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    // The message ends as the client wrote it (Jinja would drop a final newline).
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_fuel(Some(TEMPLATE_FUEL));
    // As KumoMTA: minijinja_contrib's filters and globals, date and time
    // formatting included (`pluralize`, `datetimeformat`, `now()`, …).
    minijinja_contrib::add_to_environment(&mut env);
    env
}

/// A part of the request: a compiled template, or text taken as it is
/// (`template_dialect: "Static"`).
pub enum Piece<'e, 's> {
    Jinja(Template<'e, 's>),
    Static(&'s str),
}

/// Compiles `source` unless `env` is `None` (Static); `field` names it in
/// the error (`content.html_body`).
pub fn compile<'e, 's>(
    env: Option<&'e Environment<'s>>,
    name: &'s str,
    source: &'s str,
    field: &str,
) -> Result<Piece<'e, 's>, InjectError> {
    let Some(env) = env else {
        return Ok(Piece::Static(source));
    };
    env.template_from_named_str(name, source)
        .map(Piece::Jinja)
        .map_err(|e| InjectError::Template(format!("{field}: {e:#}")))
}

/// The variables for one recipient: the request's substitutions, the
/// recipient's over them, then KumoMTA's predefined `email`, `name` and
/// `to_header` (the recipient as a `To:` value, e.g. `"John Smith"
/// <john.smith@example.com>`; KumoMTA 2026.04.09).
pub fn variables(
    global: &Map<String, Value>,
    own: &Map<String, Value>,
    email: &str,
    name: Option<&str>,
) -> minijinja::Value {
    let mut vars = global.clone();
    vars.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.insert("email".into(), Value::String(email.to_owned()));
    if let Some(name) = name {
        vars.insert("name".into(), Value::String(name.to_owned()));
    }
    vars.insert("to_header".into(), Value::String(mailbox(name, email)));
    minijinja::Value::from(minijinja::value::Serde(vars))
}

/// A mailbox as a header value: the name quoted (RFC 2047-encoded when not
/// ASCII) before the address in angle brackets, or the bare address.
pub fn mailbox(name: Option<&str>, email: &str) -> String {
    use mail_builder::headers::Header;
    let address: mail_builder::headers::address::Address = match name {
        Some(n) => (n, email).into(),
        None => email.into(),
    };
    let mut out = Vec::new();
    address.write_header(&mut out, "To: ".len());
    let text = String::from_utf8_lossy(&out);
    text.trim_end_matches("\r\n").to_owned()
}

/// Renders for one recipient; `budget` is what is left of [`MAX_RENDERED`]
/// for this recipient's message and shrinks by what was rendered.
pub fn render(
    piece: &Piece<'_, '_>,
    vars: &minijinja::Value,
    field: &str,
    email: &str,
    budget: &mut usize,
) -> Result<String, InjectError> {
    let text = match piece {
        Piece::Jinja(t) => t
            .render(vars)
            .map_err(|e| InjectError::Template(format!("{field} for {email}: {e:#}")))?,
        Piece::Static(s) => (*s).to_owned(),
    };
    if text.len() > *budget {
        return Err(InjectError::Template(format!(
            "{field} for {email}: the rendered message is {} bytes; at most {MAX_RENDERED}",
            MAX_RENDERED - *budget + text.len()
        )));
    }
    *budget -= text.len();
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::{has_markup, mailbox};

    #[test]
    fn markup_is_found_wherever_it_is() {
        for s in ["{{ x }}", "a {% if y %}", "{# c #}", "x{{", "{{"] {
            assert!(has_markup(s.as_bytes()), "{s}");
        }
        for s in ["", "{", "a { b } c", "x{", "{ {", "}}", "JSON {\"a\":1}"] {
            assert!(!has_markup(s.as_bytes()), "{s}");
        }
    }

    /// KumoMTA's docs (reference/template): "we include additional date/time
    /// formatting filters and globals via minijinja_contrib".
    #[test]
    fn minijinja_contribs_filters_and_globals_are_there() {
        let env = super::environment();
        let render = |src: &str| {
            env.render_str(src, minijinja::context! { n => 2, t => 1_700_000_000 })
                .unwrap()
        };
        assert_eq!(render("{{ n }} item{{ n|pluralize }}"), "2 items");
        assert_eq!(
            render("{{ t|datetimeformat(format='iso', tz='UTC') }}"),
            "2023-11-14T22:13:20+00:00"
        );
        assert_eq!(
            render("{{ t|dateformat(format='%Y-%m-%d', tz='UTC') }}"),
            "2023-11-14"
        );
        assert_eq!(render("{{ 1500|filesizeformat }}"), "1.5 kB");
        assert!(render("{{ now()|datetimeformat(format='%Y', tz='UTC') }}").starts_with("20"));
    }

    #[test]
    fn to_header_values_are_what_a_to_header_holds() {
        // KumoMTA's docs: "John Smith" <john.smith@mailbox-example.com>.
        assert_eq!(
            mailbox(Some("John Smith"), "john.smith@mailbox-example.com"),
            "\"John Smith\" <john.smith@mailbox-example.com>"
        );
        assert_eq!(mailbox(None, "a@example.com"), "<a@example.com>");
        let quoted = mailbox(Some("Lee, \"Ann\""), "ann@example.com");
        assert!(
            quoted.ends_with(" <ann@example.com>") && quoted.contains("\\\"Ann\\\""),
            "{quoted}"
        );
        let encoded = mailbox(Some("Zoë"), "zoe@example.com");
        assert!(
            encoded.starts_with("=?utf-8?") && !encoded.contains('ë'),
            "{encoded}"
        );
    }
}
