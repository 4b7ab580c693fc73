//! What makes a `source` suspicious: it reads as one thing and is another.
//!
//! A principal's source patterns (`auth.tokens_file`) compare the `source` as written, and so
//! does every investigator's filter. Two kinds of value defeat that:
//! - a dot-segment (`/registry/../payments`): a pattern `/registry/*` matches it, while any
//!   reader that resolves the path (RFC 3986 §5.2.4) sees `/payments`;
//! - a Unicode bidirectional control (U+202E RIGHT-TO-LEFT OVERRIDE and the like): the value is
//!   displayed in another order than it is compared in.
//!
//! `strict` refuses such a `source` (422, naming `source`); `compatible` keeps it and counts it
//! ([`Rule::SourceDotSegment`], [`Rule::SourceBidiControl`]).

use super::rules::Rule;

/// The bidirectional formatting characters: LRE, RLE, PDF, LRO, RLO (U+202A–U+202E), LRI, RLI,
/// FSI, PDI (U+2066–U+2069), the marks LRM, RLM (U+200E, U+200F) and ALM (U+061C).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// True when the path of `source` (before any `?` or `#`) has a segment that is `.` or `..`,
/// `.` also spelled `%2E`: `/a/../b`, `/a/./b`, `/a/..`, `../a`, `..`.
pub fn has_dot_segment(source: &str) -> bool {
    let path = source.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let mut dots = 0;
        let mut rest = segment.as_bytes();
        while !rest.is_empty() {
            match rest {
                [b'.', tail @ ..] => rest = tail,
                [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
                _ => return false,
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

/// The problems of `source`, as the `compatible` rules that let them through.
pub fn suspicious(source: &str) -> impl Iterator<Item = Rule> {
    let dot = has_dot_segment(source).then_some(Rule::SourceDotSegment);
    let bidi = source
        .chars()
        .any(is_bidi_control)
        .then_some(Rule::SourceBidiControl);
    dot.into_iter().chain(bidi)
}

/// The 422 message `strict` gives for `rule` (one of [`suspicious`]'s).
pub fn message(rule: Rule, source: &str) -> String {
    match rule {
        Rule::SourceBidiControl => {
            let found: Vec<String> = source
                .chars()
                .filter(|c| is_bidi_control(*c))
                .map(|c| format!("U+{:04X}", u32::from(c)))
                .collect();
            format!(
                "contains a Unicode bidirectional control character ({}), which makes it display \
                 as another value than it is; remove it",
                found.join(", ")
            )
        }
        _ => "contains a dot-segment (\".\" or \"..\" between slashes), which names another \
              path than it reads as and would pass a source pattern meant for the first; send \
              the resolved path"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments() {
        for s in [
            "/registry/../payments",
            "/registry/./a",
            "/registry/..",
            "/registry/.",
            "../registry",
            "..",
            ".",
            "https://h/a/%2e%2E/b",
            "https://h/a/.%2e/b?x",
            "urn:x/../y",
        ] {
            assert!(has_dot_segment(s), "{s}");
        }
        for s in [
            "/registry/a",
            "urn:openg2p:registry",
            "https://registry.example/.well-known/x",
            "/a/.../b",
            "/a/..b/c",
            "/a/b..",
            "/a/b?x=/../y",
            "/a/b#/../c",
            "",
            "//",
        ] {
            assert!(!has_dot_segment(s), "{s}");
        }
    }

    #[test]
    fn bidi_controls() {
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let s = format!("/registry{c}/a");
            assert_eq!(
                suspicious(&s).collect::<Vec<_>>(),
                [Rule::SourceBidiControl]
            );
            assert!(
                message(Rule::SourceBidiControl, &s).contains(&format!("U+{:04X}", u32::from(c)))
            );
        }
        for c in [
            '\u{2029}', '\u{202F}', '\u{2065}', '\u{206A}', '\u{200D}', 'é',
        ] {
            assert_eq!(suspicious(&format!("/a{c}")).count(), 0, "{c:?}");
        }
        assert_eq!(
            suspicious("/a/../\u{202E}b").collect::<Vec<_>>(),
            [Rule::SourceDotSegment, Rule::SourceBidiControl]
        );
    }
}
