//! Printing answers: `--json` prints the API's array as it came; otherwise an
//! aligned text table with a header line.

use serde_json::Value;

/// Prints `value` as pretty JSON.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The elements of a JSON array answer (an empty list for anything else).
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A field shown in a table cell: strings as they are, `-` for null or missing.
pub fn cell(v: &Value, key: &str) -> String {
    text(v.get(key).unwrap_or(&Value::Null))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) if a.is_empty() => "-".to_owned(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

/// Seconds written the config's way: `90s`, `15m`, `4h`, `1h30m`.
pub fn duration(v: &Value, key: &str) -> String {
    let Some(total) = v.get(key).and_then(Value::as_u64) else {
        return cell(v, key);
    };
    if total == 0 {
        return "0s".to_owned();
    }
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Aligned columns, two spaces apart, the last one not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(w.saturating_sub(c.chars().count())));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints a list answer as JSON or as a table built by `row`.
pub fn print_list(
    value: &Value,
    json: bool,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let rows: Vec<Vec<String>> = items(value).iter().map(row).collect();
    print!("{}", table(headers, &rows));
    Ok(())
}

/// A JSON array written one element at a time, so a list of any length is
/// never held whole: `[`, the elements one per line, `]`.
pub struct JsonArray<W: std::io::Write> {
    out: W,
    empty: bool,
}

impl<W: std::io::Write> JsonArray<W> {
    /// An array on `out`; nothing is written before the first element.
    pub fn new(out: W) -> JsonArray<W> {
        JsonArray { out, empty: true }
    }

    /// Writes one element.
    pub fn push(&mut self, v: &Value) -> anyhow::Result<()> {
        self.out.write_all(if self.empty { b"[\n  " } else { b",\n  " })?;
        self.empty = false;
        serde_json::to_writer(&mut self.out, v)?;
        Ok(())
    }

    /// Closes the array and flushes; answers the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.out.write_all(if self.empty { b"[]\n" } else { b"\n]\n" })?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Whether `e` is stdout closed by its reader (`portcullis audit | head`):
/// the reader has what it wanted, so that is no failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["ID", "USER", "STATE"],
            &[
                vec!["r1".into(), "alice".into(), "pending".into()],
                vec!["r22".into(), "bo".into(), "approved".into()],
            ],
        );
        assert_eq!(t, "ID   USER   STATE\nr1   alice  pending\nr22  bo     approved\n");
    }

    #[test]
    fn arrays_are_written_element_by_element() {
        let mut a = JsonArray::new(Vec::new());
        a.push(&json!({"a": 1})).expect("push");
        a.push(&json!("b")).expect("push");
        let text = String::from_utf8(a.finish().expect("finish")).expect("utf-8");
        assert_eq!(text, "[\n  {\"a\":1},\n  \"b\"\n]\n");
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed, json!([{"a": 1}, "b"]));
        let empty = JsonArray::new(Vec::new()).finish().expect("finish");
        assert_eq!(empty, b"[]\n");
    }

    #[test]
    fn durations_read_like_the_config() {
        let v = json!({"a": 5400, "b": 90, "c": 14400});
        assert_eq!(duration(&v, "a"), "1h30m");
        assert_eq!(duration(&v, "b"), "1m30s");
        assert_eq!(duration(&v, "c"), "4h");
    }
}
