//! Client-side TLS with rustls (ring provider).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::PrivateKeyDer};

/// Builds an acceptor from PEM certificate chain and key files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = {
        let data = std::fs::read(cert)
            .map_err(|e| format!("cannot read tls_cert {}: {e}", cert.display()))?;
        rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
    };
    if certs.is_empty() {
        return Err(format!(
            "tls_cert {} holds no PEM certificate",
            cert.display()
        ));
    }
    let key: PrivateKeyDer<'static> = {
        let data = std::fs::read(key)
            .map_err(|e| format!("cannot read tls_key {}: {e}", key.display()))?;
        rustls_pemfile::private_key(&mut data.as_slice())
            .map_err(|e| format!("tls_key {}: {e}", key.display()))?
            .ok_or_else(|| format!("tls_key {} holds no PEM private key", key.display()))?
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
