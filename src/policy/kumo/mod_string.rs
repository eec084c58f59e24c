//! `kumo.string`, as KumoMTA's reference documents it: plain (not Lua
//! pattern) splitting, trimming, replacing and prefix tests, header
//! wrapping, and MiniJinja templates (bounded as the inject API's are).

use mlua::{Lua, LuaSerdeExt, Table, Value};

/// MiniJinja instructions one `eval_template` may take.
const TEMPLATE_FUEL: u64 = 10_000_000;

fn list(lua: &Lua, items: impl Iterator<Item = impl AsRef<str>>) -> mlua::Result<Table> {
    lua.create_sequence_from(items.map(|s| s.as_ref().to_owned()))
}

fn splits(lua: &Lua, t: &Table) -> mlua::Result<()> {
    t.set(
        "split",
        lua.create_function(|lua, (s, pat): (String, String)| list(lua, s.split(pat.as_str())))?,
    )?;
    t.set(
        "rsplit",
        lua.create_function(|lua, (s, pat): (String, String)| list(lua, s.rsplit(pat.as_str())))?,
    )?;
    t.set(
        "splitn",
        lua.create_function(|lua, (s, n, pat): (String, usize, String)| {
            list(lua, s.splitn(n, pat.as_str()))
        })?,
    )?;
    t.set(
        "rsplitn",
        lua.create_function(|lua, (s, n, pat): (String, usize, String)| {
            list(lua, s.rsplitn(n, pat.as_str()))
        })?,
    )?;
    t.set(
        "split_whitespace",
        lua.create_function(|lua, s: String| list(lua, s.split_whitespace()))?,
    )?;
    t.set(
        "split_ascii_whitespace",
        lua.create_function(|lua, s: String| list(lua, s.split_ascii_whitespace()))?,
    )?;
    Ok(())
}

fn edits(lua: &Lua, t: &Table) -> mlua::Result<()> {
    t.set(
        "trim",
        lua.create_function(|_, s: String| Ok(s.trim().to_owned()))?,
    )?;
    t.set(
        "trim_start",
        lua.create_function(|_, s: String| Ok(s.trim_start().to_owned()))?,
    )?;
    t.set(
        "trim_end",
        lua.create_function(|_, s: String| Ok(s.trim_end().to_owned()))?,
    )?;
    t.set(
        "replace",
        lua.create_function(|_, (s, from, to): (String, String, String)| {
            Ok(s.replace(from.as_str(), &to))
        })?,
    )?;
    t.set(
        "replacen",
        lua.create_function(|_, (s, from, to, n): (String, String, String, usize)| {
            Ok(s.replacen(from.as_str(), &to, n))
        })?,
    )?;
    t.set(
        "starts_with",
        lua.create_function(|_, (s, p): (String, String)| Ok(s.starts_with(p.as_str())))?,
    )?;
    t.set(
        "ends_with",
        lua.create_function(|_, (s, p): (String, String)| Ok(s.ends_with(p.as_str())))?,
    )?;
    t.set(
        "wrap",
        lua.create_function(
            |_, (s, soft, hard): (String, Option<usize>, Option<usize>)| {
                Ok(wrap(&s, soft.unwrap_or(75), hard.unwrap_or(900)))
            },
        )?,
    )?;
    Ok(())
}

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    splits(lua, &t)?;
    edits(lua, &t)?;
    t.set(
        "eval_template",
        lua.create_function(|lua, (name, source, ctx): (String, String, Value)| {
            let ctx: serde_json::Value = lua.from_value(ctx)?;
            eval_template(&name, &source, ctx).map_err(mlua::Error::runtime)
        })?,
    )?;
    super::refuse_missing(lua, &t, "string")?;
    kumo.set("string", t)
}

fn eval_template(name: &str, source: &str, ctx: serde_json::Value) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    // KumoMTA's templates have minijinja_contrib's filters and globals.
    minijinja_contrib::add_to_environment(&mut env);
    let err = |e: minijinja::Error| format!("kumo.string.eval_template({name:?}): {e:#}");
    let t = env.template_from_named_str(name, source).map_err(err)?;
    t.render(minijinja::value::Serde(ctx)).map_err(err)
}

/// KumoMTA's header wrapping: break at whitespace to keep lines under
/// `soft`, hard-break words longer than `hard`; breaks are CRLF TAB.
fn wrap(text: &str, soft: usize, hard: usize) -> String {
    let hard = hard.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word;
        if !line.is_empty() && line.len() + 1 + word.len() > soft {
            lines.push(std::mem::take(&mut line));
        }
        while line.len() + word.len() > hard {
            let room = hard - line.len();
            let cut = (0..=room)
                .rev()
                .find(|&i| word.is_char_boundary(i))
                .unwrap_or(0);
            if cut == 0 && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            // Room for less than one character: take one anyway.
            let cut = if cut == 0 {
                word.char_indices().nth(1).map_or(word.len(), |(i, _)| i)
            } else {
                cut
            };
            line.push_str(&word[..cut]);
            lines.push(std::mem::take(&mut line));
            word = &word[cut..];
        }
        if !word.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines.join("\r\n\t")
}

#[cfg(test)]
mod tests {
    use crate::policy::kumo::test_lua as lua;

    /// The examples of KumoMTA's `kumo.string` reference pages.
    #[test]
    fn as_kumomta_documents_them() {
        lua()
            .load(
                r#"
            assert(kumo.json_encode(kumo.string.split('Mary had a little lamb', ' '))
              == '["Mary","had","a","little","lamb"]')
            assert(kumo.json_encode(kumo.string.rsplit('Mary had a little lamb', ' '))
              == '["lamb","little","a","had","Mary"]')
            assert(kumo.json_encode(kumo.string.splitn('Mary had a little lamb', 3, ' '))
              == '["Mary","had","a little lamb"]')
            assert(kumo.json_encode(kumo.string.rsplitn('Mary had a little lamb', 3, ' '))
              == '["lamb","little","Mary had a"]')
            assert(kumo.json_encode(kumo.string.split_whitespace(' A  b\tc\n'))
              == '["A","b","c"]')
            assert(kumo.string.replace('foo foo 123 foo', 'foo', 'new') == 'new new 123 new')
            assert(kumo.string.replacen('foo foo 123 foo', 'foo', 'new', 2) == 'new new 123 foo')
            assert(kumo.string.replace('a.b', '.', '%') == 'a%b', 'plain, not a Lua pattern')
            assert(kumo.string.trim('  x  ') == 'x')
            assert(kumo.string.trim_start('  x  ') == 'x  ')
            assert(kumo.string.trim_end('  x  ') == '  x')
            assert(kumo.string.starts_with('hello world', 'hello'))
            assert(not kumo.string.ends_with('hello world', 'hello'))
            assert(kumo.string.wrap 'hello' == 'hello')
            assert(kumo.string.wrap(string.rep('A', 200), 75, 100)
              == string.rep('A', 100) .. '\r\n\t' .. string.rep('A', 100))
            assert(kumo.string.wrap(string.rep('hello there ', 10), 75, 100)
              == 'hello there hello there hello there hello there hello there hello there\r\n'
              .. '\thello there hello there hello there hello there')
            assert(kumo.string.eval_template('example.json', [[{{name}}]], { name = 'John' })
              == '"John"')
            assert(kumo.string.eval_template('x.html', [[<b>{{n}}</b>]], { n = '<&>' })
              == '<b>&lt;&amp;&gt;</b>')
            assert(kumo.string.eval_template('t.txt', [[{% for k in ks %}{{k}}{% endfor %}]], { ks = {1, 2} })
              == '12')
            "#,
            )
            .set_name("doc")
            .exec()
            .unwrap();
    }

    #[test]
    fn a_bad_template_is_named_and_bounded() {
        let lua = lua();
        let err = lua
            .load("return kumo.string.eval_template('t', '{{ oops', {})")
            .eval::<String>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kumo.string.eval_template(\"t\"): syntax error"),
            "{err}"
        );
        let err = lua
            .load("return kumo.string.eval_template('t', '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', {})")
            .eval::<String>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("fuel"), "{err}");
    }
}
