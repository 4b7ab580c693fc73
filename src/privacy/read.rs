//! What readers see of encrypted values: the plaintext with `pii`, [`ENCRYPTED`] without,
//! [`ERASED`] for everyone once the subject's key is gone, and [`TAMPERED`] for a ciphertext
//! that does not authenticate where it is stored (moved from another row or field, or altered):
//! never another value.

use serde_json::Value;

use super::subject_keys::{self, STORED, SubjectKeys};
use super::{ENCRYPTED, ERASED};

/// What a ciphertext that fails authentication reads as.
pub const TAMPERED: &str = "[integrity-failure]";

/// What revealing one row did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revealed {
    /// Values shown in the clear.
    pub plaintext: usize,
    /// Values that failed authentication.
    pub tampered: usize,
}

/// Which event attribute each stored column came from (the pointer its ciphertext is bound to).
const COLUMNS: [(&str, &str); 4] = [
    ("actor_id", "/data/actor/id"),
    ("resource_id", "/data/resource/id"),
    ("subject", "/subject"),
    ("resource_type", "/data/resource/type"),
];

/// Rewrites every encrypted value of one stored row (as the query API renders it: `id`, the
/// columns, `details`) for a reader with or without `pii`.
pub fn reveal_row(row: &mut Value, pii: bool, keys: Option<&dyn SubjectKeys>) -> Revealed {
    let mut out = Revealed::default();
    let Some(map) = row.as_object_mut() else {
        return out;
    };
    let id = map
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for (column, pointer) in COLUMNS {
        if let Some(v) = map.get_mut(column) {
            reveal_value(v, &id, pointer, pii, keys, &mut out);
        }
    }
    if let Some(details) = map.get_mut("details") {
        // `details` is `data` without the columns: its pointers are `data`'s.
        walk(details, &mut "/data".to_owned(), &id, pii, keys, &mut out);
    }
    out
}

fn walk(
    v: &mut Value,
    at: &mut String,
    id: &str,
    pii: bool,
    keys: Option<&dyn SubjectKeys>,
    out: &mut Revealed,
) {
    match v {
        Value::String(_) => reveal_value(v, id, at, pii, keys, out),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                walk(item, at, id, pii, keys, out);
                at.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk(item, at, id, pii, keys, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

fn reveal_value(
    v: &mut Value,
    id: &str,
    pointer: &str,
    pii: bool,
    keys: Option<&dyn SubjectKeys>,
    out: &mut Revealed,
) {
    let Some(s) = v.as_str().filter(|s| s.starts_with(STORED)) else {
        return;
    };
    *v = reveal_str(s, id, pointer, pii, keys, out);
}

/// The reader's view of one stored string.
fn reveal_str(
    s: &str,
    id: &str,
    pointer: &str,
    pii: bool,
    keys: Option<&dyn SubjectKeys>,
    out: &mut Revealed,
) -> Value {
    let Some((key_id, body)) = subject_keys::parse(s) else {
        out.tampered += 1;
        return Value::String(TAMPERED.into());
    };
    // Whether the key still exists decides `[erased]` for everyone.
    let key = match keys.map(|k| k.key_by_id(key_id)) {
        Some(Ok(Some(key))) => key,
        Some(Ok(None)) => return Value::String(ERASED.into()),
        // No key store here, or it did not answer: nothing can be shown in the clear.
        None | Some(Err(_)) => return Value::String(ENCRYPTED.into()),
    };
    if !pii {
        return Value::String(ENCRYPTED.into());
    }
    match subject_keys::decrypt(&key, &body, id, pointer) {
        Ok(plain) => {
            out.plaintext += 1;
            plain
        }
        Err(_) => {
            out.tampered += 1;
            Value::String(TAMPERED.into())
        }
    }
}

/// A reader's view: whether it sees personal data, and where keys are.
#[derive(Clone, Default)]
pub struct View {
    pub pii: bool,
    pub keys: Option<std::sync::Arc<dyn SubjectKeys>>,
}

impl View {
    /// Rewrites one row (as the query API renders it).
    pub fn row(&self, row: &mut Value) -> Revealed {
        reveal_row(row, self.pii, self.keys.as_deref())
    }

    /// One row as JSON text, rewritten only when it holds an encrypted value.
    pub fn row_text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !text.contains(STORED) {
            return std::borrow::Cow::Borrowed(text);
        }
        match serde_json::from_str::<Value>(text) {
            Ok(mut v) => {
                self.row(&mut v);
                std::borrow::Cow::Owned(v.to_string())
            }
            // Never hand out what could not be checked.
            Err(_) => std::borrow::Cow::Owned("{}".into()),
        }
    }
}
