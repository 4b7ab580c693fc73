//! An event's JSON read and edited in place, without building its whole tree.
//!
//! The rules select few values of an event, almost always under a handful of known members
//! (`$.data.actor.name`, `$.data.changes[...]`). Parsing the whole event into a tree and
//! writing it back out costs more than everything the rules themselves do, so:
//!
//! - [`Need`] is what the rules' paths can look at, as a trie of member names from the root:
//!   the longest run of `.name` segments a path starts with, the rest of the path taken whole;
//! - [`Pruned::read`] builds a tree holding only that (every member outside the trie left
//!   out), remembering where each member it kept sits in the bytes;
//! - the rules run on that tree with the real JSONPath evaluation: a path's nodes, and every
//!   value its filters read, lie under its name prefix (a path whose filters name the root `$`
//!   needs the whole event), so they select exactly what they would select on the whole event;
//! - [`Pruned::write_back`] splices the treated values' new JSON into the original bytes.
//!
//! The bytes are the normalized event (compact, no duplicated member: validation refuses
//! those); anything else (a duplicated member on the way, a value that cannot be found again)
//! makes [`Pruned::read`] or [`Pruned::write_back`] answer `None`, and the caller treats the
//! event on a whole tree instead.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use smallvec::SmallVec;

/// What the rules may read of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The value and everything under it.
    Whole,
    /// Only these members of an object (a value that is not an object is taken whole).
    Members(Vec<(String, Need)>),
}

impl Default for Need {
    fn default() -> Self {
        Need::Members(Vec::new())
    }
}

impl Need {
    /// Adds the member names `prefix` (from the root): the value they lead to, whole.
    pub fn add(&mut self, prefix: &[String]) {
        let Some((first, rest)) = prefix.split_first() else {
            *self = Need::Whole;
            return;
        };
        let Need::Members(members) = self else {
            return;
        };
        match members.iter_mut().find(|(name, _)| name == first) {
            Some((_, child)) => child.add(rest),
            None => {
                let mut child = Need::default();
                child.add(rest);
                members.push((first.clone(), child));
            }
        }
    }
}

/// The member names a JSONPath starts with (`$.data.actor` of `$.data.actor.name`), when every
/// node it selects and every value its filters read lie under them. An empty answer means the
/// whole event. Conservative: it stops at the first segment that is not a plain `.name`, and a
/// `$` anywhere after the root (an absolute query inside a filter) means the whole event.
pub fn name_prefix(path: &str) -> Vec<String> {
    let Some(mut rest) = path.strip_prefix('$') else {
        return Vec::new();
    };
    if rest.contains('$') {
        return Vec::new();
    }
    let mut names = Vec::new();
    while let Some(after_dot) = rest.strip_prefix('.') {
        let len = after_dot
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let (name, tail) = after_dot.split_at(len);
        // A shorthand name starts with a letter or `_`; a name followed by anything but another
        // segment (a non-ASCII name character, blank space) is not taken apart here.
        let starts_well = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let ends_well = tail.is_empty() || tail.starts_with('.') || tail.starts_with('[');
        if !starts_well || !ends_well {
            break;
        }
        names.push(name.to_owned());
        rest = tail;
    }
    names
}

/// The tree [`Need`] asks for, and where its members are in the bytes.
#[derive(Debug)]
pub struct Pruned {
    pub value: Value,
    spans: Spans,
}

/// Where a kept value sits in the bytes; for an object read member by member, its kept
/// members' too.
#[derive(Debug)]
struct Spans {
    range: Range<usize>,
    members: Vec<(String, Spans)>,
    /// Members asked for that the object does not have.
    absent: Vec<String>,
    /// Whether the object has at least one member (kept or not).
    nonempty: bool,
}

impl Pruned {
    /// The tree of `json` that `need` asks for; `None` when `json` is not an object without
    /// duplicated members on the way.
    pub fn read(json: &str, need: &Need) -> Option<Pruned> {
        let (value, spans) = prune(json, json, need)?;
        Some(Pruned { value, spans })
    }

    /// `json` with the values at `treated` (JSON pointers into [`Pruned::value`]) replaced by
    /// what the tree now holds there, and `data._privacy` set to the tree's when the tree has
    /// one. `None` when a value cannot be found in the bytes.
    pub fn write_back(&self, json: &str, treated: &[String], marker: &str) -> Option<Vec<u8>> {
        let mut sorted: Vec<&str> = treated.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut edits: Vec<(Range<usize>, String)> = Vec::with_capacity(sorted.len() + 1);
        let mut kept: SmallVec<[&str; 8]> = SmallVec::new();
        for pointer in sorted {
            // A value under one replaced as a whole goes with it.
            if kept.iter().any(|a| is_under(pointer, a)) {
                continue;
            }
            kept.push(pointer);
            let new = self.value.pointer(pointer)?;
            let range = self.locate(json, pointer)?;
            edits.push((range, serde_json::to_string(new).ok()?));
        }
        if let Some(m) = self.value.get("data").and_then(|d| d.get(marker)) {
            let data = self.spans.member("data")?;
            let text = serde_json::to_string(m).ok()?;
            let existing = match data.member(marker) {
                Some(s) => Some(s.range.clone()),
                None if data.absent.iter().any(|a| a == marker) => None,
                None => find_member(json.get(data.range.clone())?, marker)
                    .map(|raw| span(json, raw.get())),
            };
            match existing {
                Some(range) => edits.push((range, text)),
                None => {
                    let end = data.range.end.checked_sub(1)?;
                    let comma = if data.nonempty { "," } else { "" };
                    let key = serde_json::to_string(marker).ok()?;
                    edits.push((end..end, format!("{comma}{key}:{text}")));
                }
            }
        }
        splice(json, edits)
    }

    /// Where the value at `pointer` is in `json`: through the kept members' spans, then
    /// through the bytes of the value taken whole.
    fn locate(&self, json: &str, pointer: &str) -> Option<Range<usize>> {
        let mut spans = &self.spans;
        let mut tokens = pointer.split('/');
        if tokens.next() != Some("") {
            return None;
        }
        let mut tokens = tokens.peekable();
        while let Some(t) = tokens.peek() {
            match spans.member(&unescape(t)) {
                Some(s) => {
                    spans = s;
                    tokens.next();
                }
                None => break,
            }
        }
        let mut range = spans.range.clone();
        for t in tokens {
            let text = json.get(range.clone())?;
            let inner = match text.as_bytes().first() {
                Some(b'{') => find_member(text, &unescape(t))?,
                Some(b'[') => {
                    let i: usize = t.parse().ok()?;
                    *elements(text)?.get(i)?
                }
                _ => return None,
            };
            range = span(json, inner.get());
        }
        Some(range)
    }
}

impl Spans {
    fn member(&self, name: &str) -> Option<&Spans> {
        self.members
            .iter()
            .find_map(|(n, s)| (n == name).then_some(s))
    }
}

/// `json` with each range replaced by its text; `None` when two ranges overlap.
pub fn splice(json: &str, mut edits: Vec<(Range<usize>, String)>) -> Option<Vec<u8>> {
    edits.sort_by_key(|(r, _)| r.start);
    let grown: usize = edits.iter().map(|(_, t)| t.len()).sum();
    let mut out = Vec::with_capacity(json.len() + grown);
    let mut at = 0;
    for (range, text) in edits {
        if range.start < at {
            return None;
        }
        out.extend_from_slice(json.get(at..range.start)?.as_bytes());
        out.extend_from_slice(text.as_bytes());
        at = range.end;
    }
    out.extend_from_slice(json.get(at..)?.as_bytes());
    Some(out)
}

/// Every string value of `json` that starts with `prefix`: its JSON pointer and its byte
/// range, quotes included. `None` when `json` is not JSON, or one such string is written with
/// an escape (its bytes are not its text).
pub fn strings_starting_with(json: &str, prefix: &str) -> Option<Vec<(String, Range<usize>)>> {
    let mut walk = Walk {
        doc: json.as_ptr() as usize,
        prefix,
        path: String::new(),
        found: Vec::new(),
        escaped: false,
    };
    let mut de = serde_json::Deserializer::from_str(json);
    WalkSeed(&mut walk).deserialize(&mut de).ok()?;
    de.end().ok()?;
    (!walk.escaped).then_some(walk.found)
}

struct Walk<'p> {
    doc: usize,
    prefix: &'p str,
    path: String,
    found: Vec<(String, Range<usize>)>,
    escaped: bool,
}

struct WalkSeed<'w, 'p>(&'w mut Walk<'p>);

impl<'de> DeserializeSeed<'de> for WalkSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for WalkSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        if v.starts_with(self.0.prefix) {
            let start = (v.as_ptr() as usize - self.0.doc)
                .checked_sub(1)
                .ok_or_else(|| E::custom("string outside the document"))?;
            let end = start + v.len() + 2;
            self.0.found.push((self.0.path.clone(), start..end));
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v.starts_with(self.0.prefix) {
            self.0.escaped = true;
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let len = self.0.path.len();
            self.0.path.push('/');
            for c in key.chars() {
                match c {
                    '~' => self.0.path.push_str("~0"),
                    '/' => self.0.path.push_str("~1"),
                    c => self.0.path.push(c),
                }
            }
            map.next_value_seed(WalkSeed(&mut *self.0))?;
            self.0.path.truncate(len);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let len = self.0.path.len();
            let _ = write!(self.0.path, "/{i}");
            let more = seq.next_element_seed(WalkSeed(&mut *self.0))?.is_some();
            self.0.path.truncate(len);
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Whether `pointer` lies strictly under `ancestor`.
fn is_under(pointer: &str, ancestor: &str) -> bool {
    pointer
        .strip_prefix(ancestor)
        .is_some_and(|r| r.starts_with('/'))
}

/// A JSON pointer token's name (`~1` is `/`, `~0` is `~`).
fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// The byte range of `part` (a slice of `doc`) in `doc`.
pub fn span(doc: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - doc.as_ptr() as usize;
    start..start + part.len()
}

fn prune(doc: &str, text: &str, need: &Need) -> Option<(Value, Spans)> {
    let range = span(doc, text);
    let whole = |text: &str| {
        let value = serde_json::from_str(text).ok()?;
        Some((
            value,
            Spans {
                range: range.clone(),
                members: Vec::new(),
                absent: Vec::new(),
                nonempty: false,
            },
        ))
    };
    let Need::Members(wanted) = need else {
        return whole(text);
    };
    if !text.starts_with('{') {
        return whole(text);
    }
    let members = members(text)?;
    let mut map = Map::new();
    let mut kept = Vec::with_capacity(wanted.len());
    let mut absent = Vec::new();
    for (name, child) in wanted {
        let mut found = members.iter().filter(|(k, _)| k == name);
        let Some((_, raw)) = found.next() else {
            absent.push(name.clone());
            continue;
        };
        if found.next().is_some() {
            return None;
        }
        let (value, spans) = prune(doc, raw.get(), child)?;
        map.insert(name.clone(), value);
        kept.push((name.clone(), spans));
    }
    Some((
        Value::Object(map),
        Spans {
            range,
            members: kept,
            absent,
            nonempty: !members.is_empty(),
        },
    ))
}

pub type Members<'a> = SmallVec<[(Cow<'a, str>, &'a RawValue); 12]>;

/// An object's members, each value left unparsed.
pub fn members(text: &str) -> Option<Members<'_>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(MembersVisitor).ok()?;
    de.end().ok()?;
    Some(members)
}

/// The member `name` of the object `text`; `None` when it is absent or duplicated.
pub fn find_member<'a>(text: &'a str, name: &str) -> Option<&'a RawValue> {
    let members = members(text)?;
    let mut found = members.iter().filter(|(k, _)| k == name);
    let (_, raw) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some(*raw)
}

/// An array's elements, each left unparsed.
fn elements(text: &str) -> Option<SmallVec<[&RawValue; 8]>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let items = de.deserialize_seq(ElementsVisitor).ok()?;
    de.end().ok()?;
    Some(items)
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Members::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            out.push((key, map.next_value()?));
        }
        Ok(out)
    }
}

struct ElementsVisitor;

impl<'de> Visitor<'de> for ElementsVisitor {
    type Value = SmallVec<[&'de RawValue; 8]>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = SmallVec::new();
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(out)
    }
}

/// A member name, borrowed unless it holds an escape.
pub struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json_path::JsonPath;

    #[test]
    fn name_prefixes_stop_where_a_path_stops_being_plain_names() {
        let p = |s: &str| name_prefix(s);
        assert_eq!(p("$.data.actor.name"), ["data", "actor", "name"]);
        assert_eq!(
            p("$.data.changes[?@.field=='phone']['old','new']"),
            ["data", "changes"]
        );
        assert_eq!(p("$.data_2.x1"), ["data_2", "x1"]);
        assert!(p("$..name").is_empty());
        assert!(p("$[*]").is_empty());
        assert_eq!(p("$.data.*"), ["data"]);
        assert_eq!(p("$.data..name"), ["data"]);
        // A filter that reads the root needs the whole event.
        assert!(p("$.data.changes[?@.field==$.subject]").is_empty());
        // A non-ASCII or digit-led name, or blank space, is not taken apart.
        assert_eq!(p("$.data.naïve"), ["data"]);
        assert!(p("$.data .x").is_empty());
        assert_eq!(p("$.data.1x"), ["data"]);
    }

    #[test]
    fn needs_merge_and_a_whole_value_absorbs_its_members() {
        let mut need = Need::default();
        need.add(&["data".into(), "actor".into(), "name".into()]);
        need.add(&["data".into(), "changes".into()]);
        need.add(&["data".into(), "actor".into()]);
        need.add(&["data".into(), "actor".into(), "ip".into()]);
        assert_eq!(
            need,
            Need::Members(vec![(
                "data".into(),
                Need::Members(vec![
                    ("actor".into(), Need::Whole),
                    ("changes".into(), Need::Whole)
                ])
            )])
        );
    }

    fn need(paths: &[&str]) -> Need {
        let mut need = Need::default();
        for p in paths {
            need.add(&name_prefix(p));
        }
        need
    }

    /// The pruned tree selects the same values as the whole event, and the spliced bytes
    /// read as the whole event edited the same way.
    #[test]
    fn pruned_selection_and_splices_match_the_whole_tree() {
        let event = json!({
            "id": "e1", "type": "t",
            "data": {
                "actor": {"type": "user", "name": "Ann", "a/b~c": "x"},
                "changes": [{"field": "phone", "old": "1", "new": "2"}, {"field": "x", "old": 3}],
                "other": {"deep": [1, 2, {"name": "n"}]}
            }
        });
        let json = serde_json::to_string(&event).unwrap();
        let paths = [
            "$.data.actor.name",
            "$.data.changes[?@.field=='phone']['old','new']",
            "$.data.actor['a/b~c']",
            "$.data.other..name",
            "$.data.changes[1]",
            "$.data.missing.x",
        ];
        let pruned = Pruned::read(&json, &need(&paths)).unwrap();
        let mut whole = event.clone();
        let mut edited = pruned.value.clone();
        let mut treated = Vec::new();
        for p in paths {
            let path = JsonPath::parse(p).unwrap();
            let in_whole: Vec<String> = path
                .query_located(&whole)
                .locations()
                .map(|l| l.to_json_pointer())
                .collect();
            let in_pruned: Vec<String> = path
                .query_located(&edited)
                .locations()
                .map(|l| l.to_json_pointer())
                .collect();
            assert_eq!(in_whole, in_pruned, "{p}");
            for ptr in in_whole {
                *whole.pointer_mut(&ptr).unwrap() = json!("[x]");
                *edited.pointer_mut(&ptr).unwrap() = json!("[x]");
                treated.push(ptr);
            }
        }
        edited["data"]["_privacy"] = json!({"rules": ["r"]});
        whole["data"]["_privacy"] = json!({"rules": ["r"]});
        let pruned = Pruned {
            value: edited,
            spans: pruned.spans,
        };
        let out = pruned.write_back(&json, &treated, "_privacy").unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out, whole);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
    }

    #[test]
    fn a_marker_replaces_one_sent_in_place_and_fits_an_empty_data() {
        let need = need(&["$.data.x"]);
        let json = r#"{"data":{"_privacy":"forged","x":"v"},"id":"1"}"#;
        let mut p = Pruned::read(json, &need).unwrap();
        p.value["data"]["_privacy"] = json!({"rules": []});
        let out = p.write_back(json, &[], "_privacy").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"data":{"_privacy":{"rules":[]},"x":"v"},"id":"1"}"#
        );
        let json = r#"{"data":{},"id":"1"}"#;
        let mut p = Pruned::read(json, &need).unwrap();
        p.value["data"]["_privacy"] = json!({"rules": []});
        let out = p.write_back(json, &[], "_privacy").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"data":{"_privacy":{"rules":[]}},"id":"1"}"#
        );
    }

    #[test]
    fn duplicated_members_on_the_way_are_refused() {
        let need = need(&["$.data.x"]);
        assert!(Pruned::read(r#"{"data":{"x":1,"x":2}}"#, &need).is_none());
        assert!(Pruned::read(r#"{"data":{"x":1},"data":{"x":2}}"#, &need).is_none());
        assert!(Pruned::read(r#"[1]"#, &need).is_some_and(|p| p.value == json!([1])));
    }

    #[test]
    fn escaped_member_names_are_found() {
        let need = need(&["$.data.name"]);
        let json = r#"{"data":{"na\u006de":"Ann","n":1}}"#;
        let p = Pruned::read(json, &need).unwrap();
        assert_eq!(p.value, json!({"data": {"name": "Ann"}}));
        let mut edited = p.value.clone();
        edited["data"]["name"] = json!("[x]");
        let p = Pruned {
            value: edited,
            spans: p.spans,
        };
        let out = p
            .write_back(json, &["/data/name".into()], "_privacy")
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"data":{"na\u006de":"[x]","n":1}}"#
        );
    }

    #[test]
    fn strings_are_found_with_their_pointers_and_bytes() {
        let json = r#"{"a":"s:1","b":[1,{"c/~":"s:2","d":"x"}],"s:k":"t","e":{"f":["s:3"]}}"#;
        let found = strings_starting_with(json, "s:").unwrap();
        let got: Vec<(&str, &str)> = found
            .iter()
            .map(|(p, r)| (p.as_str(), &json[r.clone()]))
            .collect();
        assert_eq!(
            got,
            [
                ("/a", r#""s:1""#),
                ("/b/1/c~1~0", r#""s:2""#),
                ("/e/f/0", r#""s:3""#)
            ]
        );
        // Written with an escape, a string's bytes are not its text: not found in place.
        assert!(strings_starting_with(r#"{"a":"s\u003a1"}"#, "s:").is_none());
        assert!(strings_starting_with(r#"{"a":"#, "s:").is_none());
        let edits = found
            .into_iter()
            .map(|(_, r)| (r, "\"x\"".to_owned()))
            .collect();
        assert_eq!(
            std::str::from_utf8(&splice(json, edits).unwrap()).unwrap(),
            r#"{"a":"x","b":[1,{"c/~":"x","d":"x"}],"s:k":"t","e":{"f":["x"]}}"#
        );
    }

    #[test]
    fn a_value_under_one_replaced_whole_goes_with_it() {
        let need = need(&["$.data.c"]);
        let json = r#"{"data":{"c":[{"old":"1"}]}}"#;
        let p = Pruned::read(json, &need).unwrap();
        let mut edited = p.value.clone();
        edited["data"]["c"][0] = json!("[d]");
        let p = Pruned {
            value: edited,
            spans: p.spans,
        };
        let treated = ["/data/c/0/old".to_owned(), "/data/c/0".to_owned()];
        let out = p.write_back(json, &treated, "_privacy").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"data":{"c":["[d]"]}}"#
        );
    }
}
