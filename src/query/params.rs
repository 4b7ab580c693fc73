//! Query-string parsing for `GET /events`: every parameter is checked and an unknown or
//! repeated one is an error, so a typo (`actorid=…`) never silently widens a search.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Filters of a search; every one that is set must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub actor_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub r#type: Option<String>,
    pub outcome: Option<String>,
    pub subject: Option<String>,
    pub source: Option<String>,
    pub trace_id: Option<String>,
    /// Inclusive lower bound of `occurred_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `occurred_at`.
    pub to: Option<DateTime<Utc>>,
}

/// The text filters, by parameter name (the column of the same name).
pub const TEXT_FILTERS: [&str; 8] = [
    "actor_id",
    "resource_type",
    "resource_id",
    "type",
    "outcome",
    "subject",
    "source",
    "trace_id",
];

impl Filter {
    /// The text filters that are set, as `(column, value)`.
    pub fn text(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let values = [
            &self.actor_id,
            &self.resource_type,
            &self.resource_id,
            &self.r#type,
            &self.outcome,
            &self.subject,
            &self.source,
            &self.trace_id,
        ];
        TEXT_FILTERS
            .into_iter()
            .zip(values)
            .filter_map(|(name, v)| v.as_deref().map(|v| (name, v)))
    }

    fn text_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "actor_id" => &mut self.actor_id,
            "resource_type" => &mut self.resource_type,
            "resource_id" => &mut self.resource_id,
            "type" => &mut self.r#type,
            "outcome" => &mut self.outcome,
            "subject" => &mut self.subject,
            "source" => &mut self.source,
            "trace_id" => &mut self.trace_id,
            _ => return None,
        })
    }

    /// The filters as a JSON object (what the query's own audit event records in `context`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> = self
            .text()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        if let Some(t) = self.from {
            m.insert("from".into(), Value::String(rfc3339(t)));
        }
        if let Some(t) = self.to {
            m.insert("to".into(), Value::String(rfc3339(t)));
        }
        m
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Where the previous page ended: the last row's `(occurred_at, id)`. Opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub occurred_at: DateTime<Utc>,
    pub id: String,
}

impl Cursor {
    /// `base64url(JSON [microseconds since the epoch, id])`.
    pub fn encode(&self) -> String {
        let raw = serde_json::json!([self.occurred_at.timestamp_micros(), self.id]);
        URL_SAFE_NO_PAD.encode(raw.to_string())
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let (micros, id): (i64, String) = serde_json::from_slice(&bytes).ok()?;
        Some(Cursor {
            occurred_at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

/// A parsed `GET /events` query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub filter: Filter,
    /// Rows per page (`limit`, default [`DEFAULT_LIMIT`] capped at `query.max_page_size`).
    pub limit: usize,
    /// Start after this row (`cursor`).
    pub after: Option<Cursor>,
    /// Whether `limit` was given (an export refuses it: it streams every match).
    pub limit_given: bool,
}

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

const ALL_PARAMS: &str = "actor_id, resource_type, resource_id, type, outcome, subject, source, trace_id, from, to, \
     limit, cursor";

/// Parses the raw query string; the error names the parameter and says what is allowed.
pub fn parse(query: Option<&str>, max_page_size: usize) -> Result<PageRequest, String> {
    let mut req = PageRequest {
        filter: Filter::default(),
        limit: DEFAULT_LIMIT.min(max_page_size),
        after: None,
        limit_given: false,
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if seen.iter().any(|s| *s == name) {
            return Err(format!(
                "parameter `{name}` is given more than once; give each filter at most once"
            ));
        }
        seen.push(name.to_string());
        if value.contains('\0') {
            return Err(format!("parameter `{name}` contains a NUL character"));
        }
        if value.is_empty() {
            return Err(format!(
                "parameter `{name}` is empty; leave it out to not filter on it"
            ));
        }
        if let Some(slot) = req.filter.text_mut(&name) {
            *slot = Some(value.into_owned());
            continue;
        }
        match &*name {
            "from" => req.filter.from = Some(time(&name, &value)?),
            "to" => req.filter.to = Some(time(&name, &value)?),
            "limit" => {
                let n: usize = value.parse().map_err(|_| {
                    format!("parameter `limit` must be a whole number from 1 to {max_page_size} (got {value:?})")
                })?;
                if n == 0 || n > max_page_size {
                    return Err(format!(
                        "parameter `limit` must be from 1 to {max_page_size} \
                         (query.max_page_size; got {n}); follow next_cursor for more rows"
                    ));
                }
                req.limit = n;
                req.limit_given = true;
            }
            "cursor" => {
                req.after = Some(Cursor::decode(&value).ok_or_else(|| {
                    "parameter `cursor` is not a cursor this service issued; pass next_cursor \
                     from the previous page unchanged"
                        .to_string()
                })?)
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}`; known parameters: {ALL_PARAMS}"
                ));
            }
        }
    }
    if let (Some(from), Some(to)) = (req.filter.from, req.filter.to)
        && from >= to
    {
        return Err(format!(
            "parameter `from` ({}) must be earlier than `to` ({}): the window is [from, to)",
            rfc3339(from),
            rfc3339(to)
        ));
    }
    Ok(req)
}

fn time(name: &str, value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "parameter `{name}` must be an RFC 3339 time such as 2026-11-01T00:00:00Z \
                 (got {value:?}: {e})"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            occurred_at: DateTime::from_timestamp_micros(1_763_000_000_123_456).unwrap(),
            id: "ev-ü/1".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("[1]")), None);
    }

    #[test]
    fn every_filter_is_read_and_errors_name_the_parameter() {
        let q = "actor_id=u%201&resource_type=beneficiary&resource_id=b-1&type=t&outcome=denied\
                 &subject=s&source=%2Fregistry&trace_id=abc&from=2026-01-01T00:00:00Z\
                 &to=2026-02-01T00:00:00%2B01:00&limit=7";
        let r = parse(Some(q), 1000).unwrap();
        assert_eq!(r.filter.actor_id.as_deref(), Some("u 1"));
        assert_eq!(r.filter.source.as_deref(), Some("/registry"));
        assert_eq!(r.filter.text().count(), 8);
        assert_eq!(
            r.filter.to.unwrap().to_rfc3339(),
            "2026-01-31T23:00:00+00:00"
        );
        assert_eq!(r.limit, 7);
        for (q, names) in [
            ("actorid=x", "`actorid`"),
            ("limit=0", "`limit`"),
            ("limit=1001", "`limit`"),
            ("limit=ten", "`limit`"),
            ("from=yesterday", "`from`"),
            ("cursor=zzz", "`cursor`"),
            ("actor_id=a&actor_id=b", "`actor_id`"),
            ("actor_id=", "`actor_id`"),
            (
                "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
                "`from`",
            ),
        ] {
            let e = parse(Some(q), 1000).unwrap_err();
            assert!(e.contains(names), "{q}: {e}");
        }
        assert_eq!(parse(None, 50).unwrap().limit, 50);
    }
}
