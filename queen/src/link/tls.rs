//! Mutual TLS for dialing hives: the hive CA the queen trusts (`--hive-ca`) and the
//! certificate it presents, read once at start into a rustls client configuration.

use std::path::Path;
use std::sync::Arc;

use rbee_shared::tls::read_pem_file;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::error::{BoxError, HiveTlsError};

/// Mutual TLS for dialing hives: trust the hive CA, present the queen's certificate.
#[derive(Clone)]
pub struct HiveTls {
    /// The rustls client configuration (ALPN h2).
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for HiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HiveTls").finish_non_exhaustive()
    }
}

impl HiveTls {
    /// The rustls client configuration, for the dialer's connector.
    pub(super) fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Trust the CA in `ca` (PEM) for hive certificates, and present `identity`
    /// (certificate and key PEM files) when given. Errors name the file.
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, HiveTlsError> {
        let mut roots = RootCertStore::empty();
        let ca_pem = read_pem_file(ca, "CA")?;
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(unusable("CA", ca))?;
            roots.add(cert).map_err(unusable("CA", ca))?;
        }
        if roots.is_empty() {
            return Err(HiveTlsError::EmptyCa(ca.to_owned()));
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(HiveTlsError::Setup)?
            .with_root_certificates(roots);
        let mut config =
            match identity {
                Some((cert, key)) => {
                    let cert_pem = read_pem_file(cert, "certificate")?;
                    let chain = CertificateDer::pem_slice_iter(&cert_pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(unusable("certificate", cert))?;
                    let key_pem = read_pem_file(key, "private key")?;
                    let key_der =
                        PrivateKeyDer::from_pem_slice(&key_pem).map_err(unusable("private key", key))?;
                    builder.with_client_auth_cert(chain, key_der).map_err(|source| {
                        HiveTlsError::Identity { cert: cert.to_owned(), key: key.to_owned(), source }
                    })?
                }
                None => builder.with_no_client_auth(),
            };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config) })
    }
}

/// The error for a PEM file whose content the TLS library refused.
fn unusable<E: Into<BoxError>>(what: &'static str, path: &Path) -> impl FnOnce(E) -> HiveTlsError + use<E> {
    let path = path.to_owned();
    move |e| HiveTlsError::Unusable { what, path, source: e.into() }
}
