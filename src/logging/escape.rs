//! Control characters escaped in every field of a text-format log line.
//!
//! Log values carry text chosen by others: a key name an emitter put in an event ends up in a
//! dead-letter reason, a header or a broker's message in an error. Written raw, a newline
//! starts a line that looks like one of ours (`2026-… INFO forged`), an ANSI sequence rewrites
//! what the terminal shows, a bidi control reorders it. [`EscapeFields`] wraps the field
//! formatter so that every value (the message included) reaches the line with those characters
//! written as escapes (`\n`, `\r`, `\t`, `\u{1b}`, `\u{202e}`): one event, one line, shown as sent.
//! JSON-format logs need no such layer: serde_json escapes every C0 control and the line
//! structure cannot be broken.

use std::borrow::Cow;
use std::error::Error;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// Whether `c` is escaped: every C0 and C1 control and DEL (`char::is_control`), the Unicode
/// line and paragraph separators, and the bidi formatting controls (ALM, LRM, RLM,
/// LRE…RLO, LRI…PDI).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every character [`needs_escape`] names written as an escape; borrowed when there
/// is none (the usual case).
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.contains(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    // Writing to a String cannot fail.
    let _ = Escaping(&mut out).write_str(s);
    Cow::Owned(out)
}

/// A `fmt::Write` that escapes what passes through it.
struct Escaping<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if needs_escape(c) {
                self.0.write_str(&s[start..i])?;
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                }
                start = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[start..])
    }
}

/// A value whose `Debug` output (which is what the field formatter writes, `Display` for a
/// `%value` field or the message) is escaped.
struct Escaped<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{:?}", self.0)
    }
}

/// An error and its sources, `: `-joined, as one value.
struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// The field formatter of text-format logs: tracing's own with every value escaped. Install
/// with `tracing_subscriber::fmt().fmt_fields(EscapeFields::default())`.
#[derive(Debug, Default)]
pub struct EscapeFields(DefaultFields);

impl<'w> MakeVisitor<Writer<'w>> for EscapeFields {
    type Visitor = EscapeVisitor<<DefaultFields as MakeVisitor<Writer<'w>>>::Visitor>;

    fn make_visitor(&self, target: Writer<'w>) -> Self::Visitor {
        EscapeVisitor(self.0.make_visitor(target))
    }
}

/// The visitor of [`EscapeFields`]: escapes each value, then hands it to the inner visitor.
#[derive(Debug)]
pub struct EscapeVisitor<V>(V);

impl<V: Visit> Visit for EscapeVisitor<V> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &Escaped(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.record_str(field, &escape_controls(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        // The inner visitor would write the sources itself, unescaped: the whole chain is
        // written here as one value instead.
        self.0
            .record_debug(field, &Escaped(&format_args!("{}", Chain(value))));
    }

    // Numbers and booleans cannot carry a control character: passed on as they are.
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.record_i64(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.record_u64(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.0.record_i128(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.0.record_u128(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.record_f64(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.record_bool(field, value);
    }
}

impl<V: VisitOutput<fmt::Result>> VisitOutput<fmt::Result> for EscapeVisitor<V> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl<V: VisitFmt> VisitFmt for EscapeVisitor<V> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// What an emitter can put in a key name: a forged log line and a colour change.
    const FORGED: &str =
        "k\n2026-12-07T10:00:00.000000Z  INFO audit_manager: forged\u{1b}[31mred\u{202e}";

    fn text_log(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapeFields::default())
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        out.text()
    }

    #[test]
    fn a_forged_line_stays_in_its_field() {
        let err = io::Error::other(FORGED);
        let out = text_log(|| {
            tracing::warn!(reason = %FORGED, debug = ?FORGED, plain = FORGED, error = &err as &(dyn Error + 'static), "sent {FORGED}");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202e}'),
            "{out}"
        );
        assert!(
            out.contains(r"reason=k\n2026-12-07T10:00:00.000000Z  INFO audit_manager: forged\u{1b}[31mred\u{202e}"),
            "{out}"
        );
        assert!(out.contains(r"sent k\n2026"), "{out}");
        assert!(out.contains(r"error=k\n2026"), "{out}");
    }

    #[test]
    fn escaping_leaves_ordinary_text_alone() {
        assert!(matches!(escape_controls("café ✓ \\n"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\tb\r\n\u{85}\u{2067}"),
            r"a\tb\r\n\u{85}\u{2067}"
        );
    }

    #[test]
    fn json_logs_escape_control_characters_already() {
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(reason = %FORGED, "sent {FORGED}");
        });
        let out = out.text();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        let line: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(line["reason"], FORGED);
    }
}
