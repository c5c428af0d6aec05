//! `[etcd.tls]`: the CA that verifies the members, an optional client certificate (mTLS), and the
//! name to verify. The files are read and parsed when the config is checked, so `cairn check`
//! and `cairn run` agree on them.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use crate::field::{FieldResult, Key};

/// A PEM file, read and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for PemFile {
    /// The path only: a key file's contents never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PemFile").field(&self.path).finish()
    }
}

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more certificates.
    Certificates,
    /// A private key.
    PrivateKey,
}

impl PemFile {
    /// Reads `path` and checks that it holds `kind`.
    ///
    /// # Errors
    /// A message naming the path: missing, unreadable, or not the PEM expected.
    pub fn read(path: &Path, kind: PemKind) -> Result<PemFile, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let ok = match kind {
            PemKind::Certificates => {
                let certs: Result<Vec<CertificateDer<'_>>, _> =
                    CertificateDer::pem_slice_iter(&pem).collect();
                certs.is_ok_and(|c| !c.is_empty())
            }
            PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&pem).is_ok(),
        };
        if !ok {
            let what = match kind {
                PemKind::Certificates => "a PEM certificate",
                PemKind::PrivateKey => "a PEM private key",
            };
            return Err(format!("{} does not hold {what}", path.display()));
        }
        Ok(PemFile {
            path: path.to_path_buf(),
            pem,
        })
    }
}

/// How cairn verifies the members and proves itself to them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// The CA that signed the members' certificates; the system's roots when absent.
    pub ca: Option<PemFile>,
    /// A client certificate and its key, for members that require one (mTLS).
    pub identity: Option<(PemFile, PemFile)>,
    /// The name the members' certificates must carry, instead of the endpoint's host.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// TLS from the command line's flags, checked like the config file's.
    ///
    /// # Errors
    /// A message naming the flag and the file.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<TlsConfig, String> {
        let ca = ca
            .map(|p| PemFile::read(p, PemKind::Certificates))
            .transpose()
            .map_err(|e| format!("--ca-file: {e}"))?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                PemFile::read(c, PemKind::Certificates).map_err(|e| format!("--cert-file: {e}"))?,
                PemFile::read(k, PemKind::PrivateKey).map_err(|e| format!("--key-file: {e}"))?,
            )),
            _ => return Err("--cert-file and --key-file go together".to_string()),
        };
        Ok(TlsConfig {
            ca,
            identity,
            server_name: None,
        })
    }
}

/// `[etcd.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    ca_file: Option<Spanned<PathBuf>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    server_name: Option<Spanned<String>>,
}

impl RawTls {
    /// The settings, with every file read and checked; `key` is `etcd.tls`.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<TlsConfig> {
        let read = |field: &str, path: &Spanned<PathBuf>, kind| {
            PemFile::read(path.get_ref(), kind).map_err(|m| key.at(field, path, m))
        };
        let ca = match &self.ca_file {
            Some(p) => Some(read("ca_file", p, PemKind::Certificates)?),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                read("cert_file", c, PemKind::Certificates)?,
                read("key_file", k, PemKind::PrivateKey)?,
            )),
            (Some(c), None) => {
                return Err(key.at("cert_file", c, "a client certificate needs key_file too"))
            }
            (None, Some(k)) => {
                return Err(key.at("key_file", k, "a client key needs cert_file too"))
            }
        };
        let server_name = match self.server_name {
            Some(n) if n.get_ref().is_empty() => {
                return Err(key.at("server_name", &n, "server_name is empty"))
            }
            Some(n) => Some(n.into_inner()),
            None => None,
        };
        Ok(TlsConfig {
            ca,
            identity,
            server_name,
        })
    }
}
