//! The key layout: `<prefix><service>/<instance-id>`, and the names that go into it.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use crate::parsed::deserialize_from_str;

/// A service name: one registry key segment, also usable as a Host label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.is_empty() {
            return Err("service name is empty".to_string());
        }
        if let Some(c) = name
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
        {
            return Err(format!(
                "service name {name:?} contains {c:?}, which cannot appear in a registry key segment"
            ));
        }
        Ok(ServiceName(name.to_string()))
    }
}

/// An instance id: the last part of a registry key (it may contain `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl FromStr for InstanceId {
    type Err = String;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        if id.is_empty() {
            return Err("instance id is empty".to_string());
        }
        if let Some(c) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("instance id {id:?} contains {c:?}"));
        }
        Ok(InstanceId(id.to_string()))
    }
}

/// The registry prefix: non-empty and ending with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl FromStr for Prefix {
    type Err = String;

    fn from_str(p: &str) -> Result<Self, Self::Err> {
        if p.len() < 2 || !p.ends_with('/') {
            return Err(format!(
                "prefix {p:?} must be non-empty and end with '/', like \"/services/\""
            ));
        }
        Ok(Prefix(p.to_string()))
    }
}

impl Default for Prefix {
    /// `/services/`, the seed registry's prefix.
    fn default() -> Self {
        Prefix("/services/".to_string())
    }
}

/// Read access to the validated string, for all three names.
macro_rules! as_str {
    ($($ty:ty),+) => {$(
        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )+};
}
as_str!(ServiceName, InstanceId, Prefix);
deserialize_from_str!(ServiceName, InstanceId, Prefix);

/// Splits a registry key into `(service, instance id)`.
///
/// Returns `None` for keys outside `prefix`, with an empty service, or with no instance id: such
/// keys do not describe an instance and are ignored.
pub fn split_key<'k>(prefix: &str, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (service, id) = rest.split_once('/')?;
    if service.is_empty() || id.is_empty() {
        return None;
    }
    Some((service, id))
}

/// The key of instance `id` of `service`.
pub fn instance_key(prefix: &str, service: &str, id: &str) -> String {
    format!("{prefix}{service}/{id}")
}

/// The prefix under which every instance of `service` lives.
pub fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{prefix}{service}/")
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_service_and_id() {
        assert_eq!(
            split_key("/services/", b"/services/orders/orders-1"),
            Some(("orders", "orders-1"))
        );
        // etcd's naming package uses the address as the id; go-zero uses a lease id.
        assert_eq!(
            split_key("/services/", b"/services/orders/10.0.0.5:8080"),
            Some(("orders", "10.0.0.5:8080"))
        );
        assert_eq!(
            split_key("/services/", b"/services/orders/a/b"),
            Some(("orders", "a/b"))
        );
        assert_eq!(split_key("/services/", b"/services/orders"), None);
        assert_eq!(split_key("/services/", b"/services/orders/"), None);
        assert_eq!(split_key("/services/", b"/services//x"), None);
        assert_eq!(split_key("/services/", b"/other/orders/x"), None);
        assert_eq!(split_key("/services/", b"/services/\xff/x"), None);
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"/services/"), b"/services0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn names_are_checked_once_for_file_and_flags() {
        assert!("orders".parse::<ServiceName>().is_ok());
        assert!("a/b".parse::<ServiceName>().unwrap_err().contains("'/'"));
        assert!("".parse::<ServiceName>().unwrap_err().contains("empty"));
        assert!("a b".parse::<InstanceId>().is_err());
        assert_eq!(&*"a/b".parse::<InstanceId>().unwrap(), "a/b");
        assert!("/services"
            .parse::<Prefix>()
            .unwrap_err()
            .contains("end with '/'"));
        assert_eq!(&*Prefix::default(), "/services/");
    }

    proptest::proptest! {
        #[test]
        fn any_key_splits_or_is_ignored_without_panicking(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let mut full = b"/services/".to_vec();
            full.extend_from_slice(&key);
            if let Some((service, id)) = split_key("/services/", &full) {
                proptest::prop_assert!(!service.is_empty() && !id.is_empty() && !service.contains('/'));
                let rebuilt = instance_key("/services/", service, id);
                proptest::prop_assert_eq!(rebuilt.as_bytes(), &full[..]);
            }
        }
    }
}
