//! Strings from outside (etcd keys and errors, clients) shown on one line: control characters
//! are escaped, so a crafted key or message cannot forge a log line or a table row.

use std::borrow::Cow;

/// `s` with every control character escaped (`\n`, `\u{1b}`, …); borrowed when there is none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The causes below `e`, in one line: a client library's own message ("client error
/// (Connect)") says less than what it wraps. Repeats are left out; `e` itself when it has none.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(
            printable("orders-1 é"),
            Cow::Borrowed("orders-1 é")
        ));
        assert_eq!(
            printable("x\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[31m"),
            "x\\n2026-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31m"
        );
    }
}
