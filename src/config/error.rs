//! Configuration mistakes, located in their file: `cairn.toml:14: service[1].listen: ...`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::field::{FieldError, Lines};

/// A configuration mistake, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file that holds the mistake.
    pub path: PathBuf,
    /// 1-based line of the mistake, when it can be located.
    pub line: Option<usize>,
    /// The dotted key at fault, such as `service[1].listen`, when known.
    pub key: Option<String>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Places errors in one file's text.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

impl Locator<'_> {
    pub(super) fn lines(&self) -> Lines<'_> {
        Lines(self.text)
    }

    /// The error for a field a component rejected.
    pub(super) fn field(&self, e: FieldError) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: e.span.map(|s| self.lines().of(s.start)),
            key: Some(e.key),
            message: e.message,
        }
    }

    /// The error for text that is not TOML, or a value of the wrong kind at `key`.
    pub(super) fn toml(&self, e: &toml::de::Error, key: Option<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: e.span().map(|s| self.lines().of(s.start)),
            key: key
                .map(|k| clean_key(&k))
                .filter(|k| !k.is_empty() && k != "."),
            message: e.message().trim().to_string(),
        }
    }

    /// An error not tied to any key, such as an unreadable file.
    pub(super) fn whole(&self, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: None,
            key: None,
            message,
        }
    }
}

/// The key as the operator wrote it: without the private fields the TOML parser uses to
/// remember where a value was.
fn clean_key(key: &str) -> String {
    key.split('.')
        .filter(|segment| !segment.starts_with("$__serde_spanned"))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_parser_fields_never_reach_the_operator() {
        assert_eq!(
            clean_key("service[0].retries.$__serde_spanned_private_value"),
            "service[0].retries"
        );
        assert_eq!(clean_key("etcd.prefix"), "etcd.prefix");
    }
}
