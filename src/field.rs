//! Config field plumbing every component shares: located field errors, dotted keys, and the
//! small value types that the config file and the command line both parse.
//!
//! A component validates its own section and answers with a [`FieldError`] that carries the
//! dotted key and the byte span of the value at fault; `config` turns the span into a line.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

/// A mistake in one field: which key, where in the file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The dotted key at fault, such as `service[1].listen`.
    pub key: String,
    /// Byte range of the value in the file, when known.
    pub span: Option<Range<usize>>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// The result of validating a field or a section.
pub type FieldResult<T> = Result<T, FieldError>;

/// A dotted key path, built section by section: `service[1]`, then `service[1].listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The key of a top-level section or field, such as `etcd`.
    pub fn new(name: &str) -> Key {
        Key(name.to_string())
    }

    /// Block `index` of an array of tables, such as `service[1]`.
    pub fn indexed(name: &str, index: usize) -> Key {
        Key(format!("{name}[{index}]"))
    }

    /// The key of `field` inside this one.
    pub fn field(&self, field: &str) -> Key {
        Key(format!("{}.{field}", self.0))
    }

    /// An error about this key at `span`.
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> FieldError {
        FieldError {
            key: self.0.clone(),
            span,
            message: message.into(),
        }
    }

    /// An error about `field` of this key, located at `value`.
    pub fn at<T>(&self, field: &str, value: &Spanned<T>, message: impl Into<String>) -> FieldError {
        self.field(field).error(Some(value.span()), message)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turns byte offsets of a config text into 1-based line numbers.
#[derive(Debug, Clone, Copy)]
pub struct Lines<'a>(pub &'a str);

impl Lines<'_> {
    /// The line holding byte `offset`.
    pub fn of(&self, offset: usize) -> usize {
        let end = offset.min(self.0.len());
        self.0.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

/// Implements `Deserialize` through `FromStr`, so the config file and clap share one parser and
/// one error message per field type.
macro_rules! deserialize_from_str {
    ($($ty:ty),+ $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}
pub(crate) use deserialize_from_str;

/// A duration written the human way: `500ms`, `5s`, `1m 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration \"{s}\": {e} (use e.g. \"500ms\", \"5s\", \"1m\")")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A local `IP:port` to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ListenAddr).map_err(|_| {
            format!(
                "invalid address \"{s}\": expected IP:port, like \"127.0.0.1:7001\" or \"[::1]:7001\""
            )
        })
    }
}

deserialize_from_str!(HumanDuration, ListenAddr);

/// A duration that must be longer than zero, or `default` when the key is absent.
///
/// # Errors
/// When the value is zero.
pub fn positive(
    value: Option<&Spanned<HumanDuration>>,
    key: &Key,
    default: Duration,
) -> FieldResult<Duration> {
    match value {
        Some(d) if d.get_ref().0.is_zero() => {
            Err(key.error(Some(d.span()), "must be longer than zero"))
        }
        Some(d) => Ok(d.get_ref().0),
        None => Ok(default),
    }
}

/// A whole number within `range`, or `default` when the key is absent.
///
/// # Errors
/// When the value lies outside `range`.
pub fn within(
    value: Option<&Spanned<u64>>,
    key: &Key,
    range: Range<u64>,
    default: u64,
) -> FieldResult<u64> {
    let name = key.0.rsplit('.').next().unwrap_or(&key.0);
    match value {
        Some(n) if !range.contains(n.get_ref()) => Err(key.error(
            Some(n.span()),
            format!(
                "{name} = {} is outside {}..={}",
                n.get_ref(),
                range.start,
                range.end - 1
            ),
        )),
        Some(n) => Ok(*n.get_ref()),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_build_dotted_paths() {
        let k = Key::indexed("service", 1).field("check").field("tcp");
        assert_eq!(k.to_string(), "service[1].check.tcp");
        assert_eq!(Key::new("etcd").field("prefix").to_string(), "etcd.prefix");
    }

    #[test]
    fn lines_count_from_one() {
        let l = Lines("a\nb\nc");
        assert_eq!((l.of(0), l.of(2), l.of(4), l.of(99)), (1, 2, 3, 3));
    }

    #[test]
    fn durations_and_addresses_explain_themselves() {
        assert_eq!(
            "1m 30s".parse::<HumanDuration>(),
            Ok(HumanDuration(Duration::from_secs(90)))
        );
        assert!("5 parsecs"
            .parse::<HumanDuration>()
            .unwrap_err()
            .contains("invalid duration"));
        assert!("localhost:80"
            .parse::<ListenAddr>()
            .unwrap_err()
            .contains("expected IP:port"));
    }

    #[test]
    fn ranges_and_positives_are_enforced() {
        let k = Key::new("max_connections");
        let v = Spanned::new(0..1, 0u64);
        assert!(within(Some(&v), &k, 1..11, 5)
            .unwrap_err()
            .message
            .contains("outside 1..=10"));
        assert_eq!(within(None, &k, 1..11, 5), Ok(5));
        let zero = Spanned::new(0..1, HumanDuration(Duration::ZERO));
        assert!(positive(Some(&zero), &k, Duration::from_secs(1)).is_err());
    }
}
