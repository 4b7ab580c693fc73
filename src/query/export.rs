//! Streaming export: every row matching a filter, as NDJSON or CSV.
//!
//! The rows are read page after page over the same keyset as the paged API, each page a
//! statement of its own (so `query.statement_timeout` bounds every statement, not the whole
//! export), and written out as they arrive: memory holds one page whatever the size of the
//! result. When the client goes away the response body is dropped, and with it the stream:
//! no further page is read.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::params::{Cursor, Filter};
use super::sql;

/// Rows read per statement while exporting.
pub const EXPORT_PAGE: usize = 1000;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-ndjson`: one row object per line.
    Ndjson,
    /// `text/csv`: a header line with the column names, then one line per row; `details` is
    /// its JSON text.
    Csv,
}

impl Format {
    /// The format an `Accept` header asks for, if it asks for an export.
    pub fn from_accept(accept: &str) -> Option<Format> {
        accept.split(',').find_map(|part| {
            match part.split(';').next()?.trim().to_ascii_lowercase().as_str() {
                "application/x-ndjson" | "application/ndjson" => Some(Format::Ndjson),
                "text/csv" => Some(Format::Csv),
                _ => None,
            }
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

struct State {
    pool: PgPool,
    filter: Filter,
    after: Option<Cursor>,
    format: Format,
    header_written: bool,
    done: bool,
    /// What the reader may see of encrypted values.
    view: crate::privacy::read::View,
}

/// The export as a stream of chunks (one per page). A database error ends the stream with an
/// error, which aborts the response: a truncated export is never mistaken for a complete one.
pub fn stream(
    pool: PgPool,
    filter: Filter,
    after: Option<Cursor>,
    format: Format,
    view: crate::privacy::read::View,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let state = State {
        view,
        pool,
        filter,
        after,
        format,
        header_written: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let page = match sql::page(&st.pool, &st.filter, st.after.as_ref(), EXPORT_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                st.done = true;
                tracing::warn!(error = %e, "export aborted by a database error");
                let err = std::io::Error::other(format!("export aborted: {e}"));
                return Some((Err(err), st));
            }
        };
        st.done = page.next.is_none();
        st.after = page.next;
        let mut out = BytesMut::with_capacity(page.rows.len() * 512);
        for row in &page.rows {
            let row = st.view.row_text(row);
            let row = row.as_ref();
            match st.format {
                Format::Ndjson => {
                    out.put_slice(row.as_bytes());
                    out.put_u8(b'\n');
                }
                Format::Csv => {
                    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(row) else {
                        continue;
                    };
                    if !st.header_written {
                        csv_line(&mut out, obj.keys().map(|k| (k.as_str(), true)));
                        st.header_written = true;
                    }
                    csv_row(&mut out, &obj);
                }
            }
        }
        metrics::counter!("audit_query_exported_rows_total").increment(page.rows.len() as u64);
        Some((Ok(out.freeze()), st))
    })
}

fn csv_row(out: &mut BytesMut, obj: &Map<String, Value>) {
    // Only text can be a formula: a number (`-5`) or `details` (`{…}`) is written as it is.
    let cells: Vec<(String, bool)> = obj
        .values()
        .map(|v| match v {
            Value::Null => (String::new(), false),
            Value::String(s) => (s.clone(), true),
            other => (other.to_string(), false),
        })
        .collect();
    csv_line(out, cells.iter().map(|(c, text)| (c.as_str(), *text)));
}

/// Whether a spreadsheet would read the cell as a formula (OWASP's list: `=`, `+`, `-`, `@`,
/// TAB, CR). Every text column of a row is emitter-chosen, so an exported file opened by an
/// investigator must not run what an emitter wrote.
fn formula_like(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// One RFC 4180 line: a field with a comma, quote, CR or LF is quoted, quotes doubled. A text
/// field (`true` beside it) a spreadsheet would take for a formula is prefixed with `'` (shown as text, not evaluated)
/// and always quoted, so the prefix and the cell stay one field.
fn csv_line<'a>(out: &mut BytesMut, cells: impl Iterator<Item = (&'a str, bool)>) {
    for (i, (cell, text)) in cells.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        let formula = text && formula_like(cell);
        if formula || cell.contains([',', '"', '\r', '\n']) {
            out.put_u8(b'"');
            if formula {
                out.put_u8(b'\'');
            }
            out.put_slice(cell.replace('"', "\"\"").as_bytes());
            out.put_u8(b'"');
        } else {
            out.put_slice(cell.as_bytes());
        }
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_export_format() {
        assert_eq!(
            Format::from_accept("application/x-ndjson"),
            Some(Format::Ndjson)
        );
        assert_eq!(
            Format::from_accept("text/html, text/csv;q=0.9"),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_accept("application/json"), None);
        assert_eq!(Format::from_accept("*/*"), None);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let obj: Map<String, Value> = serde_json::from_str(
            r#"{"id":"a,b","reason":"say \"no\"","subject":null,"details":{"k":[1,2]},"n":"x"}"#,
        )
        .unwrap();
        let mut out = BytesMut::new();
        csv_row(&mut out, &obj);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "\"a,b\",\"say \"\"no\"\"\",,\"{\"\"k\"\":[1,2]}\",x\r\n"
        );
    }

    #[test]
    fn csv_neutralises_formulas() {
        let obj: Map<String, Value> = serde_json::from_str(
            r#"{"a":"=HYPERLINK(\"http://x\",\"y\")","b":"+1","c":"-2+3","d":"@SUM(A1)",
                "e":"\tx","f":"\r=1","g":"a=b","h":-5}"#,
        )
        .unwrap();
        let mut out = BytesMut::new();
        csv_row(&mut out, &obj);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",\"'+1\",\"'-2+3\",\"'@SUM(A1)\",\
             \"'\tx\",\"'\r=1\",a=b,-5\r\n"
        );
    }
}
