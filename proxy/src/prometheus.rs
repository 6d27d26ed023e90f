//! Prometheus's text format (`text/plain; version=0.0.4`) from a prometheus-client registry:
//! what `promtool check metrics` and every scraper read.

use prometheus_client::{encoding::text::encode, registry::Registry};

/// `reg` in Prometheus's text format.
pub fn text(reg: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = encode(&mut out, reg) {
        tracing::warn!(error = %e, "metrics not encoded");
    }
    from_open_metrics(&out)
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`
/// and the text ends with `# EOF`; Prometheus's text format names the family `x_total` too
/// and has no end marker.
fn from_open_metrics(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_as_their_samples() {
        let om = "# HELP x_events Events.\n# TYPE x_events counter\nx_events_total{kind=\"a\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            super::from_open_metrics(om),
            "# HELP x_events_total Events.\n# TYPE x_events_total counter\nx_events_total{kind=\"a\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }
}
