//! Loading TLS material (PEM files) into tonic's rustls configuration, with errors
//! that name the file.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A PEM file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{what} {}: {source}", path.display())]
    Read {
        /// What the file was for ("CA", "certificate", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not PEM.
    #[error("{what} {}: not a PEM file", path.display())]
    NotPem {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// Reads a PEM file; the error names the file and what it was for.
pub fn read_pem_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes =
        std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::NotPem { what, path: path.to_owned() });
    }
    Ok(bytes)
}

/// A certificate and key as a TLS identity.
pub fn identity_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(read_pem_file(cert, "certificate")?, read_pem_file(key, "private key")?))
}

/// Server TLS: this identity, and, with `client_ca`, mutual TLS that only admits
/// clients whose certificate chains to that CA.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTlsConfig, TlsError> {
    let mut tls = ServerTlsConfig::new().identity(identity_files(cert, key)?);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem_file(ca, "client CA")?));
    }
    Ok(tls)
}

/// Client TLS: trust `ca` for the server, and present `identity` when given (mutual TLS).
/// The server's certificate must name the host being dialed.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTlsConfig, TlsError> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem_file(ca, "CA")?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(identity_files(cert, key)?);
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_its_role() {
        let err = client_config(Path::new("/nonexistent/ca.pem"), None).unwrap_err().to_string();
        assert!(err.contains("CA /nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("rbee-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not.pem");
        std::fs::write(&file, "hello").unwrap();
        assert!(matches!(read_pem_file(&file, "CA"), Err(TlsError::NotPem { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
