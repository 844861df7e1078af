//! Reading the recorder's current values back, for the status page: the
//! page shows the same numbers `/metrics` exports, so it reads them from the
//! one recorder instead of counting a second time beside it.
//!
//! The Prometheus text exposition is the only read API the exporter has;
//! this parses the plain `name{labels} value` lines of it (histogram
//! buckets and comments are skipped: the page uses counters and gauges).

use metrics_exporter_prometheus::PrometheusHandle;

/// One series' current value.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub name: String,
    /// Label pairs as exported, in the exporter's order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl MetricValue {
    /// The value of label `key`, if the series has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every counter and gauge series the recorder holds right now.
pub fn current(handle: &PrometheusHandle) -> Vec<MetricValue> {
    parse(&crate::ops::metrics::render(handle))
}

/// The series of a Prometheus text exposition (comments, histogram
/// buckets, sums and counts, and lines that do not parse are skipped).
pub fn parse(text: &str) -> Vec<MetricValue> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .filter(|m| {
            !(m.name.ends_with("_bucket") || m.name.ends_with("_sum") || m.name.ends_with("_count"))
        })
        .collect()
}

fn parse_line(line: &str) -> Option<MetricValue> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(MetricValue {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"q\""` into pairs, undoing the exposition's escapes.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_and_gauges_with_escaped_labels_and_skips_histograms() {
        let text = "# HELP x y\n# TYPE sluice_changes_received_total counter\n\
            sluice_changes_received_total{table=\"public.a\",op=\"insert\"} 12\n\
            sluice_replication_lag_seconds 0.5\n\
            sluice_bulk_request_duration_seconds_bucket{le=\"0.005\"} 3\n\
            sluice_bulk_request_duration_seconds_sum 0.2\n\
            odd{table=\"we \\\"quote\\\", comma\"} 1e3\n";
        let v = parse(text);
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(v[0].name, "sluice_changes_received_total");
        assert_eq!(v[0].label("table"), Some("public.a"));
        assert_eq!(v[0].label("op"), Some("insert"));
        assert_eq!(v[0].value, 12.0);
        assert_eq!(v[1].labels, vec![]);
        assert_eq!(v[1].value, 0.5);
        assert_eq!(v[2].label("table"), Some("we \"quote\", comma"));
        assert_eq!(v[2].value, 1000.0);
    }
}
