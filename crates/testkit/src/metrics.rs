//! Reading Prometheus / OpenMetrics text.

/// Labels of one sample line, in order.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        rest = &after[end.min(after.len())..];
    }
    out
}

/// Sum of every sample of metric `name` (exact sample name, e.g. `tollgate_requests_total`)
/// whose labels include all of `labels`; `None` when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_s, value_s) = if let Some(r) = rest.strip_prefix('{') {
            let Some(close) = r.rfind('}') else { continue };
            (&r[..close], r[close + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue;
        };
        let have = parse_labels(label_s);
        let all = labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
        if !all {
            continue;
        }
        let Some(v) = value_s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *found.get_or_insert(0.0) += v;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples_by_labels() {
        let t = "# TYPE x counter\n\
                 tollgate_requests_total{tenant=\"t\",route=\"a\",status_class=\"2xx\"} 3\n\
                 tollgate_requests_total{tenant=\"t\",route=\"b\",status_class=\"2xx\"} 4\n\
                 tollgate_config_generation 2\n";
        assert_eq!(
            metric_value(t, "tollgate_requests_total", &[("route", "a")]),
            Some(3.0)
        );
        assert_eq!(
            metric_value(t, "tollgate_requests_total", &[("status_class", "2xx")]),
            Some(7.0)
        );
        assert_eq!(
            metric_value(t, "tollgate_requests_total", &[("route", "c")]),
            None
        );
        assert_eq!(
            metric_value(t, "tollgate_config_generation", &[]),
            Some(2.0)
        );
        assert_eq!(metric_value(t, "tollgate_config", &[]), None);
    }
}
