//! Structured-mode validation over the emitter's bytes, without building a tree.
//!
//! Most events are valid as sent and need at most a default appended (`id`, `time`,
//! `datacontenttype`, `data.actor.type`, and in `compatible` mode `specversion`). For those,
//! [`Incoming::parse`] reads only the attributes validation looks at, borrowing them from the
//! body, and skims everything else for what [`parse_json`] refuses (a NUL character, a
//! duplicated key) without keeping any of it. [`Incoming::normalize`] then stores the emitter's
//! bytes with insignificant whitespace removed, the verified `authtype`/`authid` and the
//! defaults appended at the end of their object: key for key and value for value the event the
//! tree path stores, with each string and number spelled as the emitter spelled it.
//!
//! Everything else takes the tree path ([`parse_json`], then [`authcontext::apply`] and
//! [`normalize`]), which finds and names every problem and makes every rewrite: an invalid,
//! empty or `null` attribute, a value over its length cap
//! ([`INDEXED_CAPS`](super::INDEXED_CAPS)), a `source` `compatible` counts as suspicious, a
//! `time` that `compatible` rewrites, `data_base64`, an emitter-sent
//! `authtype`/`authid`/`authclaims`, a problem found while skimming, nesting of [`MAX_DEPTH`]
//! levels or more. The fuzz targets check the two paths against each other on
//! every input.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::ValidationMode;
use super::authcontext::{self, AuthContext};
use super::json::{JsonError, parse_json};
use super::rules::{Normalizations, Rule};
use super::table::{self, AsSent, DEFAULT_ACTOR_TYPE, DEFAULT_CONTENT_TYPE, Field, Seen};
use super::time::parse_time;
use super::validate::{Limits, NormalizedEvent, Rejection, check_skew, new_event_id, normalize};

/// Nesting (of objects and arrays, the event itself being 1) at which skimming gives up: an
/// event nested this deep takes the tree path, where serde_json's own limit applies.
pub const MAX_DEPTH: usize = 64;

/// One structured-mode event, parsed as far as validation needs.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// Valid as sent but for defaults to append: the body and what was read from it.
    Borrowed(Borrowed<'a>),
    /// Everything else, parsed into a tree.
    Tree(Value),
}

impl<'a> Incoming<'a> {
    /// Reads one event from its JSON bytes: borrowed when the event needs only appended
    /// defaults in `mode`, else parsed by [`parse_json`] (whose errors are returned).
    pub fn parse(body: &'a [u8], mode: ValidationMode) -> Result<Incoming<'a>, JsonError> {
        match skim(body, mode) {
            Some(event) => Ok(Incoming::Borrowed(event)),
            None => parse_json(body).map(Incoming::Tree),
        }
    }

    /// The event's `source`, when it is a string (validation refuses anything else).
    pub fn source(&self) -> Option<&str> {
        match self {
            Incoming::Borrowed(b) => Some(&b.source),
            Incoming::Tree(v) => v.get("source").and_then(Value::as_str),
        }
    }

    /// Sets the verified `authtype`/`authid` (see [`authcontext`]), validates and normalizes:
    /// the same outcome as [`authcontext::apply`] followed by [`normalize`].
    pub fn normalize(
        self,
        ctx: Option<AuthContext<'_>>,
        now: DateTime<Utc>,
        limits: &Limits,
    ) -> Result<NormalizedEvent, Rejection> {
        match self {
            Incoming::Borrowed(b) => b.normalize(ctx, now, limits),
            Incoming::Tree(mut value) => {
                authcontext::apply(&mut value, ctx);
                normalize(value, now, limits)
            }
        }
    }
}

/// An event valid as sent, read without a tree.
#[derive(Debug)]
pub struct Borrowed<'a> {
    body: &'a [u8],
    /// `specversion` is absent (`compatible` only): `"1.0"` is appended.
    specversion_missing: bool,
    /// `None`: absent, a generated one is appended.
    id: Option<Cow<'a, str>>,
    source: Cow<'a, str>,
    subject: Option<Cow<'a, str>>,
    /// As sent and parsed; `None`: absent, the ingest time is appended.
    time: Option<(Cow<'a, str>, DateTime<FixedOffset>)>,
    datacontenttype_missing: bool,
    actor_id: Cow<'a, str>,
    /// Where the actor object's closing brace is, when its `type` is to be appended.
    actor_type_at: Option<usize>,
}

impl Borrowed<'_> {
    fn normalize(
        self,
        ctx: Option<AuthContext<'_>>,
        now: DateTime<Utc>,
        limits: &Limits,
    ) -> Result<NormalizedEvent, Rejection> {
        let mut rules = Normalizations::default();
        if self.specversion_missing {
            rules.add(Rule::SpecversionMissing);
        }
        if let Some((raw, t)) = &self.time
            && let Some(problem) = check_skew(raw, *t, now, limits.max_future_skew)
        {
            // Everything else is valid, so this is the only problem (as on the tree path).
            match limits.mode {
                ValidationMode::Compatible => rules.add(Rule::TimeFuture),
                ValidationMode::Strict => return Err(Rejection::TimeInFuture(problem)),
            }
        }
        let (id_sent, time_sent) = (self.id.is_some(), self.time.is_some());
        let id = match self.id {
            Some(id) => id.into_owned(),
            None => new_event_id(now),
        };
        let time = match self.time {
            Some((raw, _)) => raw.into_owned(),
            None => now.to_rfc3339_opts(SecondsFormat::Millis, true),
        };

        let body = self.body;
        let end = body
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(0);
        let mut json = Vec::with_capacity(body.len() + 160);
        let mut rest = &body[..end];
        if let Some(at) = self.actor_type_at {
            push_compact(&mut json, &body[..at]);
            push_member(&mut json, "type", DEFAULT_ACTOR_TYPE);
            rest = &body[at..end];
        }
        push_compact(&mut json, rest);
        // The order in which the tree path appends: authcontext, then validation's defaults.
        if let Some(ctx) = ctx {
            push_member(&mut json, "authtype", ctx.auth_type);
            push_member(&mut json, "authid", ctx.auth_id);
        }
        if self.specversion_missing {
            push_member(&mut json, "specversion", "1.0");
        }
        if !id_sent {
            push_member(&mut json, "id", &id);
        }
        if !time_sent {
            push_member(&mut json, "time", &time);
        }
        if self.datacontenttype_missing {
            push_member(&mut json, "datacontenttype", DEFAULT_CONTENT_TYPE);
        }
        json.push(b'}');
        if json.len() > limits.max_event_bytes {
            return Err(Rejection::TooLarge {
                index: None,
                size: json.len(),
                limit: limits.max_event_bytes,
            });
        }
        let key = match self.subject {
            Some(subject) => subject.into_owned(),
            None => self.actor_id.into_owned(),
        };
        Ok(NormalizedEvent {
            id,
            time,
            key: Some(key),
            json,
            normalized: rules,
        })
    }
}

/// Appends `,"key":"value"` (the object is never empty where a member is appended).
fn push_member(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Appends `json` (valid JSON, or a piece of it cut outside any string) without the whitespace
/// between tokens; strings are copied as they are.
fn push_compact(out: &mut Vec<u8>, json: &[u8]) {
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let mut i = 0;
    while i < json.len() {
        // Up to the next string, dropping whitespace: short runs such as `":` and `,"`.
        let start = i;
        while i < json.len() && json[i] != b'"' && !is_space(json[i]) {
            i += 1;
        }
        out.extend_from_slice(&json[start..i]);
        match json.get(i) {
            None => break,
            Some(&b'"') => {}
            Some(_) => {
                i += 1;
                continue;
            }
        }
        // A string: to its closing quote, the first one not escaped.
        let start = i;
        i += 1;
        loop {
            match json
                .get(i..)
                .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
            {
                Some(at) if json[i + at] == b'"' => {
                    i += at + 1;
                    break;
                }
                // A backslash and the character it escapes.
                Some(at) => i += at + 2,
                None => {
                    i = json.len();
                    break;
                }
            }
        }
        out.extend_from_slice(&json[start..i]);
    }
}

/// Reads `body` as an event that needs nothing but appended defaults; `None` when it is
/// anything else (or not JSON at all): the tree path decides.
fn skim(body: &[u8], mode: ValidationMode) -> Option<Borrowed<'_>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = de.deserialize_map(TopVisitor).ok()?;
    de.end().ok()?;
    top.lean(body, mode)
}

/// Why skimming stopped; never shown (the tree path finds the problem and names it).
fn stop<E: de::Error>() -> E {
    E::custom("takes the tree path")
}

/// Stops at a NUL character in an unescaped string or key (only an escape can put one there:
/// a string borrowed from the body never holds one).
fn no_nul<E: de::Error>(v: &str) -> Result<(), E> {
    if v.contains('\0') {
        return Err(stop());
    }
    Ok(())
}

/// An attribute as far as validation needs it.
#[derive(Debug, Default)]
enum Attr<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
}

impl<'a> Attr<'a> {
    /// The attribute as the rule table takes it.
    fn seen(&self) -> Seen<'_> {
        match self {
            Attr::Absent => Seen::Absent,
            Attr::Null => Seen::Null,
            Attr::Str(s) => Seen::Str(s),
        }
    }

    /// The string, if it is one.
    fn into_str(self) -> Option<Cow<'a, str>> {
        match self {
            Attr::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// What storing `attr` as sent needs in `mode` by the table's `field`; `None` when the tree
/// validator has to see it.
fn as_sent(field: &Field, attr: &Attr<'_>, mode: ValidationMode) -> Option<AsSent> {
    match field.as_sent(attr.seen(), mode) {
        AsSent::Tree => None,
        other => Some(other),
    }
}

/// Reads one attribute: a string or `null`. Anything else stops: no known attribute takes the
/// borrowed path with another type.
struct AttrSeed;

impl<'de> DeserializeSeed<'de> for AttrSeed {
    type Value = Attr<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Attr<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AttrSeed {
    type Value = Attr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Attr<'de>, E> {
        Ok(Attr::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Attr<'de>, E> {
        no_nul(v)?;
        Ok(Attr::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<Attr<'de>, E> {
        Ok(Attr::Null)
    }
}

/// Goes over a value at `depth` keeping nothing, stopping at a NUL character, a duplicated key
/// or nesting beyond [`MAX_DEPTH`].
#[derive(Clone, Copy)]
struct Skim {
    depth: usize,
}

impl Skim {
    fn enter<E: de::Error>(self) -> Result<Skim, E> {
        if self.depth >= MAX_DEPTH {
            return Err(stop());
        }
        Ok(Skim {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Skim {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skim {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        no_nul(v)
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        let mut keys = Keys::default();
        while next_key(&mut map, &mut keys)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object key, borrowed unless it holds escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        no_nul(v)?;
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// The keys of one object seen so far: a list on the stack while short, a set beyond.
#[derive(Default)]
struct Keys<'a> {
    list: SmallVec<[Cow<'a, str>; LIST_MAX]>,
    /// Every key once the object has more than [`LIST_MAX`] (the list is then empty for good).
    set: HashSet<Cow<'a, str>>,
}

/// Keys of one object kept in a list (without allocating) before a set takes over.
const LIST_MAX: usize = 16;

impl<'a> Keys<'a> {
    /// Stops at a key seen before, however many keys came between the two.
    fn insert<E: de::Error>(&mut self, key: Cow<'a, str>) -> Result<(), E> {
        // The set, once it took over, holds every key: the list must never be refilled,
        // or a key would be checked against only the keys after the move.
        if self.set.is_empty() {
            if self.list.contains(&key) {
                return Err(stop());
            }
            if self.list.len() < LIST_MAX {
                self.list.push(key);
                return Ok(());
            }
            self.set.reserve(2 * LIST_MAX);
            self.set.extend(self.list.drain(..));
        }
        if !self.set.insert(key) {
            return Err(stop());
        }
        Ok(())
    }
}

/// The next key of an object whose keys so far are `keys`; a key given twice stops. (Cloning
/// the key is free unless it holds escapes.)
fn next_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    keys: &mut Keys<'de>,
) -> Result<Option<Cow<'de, str>>, A::Error> {
    let Some(key) = map.next_key_seed(KeySeed)? else {
        return Ok(None);
    };
    keys.insert(key.clone())?;
    Ok(Some(key))
}

/// The event object's attributes.
#[derive(Debug, Default)]
struct Top<'a> {
    specversion: Attr<'a>,
    id: Attr<'a>,
    source: Attr<'a>,
    r#type: Attr<'a>,
    subject: Attr<'a>,
    /// As sent and parsed (RFC 3339, what `table::TIME` keeps as sent): read once.
    time: Option<(Cow<'a, str>, DateTime<FixedOffset>)>,
    datacontenttype: Attr<'a>,
    traceparent: Attr<'a>,
    data: Option<Data<'a>>,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        // The event is at depth 1, its members at 2.
        const DEPTH: usize = 2;
        let mut top = Top::default();
        let mut keys = Keys::default();
        while let Some(key) = next_key(&mut map, &mut keys)? {
            let slot = match key.as_ref() {
                "specversion" => &mut top.specversion,
                "id" => &mut top.id,
                "source" => &mut top.source,
                "type" => &mut top.r#type,
                "subject" => &mut top.subject,
                "time" => {
                    // Not RFC 3339 (as reference-era emitters send it): rewritten by the tree
                    // path, so stop here rather than skim all of the event first.
                    top.time = match map.next_value_seed(AttrSeed)? {
                        Attr::Str(s) => Some(parse_time(&s).map(|t| (s, t)).ok_or_else(stop)?),
                        _ => return Err(stop()),
                    };
                    continue;
                }
                "datacontenttype" => &mut top.datacontenttype,
                "traceparent" => &mut top.traceparent,
                "data" => {
                    top.data = Some(map.next_value_seed(DataSeed)?);
                    continue;
                }
                // The tree path removes or counts these: stop before skimming the rest.
                "data_base64" | "authtype" | "authid" | "authclaims" => return Err(stop()),
                _ => {
                    map.next_value_seed(Skim { depth: DEPTH })?;
                    continue;
                }
            };
            // What the tree path rewrites stops here too (a `null` attribute, as reference-era
            // emitters send them): an event that takes the tree path should not pay for
            // skimming all of it first. `lean` checks the rest.
            match map.next_value_seed(AttrSeed)? {
                Attr::Str(s) => *slot = Attr::Str(s),
                _ => return Err(stop()),
            }
        }
        Ok(top)
    }
}

impl<'a> Top<'a> {
    /// The event, if it takes the borrowed path in `mode`: every attribute kept as sent or
    /// given an appended default, as the rule table says (anything else is named, counted or
    /// rewritten by the tree validator).
    fn lean(self, body: &'a [u8], mode: ValidationMode) -> Option<Borrowed<'a>> {
        let specversion_missing =
            as_sent(&table::SPECVERSION, &self.specversion, mode)? == AsSent::Appended;
        as_sent(&table::ID, &self.id, mode)?;
        as_sent(&table::SOURCE, &self.source, mode)?;
        as_sent(&table::TYPE, &self.r#type, mode)?;
        as_sent(&table::SUBJECT, &self.subject, mode)?;
        if self.time.is_none() {
            as_sent(&table::TIME, &Attr::Absent, mode)?;
        }
        let datacontenttype_missing =
            as_sent(&table::DATACONTENTTYPE, &self.datacontenttype, mode)? == AsSent::Appended;
        as_sent(&table::TRACEPARENT, &self.traceparent, mode)?;
        let data = self.data?;
        let actor = data.actor?;
        as_sent(&table::ACTION, &data.action, mode)?;
        as_sent(&table::OUTCOME, &data.outcome, mode)?;
        if let Some(resource) = &data.resource {
            as_sent(&table::RESOURCE_TYPE, &resource.r#type, mode)?;
            as_sent(&table::RESOURCE_ID, &resource.id, mode)?;
        }
        as_sent(&table::REASON, &data.reason, mode)?;
        as_sent(&table::ACTOR_NAME, &actor.name, mode)?;
        as_sent(&table::ACTOR_IP, &actor.ip, mode)?;
        as_sent(&table::ACTOR_SESSION_ID, &actor.session_id, mode)?;
        as_sent(&table::ACTOR_ID, &actor.id, mode)?;
        let actor_type_at = match as_sent(&table::ACTOR_TYPE, &actor.r#type, mode)? {
            AsSent::Appended => {
                let raw = actor.raw.as_bytes();
                let start = raw.as_ptr() as usize - body.as_ptr() as usize;
                Some(start + raw.len() - 1)
            }
            _ => None,
        };
        Some(Borrowed {
            body,
            specversion_missing,
            id: self.id.into_str(),
            source: self.source.into_str()?,
            subject: self.subject.into_str(),
            time: self.time,
            datacontenttype_missing,
            actor_id: actor.id.into_str()?,
            actor_type_at,
        })
    }
}

/// `data`: read only when it is an object (anything else stops).
#[derive(Debug, Default)]
struct Data<'a> {
    /// `None`: absent.
    actor: Option<Actor<'a>>,
    action: Attr<'a>,
    outcome: Attr<'a>,
    /// `None`: absent or `null`.
    resource: Option<Resource<'a>>,
    reason: Attr<'a>,
}

struct DataSeed;

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Data<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Data<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed {
    type Value = Data<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data<'de>, A::Error> {
        // `data` is at depth 2, its members at 3.
        const DEPTH: usize = 3;
        let mut data = Data::default();
        let mut keys = Keys::default();
        while let Some(key) = next_key(&mut map, &mut keys)? {
            match key.as_ref() {
                "actor" => {
                    // Kept as its slice of the body: `type` is appended at its end.
                    let raw: &'de RawValue = map.next_value()?;
                    data.actor = Some(read_actor(raw)?);
                }
                "resource" => {
                    data.resource = map.next_value_seed(ResourceSeed)?;
                }
                "action" => data.action = map.next_value_seed(AttrSeed)?,
                "outcome" => data.outcome = map.next_value_seed(AttrSeed)?,
                "reason" => data.reason = map.next_value_seed(AttrSeed)?,
                _ => {
                    map.next_value_seed(Skim { depth: DEPTH })?;
                }
            }
        }
        Ok(data)
    }
}

/// `data.actor`, an object.
#[derive(Debug, Default)]
struct Actor<'a> {
    /// Its slice of the body.
    raw: &'a str,
    r#type: Attr<'a>,
    id: Attr<'a>,
    name: Attr<'a>,
    ip: Attr<'a>,
    session_id: Attr<'a>,
}

/// Reads the actor from its slice of the body; anything but an object stops.
fn read_actor<E: de::Error>(raw: &RawValue) -> Result<Actor<'_>, E> {
    let text = raw.get();
    let mut actor = Actor {
        raw: text,
        ..Actor::default()
    };
    serde_json::Deserializer::from_str(text)
        .deserialize_map(ActorVisitor { actor: &mut actor })
        .map_err(|_| stop::<E>())?;
    Ok(actor)
}

struct ActorVisitor<'r, 'a> {
    actor: &'r mut Actor<'a>,
}

impl<'de> Visitor<'de> for ActorVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // The actor is at depth 3, its members at 4.
        const DEPTH: usize = 4;
        let actor = self.actor;
        let mut keys = Keys::default();
        while let Some(key) = next_key(&mut map, &mut keys)? {
            let slot = match key.as_ref() {
                "type" => &mut actor.r#type,
                "id" => &mut actor.id,
                "name" => &mut actor.name,
                "ip" => &mut actor.ip,
                "session_id" => &mut actor.session_id,
                "roles" => {
                    map.next_value_seed(RolesSeed)?;
                    continue;
                }
                _ => {
                    map.next_value_seed(Skim { depth: DEPTH })?;
                    continue;
                }
            };
            *slot = map.next_value_seed(AttrSeed)?;
        }
        Ok(())
    }
}

/// `data.actor.roles`: `null` or an array of strings; anything else stops.
struct RolesSeed;

impl<'de> DeserializeSeed<'de> for RolesSeed {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RolesSeed {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings or null")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(role) = seq.next_element_seed(AttrSeed)? {
            if !matches!(role, Attr::Str(_)) {
                return Err(stop());
            }
        }
        Ok(())
    }
}

/// `data.resource`, an object.
#[derive(Debug, Default)]
struct Resource<'a> {
    r#type: Attr<'a>,
    id: Attr<'a>,
}

/// `data.resource`: `None` for `null`, its `type` and `id` for an object; anything else stops.
struct ResourceSeed;

impl<'de> DeserializeSeed<'de> for ResourceSeed {
    type Value = Option<Resource<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResourceSeed {
    type Value = Option<Resource<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The resource is at depth 3, its members at 4.
        const DEPTH: usize = 4;
        let mut keys = Keys::default();
        let mut resource = Resource::default();
        while let Some(key) = next_key(&mut map, &mut keys)? {
            match key.as_ref() {
                "type" => resource.r#type = map.next_value_seed(AttrSeed)?,
                "id" => resource.id = map.next_value_seed(AttrSeed)?,
                _ => {
                    map.next_value_seed(Skim { depth: DEPTH })?;
                }
            }
        }
        Ok(Some(resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
    }

    fn limits(mode: ValidationMode) -> Limits {
        Limits {
            mode,
            ..Limits::default()
        }
    }

    const AUTH: AuthContext<'static> = AuthContext {
        auth_type: "api_key",
        auth_id: "registry \"prod\"",
    };

    /// A complete event, spelled with whitespace, escapes and numbers serde_json writes
    /// differently.
    const FULL: &str = r#"{ "specversion" : "1.0", "id": "e-1", "source": "urn:registry",
        "type": "beneficiary.updated", "subject": "b-7", "time": "2026-11-24T08:59:00.250+01:00",
        "datacontenttype": "application/json",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "data": {"actor": {"type": "user", "id": "u\u00e9", "name": null, "roles": ["a", "b"],
                           "ip": "10.0.0.1", "extra": {"k": [1.50, 2e3, -0]}},
                 "action": "update", "outcome": "success",
                 "resource": {"type": "beneficiary", "id": null, "x": "a \"quoted\" \/ value"},
                 "reason": "a reason", "changes": [{"field": "name", "new": "N\t"}]},
        "ext": 12.0 }"#;

    fn borrowed(body: &str, mode: ValidationMode) -> bool {
        matches!(
            Incoming::parse(body.as_bytes(), mode),
            Ok(Incoming::Borrowed(_))
        )
    }

    /// Both paths on one body in one mode: the tree path's event and the borrowed path's.
    fn both(
        body: &str,
        mode: ValidationMode,
        ctx: Option<AuthContext<'_>>,
    ) -> (
        Result<NormalizedEvent, Rejection>,
        Result<NormalizedEvent, Rejection>,
    ) {
        let mut tree = parse_json(body.as_bytes()).unwrap();
        authcontext::apply(&mut tree, ctx);
        let tree = normalize(tree, now(), &limits(mode));
        let ours =
            Incoming::parse(body.as_bytes(), mode)
                .unwrap()
                .normalize(ctx, now(), &limits(mode));
        (tree, ours)
    }

    /// The stored event as a value, written out in its key order; a generated id masked.
    fn stored(e: &NormalizedEvent, generated_id: bool) -> String {
        let mut v: serde_json::Map<String, Value> = serde_json::from_slice(&e.json).unwrap();
        if generated_id {
            v.insert("id".into(), Value::from("<generated>"));
        }
        Value::Object(v).to_string()
    }

    fn same(body: &str, mode: ValidationMode, ctx: Option<AuthContext<'_>>, generated_id: bool) {
        let (tree, ours) = both(body, mode, ctx);
        let (tree, ours) = (tree.unwrap(), ours.unwrap());
        assert_eq!(stored(&tree, generated_id), stored(&ours, generated_id));
        if !generated_id {
            assert_eq!(tree.id, ours.id);
        }
        assert_eq!(
            (&tree.time, &tree.key, &tree.normalized),
            (&ours.time, &ours.key, &ours.normalized)
        );
    }

    /// `n` members `"p<from>":<from>,` … (each followed by a comma).
    fn padding(from: usize, n: usize) -> String {
        (from..from + n)
            .map(|i| format!(r#""p{i}":{i},"#))
            .collect()
    }

    #[test]
    fn a_complete_event_keeps_the_emitters_bytes_without_whitespace() {
        let body = FULL;
        for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
            assert!(borrowed(body, mode), "{mode:?}");
            same(body, mode, None, false);
            same(body, mode, Some(AUTH), false);
        }
        let (_, ours) = both(body, ValidationMode::Strict, None);
        let ours = ours.unwrap();
        let json = String::from_utf8(ours.json).unwrap();
        assert!(
            json.starts_with(r#"{"specversion":"1.0","id":"e-1","source""#),
            "{json}"
        );
        // Strings and numbers as the emitter spelled them; whitespace inside strings kept.
        for kept in [
            r#""u\u00e9""#,
            r#"[1.50,2e3,-0]"#,
            r#""a \"quoted\" \/ value""#,
            r#""a reason""#,
            r#""ext":12.0}"#,
        ] {
            assert!(json.contains(kept), "{kept} in {json}");
        }
        assert_eq!(
            (ours.id.as_str(), ours.key.as_deref()),
            ("e-1", Some("b-7"))
        );
        assert_eq!(ours.time, "2026-11-24T08:59:00.250+01:00");
    }

    #[test]
    fn defaults_are_appended_where_the_tree_path_appends_them() {
        let body = r#"{"source":"urn:s","type":"t","data":{"actor":{"id":"u-1"},
            "action":"login","outcome":"success"}}"#;
        assert!(borrowed(body, ValidationMode::Compatible));
        // `strict` requires specversion: the tree path names the problem.
        assert!(!borrowed(body, ValidationMode::Strict));
        same(body, ValidationMode::Compatible, None, true);
        same(body, ValidationMode::Compatible, Some(AUTH), true);
        let (_, ours) = both(body, ValidationMode::Compatible, Some(AUTH));
        let ours = ours.unwrap();
        let json = String::from_utf8(ours.json).unwrap();
        let expected = format!(
            r#"{{"source":"urn:s","type":"t","data":{{"actor":{{"id":"u-1","type":"user"}},"action":"login","outcome":"success"}},"authtype":"api_key","authid":"registry \"prod\"","specversion":"1.0","id":"{}","time":"2026-11-24T09:00:00.000Z","datacontenttype":"application/json"}}"#,
            ours.id
        );
        assert_eq!(json, expected);
        assert_eq!(ours.key.as_deref(), Some("u-1"));
        assert!(ours.normalized.contains(Rule::SpecversionMissing));
    }

    #[test]
    fn what_needs_a_rewrite_or_a_problem_named_takes_the_tree_path() {
        let good = r#"{"specversion":"1.0","source":"s","type":"t","time":"2026-11-24T08:00:00Z",
            "data":{"actor":{"id":"u"},"action":"a","outcome":"success"}}"#;
        let compatible = ValidationMode::Compatible;
        assert!(borrowed(good, compatible));
        let deep = format!(
            r#"{{"specversion":"1.0","source":"s","type":"t","data":{{"actor":{{"id":"u"}},"action":"a","outcome":"success","x":{}{}}}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let cases = [
            good.replace(r#""source":"s""#, r#""source":"""#),
            good.replace(r#""source":"s""#, r#""source":null"#),
            good.replace(r#""source":"s""#, r#""source":7"#),
            good.replace(r#""type":"t""#, r#""type":"t","subject":null"#),
            good.replace(r#""type":"t""#, r#""type":"t","traceparent":"x""#),
            good.replace(
                r#""type":"t""#,
                r#""type":"t","datacontenttype":"text/plain""#,
            ),
            good.replace(r#""type":"t""#, r#""type":"t","data_base64":"AA==""#),
            good.replace(r#""type":"t""#, r#""type":"t","authtype":"user""#),
            good.replace(r#""type":"t""#, r#""type":"t","authclaims":"x""#),
            good.replace(r#""type":"t""#, r#""type":"t","id":"""#),
            good.replace("08:00:00Z", "08:00:00"),
            good.replace(r#""time":"2026-11-24T08:00:00Z""#, r#""time":1700000000"#),
            good.replace(r#""id":"u""#, r#""id":"u","type":"robot""#),
            good.replace(r#""id":"u""#, r#""id":"u","roles":["a",1]"#),
            good.replace(r#""id":"u""#, r#""id":"u","name":5"#),
            good.replace(r#""outcome":"success""#, r#""outcome":"maybe""#),
            good.replace(r#""action":"a""#, r#""action":"a","resource":{"id":"r"}"#),
            good.replace(r#""action":"a""#, r#""action":"a","reason":[]"#),
            good.replace(r#""actor":{"id":"u"}"#, r#""actor":"u""#),
            good.replace(r#""action":"a""#, r#""action":"a","x":{"k":1,"k":2}"#),
            good.replace(r#""action":"a""#, r#""action":"a","x":["\u0000"]"#),
            good.replace(r#""action":"a""#, r#""action":"a","x":{"\u0000":1}"#),
            good.replace(r#""action":"a""#, r#""action":"a","action":"b""#),
            good.replace(r#""source":"s""#, r#""source":"s","\u0073ource":"s""#),
            good.replace(r#""source":"s""#, r#""source":"/a/../b""#),
            good.replace(r#""source":"s""#, r#""source":"s\u202e""#),
            good.replace(
                r#""source":"s""#,
                &format!(r#""source":"{}""#, "s".repeat(1025)),
            ),
            good.replace(r#""id":"u""#, &format!(r#""id":"{}""#, "u".repeat(1025))),
            good.replace(
                r#""action":"a""#,
                &format!(
                    r#""action":"a","resource":{{"type":"r","id":"{}"}}"#,
                    "i".repeat(1025)
                ),
            ),
            deep,
        ];
        for body in &cases {
            assert!(!borrowed(body, compatible), "{body}");
        }
        // Many keys: a duplicate is found wherever the two keys are, in every object.
        for (at, object) in [
            ("top", "{"),
            ("data", "\"data\":{"),
            ("actor", "\"actor\":{"),
        ] {
            for n in [0, 1, 15, 16, 17, 18, 20, 33, 34, 40] {
                let many: String = (0..n).map(|i| format!(r#""k{i}":{i},"#)).collect();
                let unique = good.replacen(object, &format!("{object}{many}"), 1);
                assert!(borrowed(&unique, compatible), "{at} {n}: {unique}");
                for first in 0..n {
                    let dup = good.replacen(object, &format!("{object}{many}\"k{first}\":0,"), 1);
                    assert!(!borrowed(&dup, compatible), "{at} {n} k{first}: {dup}");
                }
            }
        }
    }

    /// `{…16 other keys…, "outcome":"failure", …, "outcome":"success"}` and the like: refused
    /// with the tree path's error whatever the count of keys before and between the two.
    #[test]
    fn a_duplicate_after_many_keys_is_the_tree_paths_error() {
        let base = r#"{"specversion":"1.0","source":"s","type":"t","time":"2026-11-24T08:00:00Z",
            "data":{"actor":{"id":"u"},"action":"a","outcome":"failure"}}"#;
        for before in [14, 16, 17, 20, 32, 40] {
            for between in [0, 1, 15, 16, 17, 30] {
                let (a, b) = (padding(0, before), padding(before, between));
                let bodies = [
                    base.replace(
                        r#""action":"a","outcome":"failure""#,
                        &format!(r#"{a}"action":"a","outcome":"failure",{b}"outcome":"success""#),
                    ),
                    base.replace(
                        r#"{"specversion""#,
                        &format!(r#"{{{a}"source":"forbidden",{b}"specversion""#),
                    ),
                    base.replace(r#"{"id":"u"}"#, &format!(r#"{{{a}"id":"u",{b}"id":"v"}}"#)),
                    base.replace(
                        r#""action":"a""#,
                        &format!(r#""action":"a","resource":{{"type":"r",{a}{b}"type":"q"}}"#),
                    ),
                    base.replace(
                        r#""action":"a""#,
                        &format!(r#""action":"a","x":[{{{a}"k":1,{b}"k":2}}]"#),
                    ),
                ];
                for body in &bodies {
                    let tree = parse_json(body.as_bytes()).unwrap_err();
                    assert!(matches!(tree, JsonError::DuplicateKey(_)), "{body}");
                    for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
                        assert_eq!(
                            Incoming::parse(body.as_bytes(), mode).err(),
                            Some(tree.clone()),
                            "{before} {between} {body}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn both_paths_agree_on_every_case() {
        let good = r#"{"specversion":"1.0","source":"s","type":"t","time":"2026-11-24T08:00:00Z",
            "data":{"actor":{"id":"u"},"action":"a","outcome":"success"}}"#;
        let bodies = [
            good.to_owned(),
            good.replace("08:00:00Z", "09:30:00Z"),
            good.replace("08:00:00Z", "08:00:00"),
            good.replace(r#""type":"t""#, r#""type":"t","authid":"me""#),
            good.replace(r#""type":"t""#, r#""type":"t","subject":"""#),
            good.replace(r#""id":"u""#, r#""id":"""#),
            good.replace(r#""outcome":"success""#, r#""outcome":1"#),
            FULL.to_owned(),
            // More keys than the short list holds, unique: both store the same event.
            good.replace(
                r#""action":"a""#,
                &format!(r#"{}"action":"a""#, padding(0, 40)),
            ),
            good.replace(
                r#"{"id":"u"}"#,
                &format!(r#"{{{}"id":"u"}}"#, padding(0, 20)),
            ),
            good.replace(
                r#"{"specversion""#,
                &format!(r#"{{{}"specversion""#, padding(0, 17)),
            ),
        ];
        for body in &bodies {
            for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
                for ctx in [None, Some(AUTH)] {
                    let (tree, ours) = both(body, mode, ctx);
                    match (&tree, &ours) {
                        (Ok(_), Ok(_)) => same(body, mode, ctx, !body.contains("\"id\":\"e-1\"")),
                        (Err(t), Err(o)) => assert_eq!(t, o, "{body}"),
                        _ => panic!("{body} {mode:?}: tree {tree:?}, borrowed {ours:?}"),
                    }
                }
            }
        }
        // Values at and over the caps of the indexed attributes, suspicious sources: the same
        // stored event, or the same rejection naming the field (in both modes).
        let resource = r#""action":"a","resource":{"type":"r","id":"i"}"#;
        let with_resource = good.replace(r#""action":"a""#, resource);
        let mut edge = Vec::new();
        for (path, cap) in crate::event::INDEXED_CAPS {
            let (body, sent) = match path {
                "id" => (
                    good.replace(r#""type":"t""#, r#""type":"t","id":"X""#),
                    r#""id":"X""#,
                ),
                "subject" => (
                    good.replace(r#""type":"t""#, r#""type":"t","subject":"X""#),
                    r#""subject":"X""#,
                ),
                "traceparent" => (
                    good.replace(r#""type":"t""#, r#""type":"t","traceparent":"X""#),
                    r#""traceparent":"X""#,
                ),
                "source" => (good.to_owned(), r#""source":"s""#),
                "type" => (good.to_owned(), r#""type":"t""#),
                "data.actor.id" => (good.to_owned(), r#""id":"u""#),
                "data.resource.type" => (with_resource.clone(), r#""type":"r""#),
                "data.resource.id" => (with_resource.clone(), r#""id":"i""#),
                other => panic!("no case for {other}"),
            };
            let key = sent.split(':').next().unwrap_or_default();
            for len in [cap, cap + 1] {
                // `é` is one escape on the wire and two bytes in the value.
                let value = format!("{}{}", r"\u00e9".repeat(len / 2), "x".repeat(len % 2));
                let at = if path == "data.resource.type" || path == "data.resource.id" {
                    body.rfind(sent).unwrap_or_default()
                } else {
                    body.find(sent).unwrap_or_default()
                };
                let mut b = body.clone();
                b.replace_range(at..at + sent.len(), &format!(r#"{key}:"{value}""#));
                // At the cap the borrowed path stores it (a traceparent of that length is not
                // W3C: the tree path counts it); over it, the tree path names the field.
                let takes_borrowed = len == cap && path != "traceparent";
                assert_eq!(
                    borrowed(&b, ValidationMode::Compatible),
                    takes_borrowed,
                    "{b}"
                );
                edge.push((b, path != "id"));
            }
        }
        for source in [
            "/r/../p",
            "/r/./p",
            "/r/..",
            r"/r\u202e",
            r"/r\u2066x\u2069",
            r"/r\u200e",
        ] {
            let b = good.replace(r#""source":"s""#, &format!(r#""source":"{source}""#));
            edge.push((b, true));
        }
        // A W3C traceparent of a later version may append fields: capped all the same.
        for n in [400, 600] {
            let trace = format!(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
                "a".repeat(n)
            );
            let b = good.replace(
                r#""type":"t""#,
                &format!(r#""type":"t","traceparent":"{trace}""#),
            );
            assert_eq!(borrowed(&b, ValidationMode::Strict), n == 400, "{b}");
            edge.push((b, true));
        }
        for (body, generated_id) in &edge {
            for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
                for ctx in [None, Some(AUTH)] {
                    let (tree, ours) = both(body, mode, ctx);
                    match (&tree, &ours) {
                        (Ok(_), Ok(_)) => same(body, mode, ctx, *generated_id),
                        (Err(t), Err(o)) => assert_eq!(t, o, "{body}"),
                        _ => panic!("{body} {mode:?}: tree {tree:?}, borrowed {ours:?}"),
                    }
                }
            }
        }
        // Duplicated keys after more keys than the short list holds: the same parse error.
        let mut duplicated = Vec::new();
        for (before, between) in [(16, 0), (16, 1), (17, 0), (20, 10), (33, 0), (40, 40)] {
            let (a, b) = (padding(0, before), padding(before, between));
            duplicated.extend([
                good.replace(
                    r#""action":"a","outcome":"success""#,
                    &format!(r#"{a}"action":"a","outcome":"failure",{b}"outcome":"success""#),
                ),
                good.replace(
                    r#"{"specversion""#,
                    &format!(r#"{{{a}"source":"other",{b}"specversion""#),
                ),
                good.replace(r#"{"id":"u"}"#, &format!(r#"{{{a}"id":"u",{b}"id":"v"}}"#)),
            ]);
        }
        for body in &duplicated {
            let tree = parse_json(body.as_bytes());
            assert!(matches!(tree, Err(JsonError::DuplicateKey(_))), "{body}");
            for mode in [ValidationMode::Strict, ValidationMode::Compatible] {
                assert_eq!(
                    Incoming::parse(body.as_bytes(), mode).err(),
                    tree.clone().err(),
                    "{body}"
                );
            }
        }
        // The strict future-time refusal is the borrowed path's own.
        let future = good.replace("08:00:00Z", "09:30:00Z");
        assert!(borrowed(&future, ValidationMode::Strict));
        let (_, ours) = both(&future, ValidationMode::Strict, None);
        assert!(matches!(ours, Err(Rejection::TimeInFuture(_))), "{ours:?}");
    }

    #[test]
    fn the_size_limit_applies_to_what_is_stored() {
        let body = FULL;
        let tight = Limits {
            max_event_bytes: 200,
            ..limits(ValidationMode::Strict)
        };
        let ours = Incoming::parse(body.as_bytes(), ValidationMode::Strict)
            .unwrap()
            .normalize(None, now(), &tight);
        assert!(
            matches!(ours, Err(Rejection::TooLarge { size, limit: 200, .. }) if size > 200),
            "{ours:?}"
        );
    }

    #[test]
    fn whitespace_between_tokens_goes_and_strings_stay_as_they_are() {
        let compact = |s: &str| {
            let mut out = Vec::new();
            push_compact(&mut out, s.as_bytes());
            String::from_utf8(out).unwrap()
        };
        let sent = " {\"a b\" : [ 1 ,\t2.50e1 ,\r\n\"x \\\" y\" , \"\\\\\", \"\u{e9} \\u00e9\"] } ";
        let kept = "{\"a b\":[1,2.50e1,\"x \\\" y\",\"\\\\\",\"\u{e9} \\u00e9\"]}";
        assert_eq!(compact(sent), kept);
        let parsed = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(parsed(sent), parsed(kept));
        assert_eq!(compact(""), "");
        assert_eq!(compact("  "), "");
    }

    #[test]
    fn not_json_is_the_tree_paths_error() {
        for body in ["", "{", r#"{"a":1} x"#, "[1]", r#"{"a":"\ud800"}"#] {
            assert_eq!(
                Incoming::parse(body.as_bytes(), ValidationMode::Compatible).err(),
                parse_json(body.as_bytes()).err(),
                "{body}"
            );
        }
    }
}
