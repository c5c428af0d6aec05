//! Config field plumbing every component shares: located field errors, dotted keys, and the
//! small value types that the config file and the command line both parse.
//!
//! A component validates its own section and answers with a [`FieldError`] that carries the
//! dotted key and the byte span of the value at fault; `config` turns the span into a line.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use crate::parsed::deserialize_from_str;

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

/// A duration written the human way: `500ms`, `5s`, `1m 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {s:?}: {e} (use e.g. \"500ms\", \"5s\", \"1m\")")
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
                "invalid address {s:?}: expected IP:port, like \"127.0.0.1:7001\" or \"[::1]:7001\""
            )
        })
    }
}

deserialize_from_str!(HumanDuration, ListenAddr);

/// A duration within `range`, or `default` when the key is absent.
///
/// Every duration has a range: a value far beyond any sensible setting (`10000000000000000000s`)
/// would overflow the clock arithmetic at run time, so `check` and `run` refuse it alike.
///
/// # Errors
/// When the value lies outside `range`.
pub fn duration(
    value: Option<&Spanned<HumanDuration>>,
    key: &Key,
    range: RangeInclusive<Duration>,
    default: Duration,
) -> FieldResult<Duration> {
    let Some(d) = value else {
        return Ok(default);
    };
    check_duration(d.get_ref().0, &range).map_err(|m| key.error(Some(d.span()), m))
}

/// `d` if it lies within `range`, else why not.
///
/// # Errors
/// A message naming the bound that `d` breaks.
pub fn check_duration(d: Duration, range: &RangeInclusive<Duration>) -> Result<Duration, String> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if d.is_zero() && !range.contains(&d) {
        Err("must be longer than zero".to_string())
    } else if d < *range.start() {
        Err(format!("must be at least {}", show(*range.start())))
    } else if d > *range.end() {
        Err(format!("must be at most {}", show(*range.end())))
    } else {
        Ok(d)
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
        let range = Duration::from_millis(1)..=Duration::from_secs(60);
        let zero = Spanned::new(0..1, HumanDuration(Duration::ZERO));
        let e = duration(Some(&zero), &k, range.clone(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.message, "must be longer than zero");
        let huge: HumanDuration = "10000000000000000000s".parse().unwrap();
        let e = duration(
            Some(&Spanned::new(0..1, huge)),
            &k,
            range.clone(),
            Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(e.message, "must be at most 1m");
        assert_eq!(
            check_duration(Duration::ZERO, &(Duration::ZERO..=Duration::from_secs(1))),
            Ok(Duration::ZERO)
        );
        assert!(check_duration(
            Duration::from_millis(5),
            &(Duration::from_millis(10)..=Duration::from_secs(1))
        )
        .unwrap_err()
        .contains("at least 10ms"));
    }
}
