//! Test certificates, generated per test: a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate, and a second CA that signed none of them.

use std::path::PathBuf;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tempfile::TempDir;

/// The files of one PKI.
pub struct Pki {
    _dir: TempDir,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate (CN `cairn`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A CA that signed nothing here: verifying the server with it fails.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

impl Pki {
    /// Generates every file in a temporary directory.
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-pki-")
            .tempdir()
            .expect("a temp dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("writing a PEM file");
            path
        };
        let authority = ca("cairn test CA");
        let server_key = KeyPair::generate().expect("a key");
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params")
            .signed_by(&server_key, &authority)
            .expect("a server certificate");
        let client_key = KeyPair::generate().expect("a key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "cairn");
        let client = client_params
            .signed_by(&client_key, &authority)
            .expect("a client certificate");
        Pki {
            ca: write("ca.pem", authority.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            other_ca: write("other-ca.pem", ca("another CA").pem()),
            _dir: dir,
        }
    }

    /// etcd-client options that trust the CA and present the client certificate.
    pub fn client_options(&self) -> ConnectOptions {
        let read = |p: &PathBuf| std::fs::read(p).expect("reading a PEM file");
        ConnectOptions::new().with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&self.ca)))
                .identity(Identity::from_pem(
                    read(&self.client_cert),
                    read(&self.client_key),
                )),
        )
    }
}
