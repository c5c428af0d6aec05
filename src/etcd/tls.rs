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
    /// Certificates, at least one of them a CA's (`basicConstraints CA:TRUE`): the roots that
    /// verify the members.
    CaCertificates,
    /// One or more certificates, the first the one presented.
    Certificates,
    /// A private key of a kind TLS can sign with.
    PrivateKey,
}

impl PemFile {
    /// Reads `path` and decodes it whole as `kind`: each certificate parsed as X.509, a key
    /// loaded as TLS would load it.
    ///
    /// # Errors
    /// A message naming the path: missing, unreadable, or not what it must hold, and why.
    pub fn read(path: &Path, kind: PemKind) -> Result<PemFile, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file = PemFile {
            path: path.to_path_buf(),
            pem,
        };
        match kind {
            PemKind::CaCertificates => {
                let cas = file.certificates()?.iter().filter(|c| c.is_ca).count();
                if cas == 0 {
                    return Err(format!(
                        "{} holds no CA certificate (none has basicConstraints CA:TRUE): a CA file holds the certificate of the authority that signed the members', not a member's or a client's own",
                        path.display()
                    ));
                }
            }
            PemKind::Certificates => {
                file.certificates()?;
            }
            PemKind::PrivateKey => {
                file.private_key()?;
            }
        }
        Ok(file)
    }

    /// The certificates, each parsed.
    fn certificates(&self) -> Result<Vec<Parsed>, String> {
        let path = self.path.display();
        let ders: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&self.pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{path} is not readable PEM: {e}"))?;
        if ders.is_empty() {
            return Err(format!(
                "{path} holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)"
            ));
        }
        ders.iter()
            .enumerate()
            .map(|(i, der)| match x509_parser::parse_x509_certificate(der) {
                Ok(([], cert)) => Ok(Parsed {
                    is_ca: cert.is_ca(),
                }),
                Ok(_) => Err(format!(
                    "{path}: certificate {} has bytes after its end",
                    i + 1
                )),
                Err(e) => Err(format!(
                    "{path}: certificate {} is not an X.509 certificate ({e})",
                    i + 1
                )),
            })
            .collect()
    }

    /// The private key, as TLS loads it.
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        let path = self.path.display();
        let key = PrivateKeyDer::from_pem_slice(&self.pem)
            .map_err(|e| format!("{path} holds no PEM private key ({e})"))?;
        provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| format!("{path}: the private key cannot be used for TLS ({e})"))?;
        Ok(key)
    }
}

/// What a certificate says that cairn checks.
struct Parsed {
    /// It may sign others (`basicConstraints CA:TRUE`).
    is_ca: bool,
}

/// The TLS algorithms etcd-client's transport uses.
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Checks that `key` is the private key of the first certificate in `cert`, by their public
/// keys. A key whose public half the TLS stack cannot tell is not refused.
///
/// # Errors
/// A message naming both files when the key belongs to another certificate.
fn check_pair(cert: &PemFile, key: &PemFile) -> Result<(), String> {
    let first = CertificateDer::pem_slice_iter(&cert.pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("{} holds no PEM certificate", cert.path.display()))?;
    let parsed = x509_parser::parse_x509_certificate(&first)
        .map_err(|e| format!("{}: not an X.509 certificate ({e})", cert.path.display()))?
        .1;
    let signing = provider()
        .key_provider
        .load_private_key(key.private_key()?)
        .map_err(|e| {
            format!(
                "{}: the private key cannot be used for TLS ({e})",
                key.path.display()
            )
        })?;
    match signing.public_key() {
        Some(spki) if spki.as_ref() != parsed.public_key().raw => Err(format!(
            "{} is not the key of the certificate in {}: their public keys differ",
            key.path.display(),
            cert.path.display()
        )),
        _ => Ok(()),
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
            .map(|p| PemFile::read(p, PemKind::CaCertificates))
            .transpose()
            .map_err(|e| format!("--ca-file: {e}"))?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let cert = PemFile::read(c, PemKind::Certificates)
                    .map_err(|e| format!("--cert-file: {e}"))?;
                let key = PemFile::read(k, PemKind::PrivateKey)
                    .map_err(|e| format!("--key-file: {e}"))?;
                check_pair(&cert, &key).map_err(|e| format!("--key-file: {e}"))?;
                Some((cert, key))
            }
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
            Some(p) => Some(read("ca_file", p, PemKind::CaCertificates)?),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let cert = read("cert_file", c, PemKind::Certificates)?;
                let private = read("key_file", k, PemKind::PrivateKey)?;
                check_pair(&cert, &private).map_err(|m| key.at("key_file", k, m))?;
                Some((cert, private))
            }
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
