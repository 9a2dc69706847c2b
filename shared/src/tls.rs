//! Loading TLS material (PEM files) into tonic's rustls configuration, with errors
//! that name the file.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Reads a PEM file; the error names the file and what it was for.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(format!("{what} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// A certificate and key as a TLS identity.
pub fn identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    Ok(Identity::from_pem(read_pem(cert, "certificate")?, read_pem(key, "private key")?))
}

/// Server TLS: this identity, and, with `client_ca`, mutual TLS that only admits
/// clients whose certificate chains to that CA.
pub fn server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTlsConfig, String> {
    let mut tls = ServerTlsConfig::new().identity(identity(cert, key)?);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem(ca, "client CA")?));
    }
    Ok(tls)
}

/// Client TLS: trust `ca` for the server, and present `identity` when given (mutual TLS).
/// The server's certificate must name the host being dialed.
pub fn client(ca: &Path, identity_files: Option<(&Path, &Path)>) -> Result<ClientTlsConfig, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca, "CA")?));
    if let Some((cert, key)) = identity_files {
        tls = tls.identity(identity(cert, key)?);
    }
    Ok(tls)
}
