//! Helpers several modules' tests share (test builds only; imports nothing
//! of the crate, so no layer depends on it).

/// Asserts every metric name `wanted` picks out of the chart's alert rules
/// and dashboard is a family `encoded` (a registry in the text format)
/// declares, a counter's or histogram's suffixes (`_total`, `_bucket`, …)
/// included; `at_least` guards against a filter that picks nothing.
pub fn assert_chart_queries_exported(
    encoded: &str,
    wanted: impl Fn(&str) -> bool,
    at_least: usize,
) {
    let exported: Vec<&str> = encoded
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let chart = concat!(
        include_str!("../charts/amqp-relay/files/prometheus-rules.yaml"),
        include_str!("../charts/amqp-relay/files/dashboard.json")
    );
    let used: std::collections::BTreeSet<&str> = chart
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| wanted(w))
        .collect();
    assert!(used.len() >= at_least, "{used:?}");
    for name in used {
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            exported.contains(&base),
            "{name} is not exported: {exported:?}"
        );
    }
}
