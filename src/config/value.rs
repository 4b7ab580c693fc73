//! How setting values are read: numbers, byte sizes, durations, addresses and lists accept
//! both their YAML form and the string an environment variable carries (`"10"`, `"4MiB"`,
//! `"250ms"`), and every refusal says what would have been accepted.
//!
//! Units are parsed by well-kept crates (`bytesize`, `humantime`); what stays here is the
//! "number or string" leniency and the error texts operators see.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::Role;

/// A YAML/figment scalar in any of its forms.
pub(crate) enum Scalar {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single value (number, string or boolean)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(v)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
                i128::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    pub(crate) fn into_string(self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Str(s) => s,
        }
    }
}

/// Integer types accepted by [`de_int`].
pub(crate) trait IntField: TryFrom<i128> {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl IntField for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
        }
    )*};
}
int_field!(usize, u32, i32, u64);

/// An integer given as a YAML number or a numeric string (`"10"`).
pub(crate) fn de_int<'de, D: Deserializer<'de>, T: IntField>(d: D) -> Result<T, D::Error> {
    let n = match Scalar::deserialize(d)? {
        Scalar::Int(i) => i,
        Scalar::Str(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| de::Error::custom(format!("expected a whole number, got `{s}`")))?,
        other @ (Scalar::Float(_) | Scalar::Bool(_)) => {
            return Err(de::Error::custom(format!(
                "expected a whole number, got {}",
                other.into_string()
            )));
        }
    };
    T::try_from(n).map_err(|_| {
        de::Error::custom(format!(
            "{n} is out of range (allowed: {} to {})",
            T::MIN,
            T::MAX
        ))
    })
}

/// A boolean given as YAML `true`/`false` or as the string `"true"`/`"false"` (the form every
/// environment variable takes, e.g. `AUDIT_MANAGER__QUERY__ALLOW_ANONYMOUS=true`).
pub(crate) fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Bool(b) => Ok(b),
        Scalar::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(de::Error::custom(format!(
                "expected true or false, got `{s}`"
            ))),
        },
        other => Err(de::Error::custom(format!(
            "expected true or false, got {}",
            other.into_string()
        ))),
    }
}

/// A byte size: an integer, or a string like `"4MiB"` / `"1GB"` (see [`parse_byte_size`]).
pub(crate) fn de_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Int(i) => u64::try_from(i)
            .map_err(|_| de::Error::custom(format!("byte size must not be negative (got {i})"))),
        Scalar::Str(s) => parse_byte_size(&s).map_err(de::Error::custom),
        other => Err(de::Error::custom(format!(
            "expected a byte size like 1048576, \"4MiB\" or \"1GB\", got {}",
            other.into_string()
        ))),
    }
}

/// A humantime duration string such as `"250ms"` or `"1h"`; a bare number is refused (is
/// `5` seconds or milliseconds?), except `0`.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = match Scalar::deserialize(d)? {
        Scalar::Str(s) => s,
        Scalar::Int(0) => return Ok(Duration::ZERO),
        other => {
            let n = other.into_string();
            return Err(de::Error::custom(format!(
                "a duration needs a unit, e.g. \"{n}s\" or \"{n}ms\" (got {n})"
            )));
        }
    };
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration `{s}`: {e} (use e.g. \"250ms\", \"30s\", \"1h\")"
        ))
    })
}

/// A `SocketAddr` such as `0.0.0.0:8000` or `[::]:8000`.
pub(crate) fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = Scalar::deserialize(d)?.into_string();
    s.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid listen address `{s}` (expected IP:port, e.g. \"0.0.0.0:8000\" or \
             \"[::]:8000\")"
        ))
    })
}

/// Roles as a list or a comma-separated string; duplicates collapse (first occurrence wins).
pub(crate) fn de_roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RolesIn {
        List(Vec<String>),
        Csv(String),
    }
    let names: Vec<String> = match RolesIn::deserialize(d).map_err(|_| {
        de::Error::custom(
            "expected a list of roles or a comma-separated string (roles: ingest, forward, \
             sink, maintain)",
        )
    })? {
        RolesIn::List(v) => v,
        RolesIn::Csv(s) => s.split(',').map(str::to_string).collect(),
    };
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let r: Role = name.parse().map_err(de::Error::custom)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// A free-form `name: value` map; scalar values become their string form.
pub(crate) fn de_string_map<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: From<BTreeMap<String, String>>,
{
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    let map: BTreeMap<String, String> =
        raw.into_iter().map(|(k, v)| (k, v.into_string())).collect();
    Ok(map.into())
}

/// Parses a byte size: a bare integer (bytes) or a number followed by a unit — `B`,
/// `KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); units are
/// case-insensitive and may be separated by a space. Decimals are allowed when the result is
/// a whole number of bytes (`"1.5KiB"` = 1536).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    const HINT: &str =
        "use a number of bytes or a size like \"512KiB\", \"4MiB\", \"1GiB\", \"1GB\"";
    let t = s.trim();
    let size = t
        .parse::<ByteSize>()
        .map_err(|e| format!("invalid byte size `{s}`: {e}; {HINT}"))?
        .as_u64();
    // bytesize rounds a fraction of a byte down and saturates at u64::MAX; in a configuration
    // either one means a typo, not a wish for the rounded value.
    let too_big = || format!("byte size `{s}` is too large (maximum {} bytes)", u64::MAX);
    if size == u64::MAX && t != u64::MAX.to_string() {
        return Err(too_big());
    }
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if t[..digits].contains('.') {
        let unit = t[digits..].trim_start();
        let factor = if unit.is_empty() {
            1
        } else {
            1u64 * unit.parse::<bytesize::Unit>().map_err(|e| e.to_string())?
        };
        let exact = t[..digits].parse::<f64>().map_err(|e| e.to_string())? * factor as f64;
        if exact.fract() != 0.0 {
            return Err(format!("byte size `{s}` is not a whole number of bytes"));
        }
        if exact >= u64::MAX as f64 {
            return Err(too_big());
        }
    }
    Ok(size)
}
