//! Plain-text output: aligned tables for lists, `key: value` lines for one entity.

use serde_json::Value;

/// A table with a header row; columns padded to their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for r in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                if i + 1 < r.len() {
                    let pad = widths.get(i).copied().unwrap_or(0) - c.chars().count();
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a table cell: strings bare, `null` as `-`, lists comma-separated.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// One entity as `key: value` lines, nested objects and lists of objects as JSON.
pub fn fields(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return format!("{}\n", cell(v));
    };
    let width = obj.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, val) in obj {
        let shown = match val {
            Value::Object(_) => val.to_string(),
            Value::Array(a) if a.iter().any(Value::is_object) => val.to_string(),
            _ => cell(val),
        };
        out.push_str(&format!("{k:width$}  {shown}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["ID", "PLAN"]);
        t.row(vec!["a".into(), "gold".into()]);
        t.row(vec!["longer-id".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "ID         PLAN\na          gold\nlonger-id  -\n"
        );
    }

    #[test]
    fn cells() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!(1.5)), "1.5");
        assert_eq!(fields(&json!({"id": "x", "n": 2})), "id  x\nn   2\n");
    }
}
