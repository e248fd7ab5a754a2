//! Finds the line of a key path in block-style YAML, so that semantic errors found after
//! deserialization (an unknown upstream, a clashing route) still point at a line.
//!
//! yaml_serde keeps no spans for values, so this walks the text by indentation. It understands
//! block mappings and block sequences, which is how configs are written; for anything else
//! (flow style, anchors) it returns `None` and the error carries only the key path.

/// One step of a key path: `tenants.retail.routes[2].path` → `tenants`, `retail`, `routes`, `[2]`, `path`.
#[derive(Debug, PartialEq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']')?;
            out.push(Seg::Index(stripped[..end].parse().ok()?));
            rest = &stripped[end + 1..];
        }
    }
    Some(out)
}

struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

fn content_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let trimmed = raw.trim_start_matches(' ');
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                return None;
            }
            Some(Line {
                no: i + 1,
                indent: raw.len() - trimmed.len(),
                text: trimmed,
            })
        })
        .collect()
}

fn key_of(text: &str) -> Option<&str> {
    let colon = text.find(':')?;
    let key = text[..colon].trim();
    let key = key.trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then_some(key)
}

/// Indent at which a line's first key sits: `- path: x` at column 4 holds `path` at column 6.
fn key_indent<'a>(l: &Line<'a>) -> (usize, &'a str) {
    match l.text.strip_prefix("- ") {
        Some(rest) => (
            l.indent + 2 + (rest.len() - rest.trim_start().len()),
            rest.trim_start(),
        ),
        None => (l.indent, l.text),
    }
}

/// 1-based line of the key path, if it can be found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let segs = segments(path)?;
    if segs.is_empty() {
        return None;
    }
    let lines = content_lines(text);
    // The current node's scope is lines[start..end]; its children are indented past `parent`.
    let (mut start, mut end, mut parent) = (0usize, lines.len(), None::<usize>);
    let mut found = None;
    for seg in &segs {
        let deeper = |i: usize| parent.is_none_or(|p| i > p);
        let (hit, node_indent) = match seg {
            Seg::Key(k) => {
                let child = lines[start..end]
                    .iter()
                    .map(|l| key_indent(l).0)
                    .filter(|i| deeper(*i))
                    .min()?;
                let i = (start..end).find(|&i| {
                    let (ind, t) = key_indent(&lines[i]);
                    ind == child && key_of(t) == Some(*k)
                })?;
                (i, child)
            }
            Seg::Index(n) => {
                let dashes: Vec<usize> = (start..end)
                    .filter(|&i| lines[i].text.starts_with('-') && deeper(lines[i].indent))
                    .collect();
                let child = dashes.iter().map(|&i| lines[i].indent).min()?;
                let i = *dashes
                    .iter()
                    .filter(|&&i| lines[i].indent == child)
                    .nth(*n)?;
                (i, child)
            }
        };
        found = Some(lines[hit].no);
        let mut j = hit + 1;
        while j < end && lines[j].indent > node_indent {
            j += 1;
        }
        // A sequence item's own line holds its first key, so it stays in scope.
        start = if matches!(seg, Seg::Index(_)) {
            hit
        } else {
            hit + 1
        };
        end = j;
        parent = Some(node_indent);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# comment
listeners:
  public:
    addr: 127.0.0.1:8080
tenants:
  retail:
    apis:
      accounts:
        upstream: a
        routes:
          - path: /v2/accounts/{id}
            methods: [GET]
          - path: /v1/x
            upstream: missing
";

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        assert_eq!(line_of(DOC, "listeners.public.addr"), Some(4));
        assert_eq!(
            line_of(DOC, "tenants.retail.apis.accounts.upstream"),
            Some(9)
        );
        assert_eq!(
            line_of(DOC, "tenants.retail.apis.accounts.routes[0].path"),
            Some(11)
        );
        assert_eq!(
            line_of(DOC, "tenants.retail.apis.accounts.routes[1]"),
            Some(13)
        );
        assert_eq!(
            line_of(DOC, "tenants.retail.apis.accounts.routes[1].upstream"),
            Some(14)
        );
        assert_eq!(
            line_of(DOC, "tenants.retail.apis.accounts.routes[0].methods"),
            Some(12)
        );
    }

    #[test]
    fn unknown_paths_have_no_line() {
        assert_eq!(line_of(DOC, "tenants.wholesale"), None);
        assert_eq!(line_of(DOC, "tenants.retail.apis.accounts.routes[5]"), None);
        assert_eq!(line_of(DOC, ""), None);
    }
}
