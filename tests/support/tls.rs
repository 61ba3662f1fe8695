//! TLS for the tests.
//! - [`TestCert`]: a self-signed certificate for 127.0.0.1 and localhost
//!   (PEM files for `[server] tls_cert`/`tls_key`), and a tokio-postgres
//!   connector that trusts only it.
//! - [`TestPki`]: a CA, a node certificate it signed, a client
//!   certificate it signed, and an unrelated CA, for `[server_tls]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::TempDir;

/// A certificate and key on disk, and the client config trusting it.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub client: Arc<rustls::ClientConfig>,
    _dir: TempDir,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = TempDir::new("tls");
        let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("generate certificate");
        let cert_path = dir.path().join("server.crt");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .expect("add root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TestCert {
            cert_path,
            key_path,
            client: Arc::new(client),
            _dir: dir,
        }
    }

    pub fn connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new((*self.client).clone())
    }
}

/// A small PKI, in memory until [`TestPki::write`]. The node certificate
/// names `localhost` only (no IP address), so `verify-full` passes for host
/// `localhost` and fails for host `127.0.0.1`, while `verify-ca` passes for
/// both.
pub struct TestPki {
    /// The CA (for the nodes' `ssl_ca_file` and `sslrootcert`).
    pub ca_pem: String,
    /// The node's certificate and key, for `server.crt`/`server.key`.
    pub node_cert_pem: String,
    pub node_key_pem: String,
    /// lagrouter's client certificate (CN `app`) and key, signed by the CA.
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// A CA that signed nothing here.
    pub other_ca_pem: String,
}

/// Where [`TestPki::write`] put the files lagrouter reads.
pub struct PkiFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        let (other, _) = make_ca("some other CA");
        let (ca, ca_key) = make_ca("lagrouter test CA");
        let signed = |names: Vec<String>, cn: &str| {
            let mut p = CertificateParams::new(names).expect("certificate params");
            p.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().expect("key pair");
            let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (node_cert_pem, node_key_pem) = signed(vec!["localhost".into()], "localhost");
        let (client_cert_pem, client_key_pem) = signed(Vec::new(), "app");
        TestPki {
            ca_pem: ca.pem(),
            node_cert_pem,
            node_key_pem,
            client_cert_pem,
            client_key_pem,
            other_ca_pem: other.pem(),
        }
    }

    /// Writes the files lagrouter reads into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> PkiFiles {
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        PkiFiles {
            ca: write("root.crt", &self.ca_pem),
            client_cert: write("client.crt", &self.client_cert_pem),
            client_key: write("client.key", &self.client_key_pem),
            other_ca: write("other.crt", &self.other_ca_pem),
        }
    }
}

fn make_ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("CA key");
    (p.self_signed(&key).expect("self-sign CA"), key)
}
