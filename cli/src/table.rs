//! Text rendering: aligned tables, `key: value` blocks and JSON re-indentation.
//!
//! Owns: how output looks (cf style: lower-case headers, columns separated by two
//! spaces, no trailing whitespace).
//!
//! Must never: do I/O, know about the admin API's shapes, or fail — every function here
//! is pure and total, so the command modules can be tested by comparing strings.

/// Gap between table columns, as in cf's tables.
const COLUMN_GAP: &str = "  ";

/// Gap between the widest `key:` and its value in a key/value block, as in `cf app`.
const VALUE_GAP: &str = "   ";

/// Render `rows` under `headers` with every column left-aligned to its widest cell.
///
/// Rows shorter than the header are padded with empty cells; cells past the last header
/// are dropped. Widths count characters, not bytes, so `…` or non-ASCII names align.
/// The result ends with a newline; lines carry no trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<&str> = headers.to_vec();
    push_line(&mut out, &widths, &header);
    for row in rows {
        let cells: Vec<&str> = (0..headers.len())
            .map(|i| row.get(i).map_or("", String::as_str))
            .collect();
        push_line(&mut out, &widths, &cells);
    }
    out
}

fn push_line(out: &mut String, widths: &[usize], cells: &[&str]) {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push_str(COLUMN_GAP);
        }
        line.push_str(cell);
        let pad = width.saturating_sub(cell.chars().count());
        line.extend(std::iter::repeat_n(' ', pad));
    }
    // The last column is padded like the others above; trimming here keeps the rule
    // "no trailing whitespace" in one place (and empty trailing cells vanish too).
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Render `key: value` lines with the values aligned, like `cf target` and `cf app`.
pub fn render_pairs(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let line = format!("{label:<width$}{VALUE_GAP}{value}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Re-indent a valid JSON document with two spaces per level, keeping the keys in the
/// order they were received and every number and string exactly as written.
///
/// serde_json's own pretty printer would sort object keys (its `preserve_order` feature
/// is off in this workspace) and could reformat numbers; `--json` promises the API's
/// JSON as received. The input must already be valid JSON (the API client checks);
/// invalid input is re-indented on a best-effort basis, never rejected.
pub fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(s) = chars.next() {
                    out.push(s);
                    match s {
                        // An escaped character (including `\"`) never ends the string.
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                out.push(escaped);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while chars.peek().is_some_and(|n| is_json_space(*n)) {
                    chars.next();
                }
                out.push(c);
                if chars.peek() == Some(&close) {
                    // Empty containers stay on one line: `{}` and `[]`.
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if is_json_space(c) => {}
            c => out.push(c),
        }
    }
    out
}

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n("  ", depth));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn columns_align_with_two_spaces_and_no_trailing_space() {
        let out = render(
            &["host", "path", "app", "sites"],
            &[
                row(&["shop.apps.example.com", "", "a1", "lon* (2), nyc (3)"]),
                row(&["api.example.com", "/v2", "b22", "nyc (1)"]),
            ],
        );
        let want = "\
host                   path  app  sites
shop.apps.example.com        a1   lon* (2), nyc (3)
api.example.com        /v2   b22  nyc (1)
";
        assert_eq!(out, want);
        assert!(out.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let out = render(&["name", "id"], &[row(&["café", "x"]), row(&["ab", "y"])]);
        assert_eq!(out, "name  id\ncafé  x\nab    y\n");
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let out = render(&["a", "b"], &[row(&["1"]), row(&["2", "3", "extra"])]);
        assert_eq!(out, "a  b\n1\n2  3\n");
    }

    #[test]
    fn header_only_when_no_rows() {
        assert_eq!(render(&["site", "region"], &[]), "site  region\n");
    }

    #[test]
    fn pairs_align_values() {
        let out = render_pairs(&[
            ("name", "shop".to_owned()),
            ("requested state", "started".to_owned()),
            ("empty", String::new()),
        ]);
        assert_eq!(
            out,
            "name:              shop\nrequested state:   started\nempty:\n"
        );
    }

    #[test]
    fn pretty_json_keeps_key_order_and_literals() {
        let text = r#"{"z":1,"a":[1.50,{"k":"a \"q\" , : { ["},[],{}],"n":null,"big":18446744073709551615}"#;
        let want = r#"{
  "z": 1,
  "a": [
    1.50,
    {
      "k": "a \"q\" , : { ["
    },
    [],
    {}
  ],
  "n": null,
  "big": 18446744073709551615
}"#;
        assert_eq!(pretty_json(text), want);
    }

    #[test]
    fn pretty_json_ignores_incoming_whitespace() {
        let text = "{ \"a\" :\n [ 1 , 2 ] ,\r\n\t\"b\": { } }";
        assert_eq!(
            pretty_json(text),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn pretty_json_matches_serde_json_for_sorted_input() {
        let value = serde_json::json!({"a": [1, {"b": "c"}], "d": {"e": []}});
        let compact = value.to_string();
        let Ok(expected) = serde_json::to_string_pretty(&value) else {
            panic!("serialize");
        };
        assert_eq!(pretty_json(&compact), expected);
    }
}
