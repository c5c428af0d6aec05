//! The etcd user cairn authenticates as. A password never sits in the config: it comes from a
//! file, or from `CAIRN_ETCD_PASSWORD`, and never reaches a log, an error or `/services`.

use std::fmt;
use std::path::Path;

/// The variable whose value, when set, is the password (it wins over `password_file`).
pub const PASSWORD_ENV: &str = "CAIRN_ETCD_PASSWORD";

/// A password, printed as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The password itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub username: String,
    /// Its password.
    pub password: Secret,
}

impl Credentials {
    /// `username` with its password from `CAIRN_ETCD_PASSWORD`, else from `password_file`.
    ///
    /// # Errors
    /// A message (never the password) when neither gives one, the file cannot be read, or the
    /// password is empty.
    pub fn load(username: &str, password_file: Option<&Path>) -> Result<Credentials, String> {
        Credentials::resolve(username, password_file, std::env::var(PASSWORD_ENV).ok())
    }

    fn resolve(
        username: &str,
        password_file: Option<&Path>,
        from_env: Option<String>,
    ) -> Result<Credentials, String> {
        if username.is_empty() {
            return Err("the username is empty".to_string());
        }
        let password = match (from_env, password_file) {
            (Some(p), _) => p,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?,
            (None, None) => {
                return Err(format!(
                    "user {username:?} needs a password: set password_file (or --password-file), or {PASSWORD_ENV}"
                ))
            }
        };
        // A file written by `echo` ends with a newline that is not part of the password.
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            return Err(format!("the password of user {username:?} is empty"));
        }
        Ok(Credentials {
            username: username.to_string(),
            password: Secret(password),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_a_file_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let c = Credentials::resolve("cairn", Some(&file), None).unwrap();
        assert_eq!(c.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let env = Credentials::resolve("cairn", Some(&file), Some("other".into())).unwrap();
        assert_eq!(
            env.password.expose(),
            "other",
            "the variable wins over the file"
        );
        let e = Credentials::resolve("cairn", None, None).unwrap_err();
        assert!(
            e.contains("password_file") && e.contains(PASSWORD_ENV),
            "{e}"
        );
        let missing = dir.path().join("missing");
        let e = Credentials::resolve("cairn", Some(&missing), None).unwrap_err();
        assert!(e.contains("cannot read the password file"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        let e = Credentials::resolve("cairn", Some(&file), None).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
}
