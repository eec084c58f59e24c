//! What each tenant (namespace) may have. Domains: a tenant must not
//! pre-claim or take over another's domain. No rules means any namespace may
//! claim any domain (one team per cluster); with rules, a namespace may claim
//! only the domains its patterns match, and a namespace without rules none.
//! Log records: a route's `logEvents` take the records of its own queues
//! only, unless its namespace is one the install names (the platform team's).

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ownership {
    /// Namespace → domain patterns: `example.com` (exactly), `*.example.com`
    /// (any subdomain, not the domain itself), or `*` (any domain).
    domains: BTreeMap<String, Vec<String>>,
    /// Namespaces whose routes' `logEvents` take every queue's records.
    all_log_records: Vec<String>,
}

impl Ownership {
    /// Routes of `namespaces` take the log records of every queue.
    pub fn with_all_log_records(mut self, namespaces: Vec<String>) -> Ownership {
        self.all_log_records = namespaces;
        self
    }

    /// Whether routes of `namespace` may take every queue's log records.
    pub fn takes_all_log_records(&self, namespace: &str) -> bool {
        self.all_log_records.iter().any(|n| n == namespace)
    }

    /// From the JSON the chart passes (`{"team-a": ["a.example", "*.a.example"]}`).
    pub fn parse(json: &str) -> Result<Ownership, String> {
        if json.trim().is_empty() {
            return Ok(Ownership::default());
        }
        let domains: BTreeMap<String, Vec<String>> =
            serde_json::from_str(json).map_err(|e| format!("domain ownership rules: {e}"))?;
        let o = Ownership {
            domains,
            all_log_records: Vec::new(),
        };
        for (ns, patterns) in &o.domains {
            for p in patterns {
                let rest = p.strip_prefix("*.").unwrap_or(p);
                if p != "*" && (rest.is_empty() || rest.contains('*')) {
                    return Err(format!(
                        "domain ownership rules: namespace {ns}: {p:?} is not a domain, *.domain or *"
                    ));
                }
            }
        }
        Ok(o)
    }

    /// `Err` names the rule that refuses `domain` to `namespace`.
    pub fn allows(&self, namespace: &str, domain: &str) -> Result<(), String> {
        if self.domains.is_empty() {
            return Ok(());
        }
        let domain = domain.to_ascii_lowercase();
        let Some(patterns) = self.domains.get(namespace) else {
            return Err(format!(
                "namespace {namespace} may claim no domain (it has no domain ownership rule)"
            ));
        };
        let matches = |p: &String| {
            let p = p.to_ascii_lowercase();
            p == "*"
                || p == domain
                || p.strip_prefix("*.")
                    .is_some_and(|suffix| domain.ends_with(&format!(".{suffix}")))
        };
        if patterns.iter().any(matches) {
            Ok(())
        } else {
            Err(format!(
                "namespace {namespace} may claim only {}; not {domain}",
                patterns.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let any = Ownership::default();
        assert!(any.allows("x", "anything.example").is_ok());
        let o =
            Ownership::parse(r#"{"team-a": ["a.example", "*.a.example"], "ops": ["*"]}"#).unwrap();
        assert!(o.allows("team-a", "A.example").is_ok());
        assert!(o.allows("team-a", "mail.a.example").is_ok());
        assert!(o.allows("team-a", "evila.example").is_err());
        let e = o.allows("team-a", "b.example").unwrap_err();
        assert!(
            e.contains("a.example, *.a.example") && e.contains("b.example"),
            "{e}"
        );
        assert!(o.allows("ops", "whatever").is_ok());
        assert!(
            o.allows("team-b", "b.example")
                .unwrap_err()
                .contains("no domain ownership rule")
        );
        for bad in [
            r#"{"x": ["*.*.a"]}"#,
            r#"{"x": ["*."]}"#,
            r#"{"x": "a"}"#,
            "[1]",
        ] {
            assert!(Ownership::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Ownership::parse("").unwrap(), Ownership::default());
    }
}
