//! TLS for the connections lagrouter opens to the nodes (`[server_tls]` and
//! each node's `sslmode`): the settings, and the rustls client configs
//! built from their files when the configuration is loaded, so a missing
//! or unreadable certificate is a configuration error and no connection
//! reads a file.
//!
//! The modes mean what they mean to libpq:
//! - `disable`: plain TCP;
//! - `prefer`: TLS if the node offers it, else plain;
//! - `require`: TLS or no connection;
//! - `verify-ca`: TLS, and the node's certificate must chain to `sslrootcert`;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host.
//!
//! As in libpq, `prefer` and `require` check the chain when `sslrootcert`
//! is given (they then act as `verify-ca` once TLS is up) and check nothing
//! when it is not: that protects against eavesdropping, not impersonation.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

use crate::schema::{ServerTlsConfig, SslMode};

/// How to connect to one node: the mode and, unless it is `disable`, the
/// rustls config. Equal when the mode and the files' contents are equal,
/// so a reload that changes neither keeps existing connections.
#[derive(Clone)]
pub struct NodeTls {
    pub mode: SslMode,
    /// `None` for `disable` (or a config that failed validation).
    pub client: Option<Arc<ClientConfig>>,
    fingerprint: u64,
}

impl NodeTls {
    /// Plain TCP.
    pub fn disabled() -> NodeTls {
        NodeTls {
            mode: SslMode::Disable,
            client: None,
            fingerprint: 0,
        }
    }
}

impl NodeTls {
    /// A mode whose files are missing: every connection fails.
    pub fn unusable(mode: SslMode) -> NodeTls {
        NodeTls {
            mode,
            client: None,
            fingerprint: u64::MAX,
        }
    }
}

impl PartialEq for NodeTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.fingerprint == other.fingerprint
    }
}

impl Eq for NodeTls {}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeTls({})", self.mode)
    }
}

/// The client configs `[server_tls]` allows, built once per load.
#[derive(Clone)]
pub struct ServerTls {
    /// Checks nothing (no `sslrootcert`) or the chain only.
    chain_or_none: Arc<ClientConfig>,
    /// Chain and host name; `None` without `sslrootcert`.
    full: Option<Arc<ClientConfig>>,
    fingerprint: u64,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("verifies", &self.full.is_some())
            .finish()
    }
}

impl Default for ServerTls {
    /// No files: TLS without certificate checks, for `prefer` and `require`.
    fn default() -> Self {
        ServerTls::load(&ServerTlsConfig::default()).expect("no files to read")
    }
}

impl ServerTls {
    /// Reads the files `c` names and builds the client configs. The error
    /// names the key and the file.
    pub fn load(c: &ServerTlsConfig) -> Result<ServerTls, (&'static str, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut hasher = DefaultHasher::new();
        let roots = match &c.sslrootcert {
            Some(path) => {
                let pem = read("sslrootcert", path)?;
                pem.hash(&mut hasher);
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs("sslrootcert", path, &pem)? {
                    roots.add(cert).map_err(|e| {
                        (
                            "sslrootcert",
                            format!("{}: not a usable CA certificate: {e}", path.display()),
                        )
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let identity = match (&c.sslcert, &c.sslkey) {
            (Some(cert), Some(key)) => {
                let cert_pem = read("sslcert", cert)?;
                let key_pem = read("sslkey", key)?;
                cert_pem.hash(&mut hasher);
                key_pem.hash(&mut hasher);
                let chain = certs("sslcert", cert, &cert_pem)?;
                let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
                    .map_err(|e| ("sslkey", format!("{}: {e}", key.display())))?
                    .ok_or_else(|| {
                        (
                            "sslkey",
                            format!("{} holds no PEM private key", key.display()),
                        )
                    })?;
                Some((chain, key))
            }
            _ => None,
        };
        let build = |verifier: Arc<dyn ServerCertVerifier>| {
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| ("sslmode", e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let config = match &identity {
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| {
                        (
                            "sslkey",
                            format!("sslcert and sslkey do not fit together: {e}"),
                        )
                    })?,
                None => builder.with_no_client_auth(),
            };
            Ok::<_, (&'static str, String)>(Arc::new(config))
        };
        let algorithms = provider.signature_verification_algorithms;
        let (chain_or_none, full) = match roots {
            Some(roots) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| ("sslrootcert", e.to_string()))?;
                let chain = Lenient {
                    chain: Some(webpki.clone()),
                    algorithms,
                };
                (build(Arc::new(chain))?, Some(build(webpki)?))
            }
            None => {
                let any = Lenient {
                    chain: None,
                    algorithms,
                };
                (build(Arc::new(any))?, None)
            }
        };
        Ok(ServerTls {
            chain_or_none,
            full,
            fingerprint: hasher.finish(),
        })
    }

    /// The settings for a node whose effective mode is `mode`. `None`
    /// when the mode needs `sslrootcert` and there is none (validation
    /// refuses such a config).
    pub fn for_mode(&self, mode: SslMode) -> Option<NodeTls> {
        let client = match mode {
            SslMode::Disable => return Some(NodeTls::disabled()),
            SslMode::Prefer | SslMode::Require => self.chain_or_none.clone(),
            SslMode::VerifyCa => self.full.as_ref().map(|_| self.chain_or_none.clone())?,
            SslMode::VerifyFull => self.full.clone()?,
        };
        Some(NodeTls {
            mode,
            client: Some(client),
            fingerprint: self.fingerprint,
        })
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, (&'static str, String)> {
    std::fs::read(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))
}

fn certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The certificate check of `verify-ca` (`chain` set: the chain must
/// verify, the name is not looked at) and of `prefer`/`require` without
/// `sslrootcert` (`chain` unset: any certificate, as libpq). Either way the
/// handshake signatures are checked, so the peer holds the key of the
/// certificate it shows.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // WebPkiServerVerifier checks the chain first and the name last,
        // so a name error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
