//! A development CA and certificates for a mutual-TLS fleet (rcgen).
//!
//! Two CAs keep the roles apart: the **queen CA** signs the queen's certificate (served
//! on its own port, and presented to hives as its client identity); the **hive CA**
//! signs each hive's server certificate. Hives trust the queen CA (`--client-ca`); the
//! queen trusts the hive CA (`--hive-ca`); CLI users trust the queen CA (`--ca`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose,
};

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A hive name that cannot be part of a file name.
    #[error("hive name {0:?} cannot be a file name")]
    BadName(String),
}

type Result<T> = std::result::Result<T, CertError>;

fn io(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io { path: path.to_owned(), source }
}

fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|e| io(&path, e))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io(&path, e))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(path)
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(String, String)> {
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.distinguished_name = dn;
    params.extended_key_usages = usages;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `queen-ca.pem`, `hive-ca.pem`, `queen.pem`/`queen.key` (for `queen_names`) and
/// `hive-NAME.pem`/`hive-NAME.key` for each hive name into `dir`. Returns the files.
pub fn generate(dir: &Path, queen_names: &[String], hive_names: &[String]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let queen_ca = ca("rbee queen CA (development)")?;
    let hive_ca = ca("rbee hive CA (development)")?;
    let mut files = vec![
        write(dir, "queen-ca.pem", &queen_ca.pem(), false)?,
        write(dir, "queen-ca.key", &queen_ca.key().serialize_pem(), true)?,
        write(dir, "hive-ca.pem", &hive_ca.pem(), false)?,
        write(dir, "hive-ca.key", &hive_ca.key().serialize_pem(), true)?,
    ];
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let (cert, key) = leaf(&queen_ca, queen_names, vec![ServerAuth, ClientAuth])?;
    files.push(write(dir, "queen.pem", &cert, false)?);
    files.push(write(dir, "queen.key", &key, true)?);
    for name in hive_names {
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(CertError::BadName(name.clone()));
        }
        let (cert, key) = leaf(&hive_ca, std::slice::from_ref(name), vec![ServerAuth])?;
        files.push(write(dir, &format!("hive-{name}.pem"), &cert, false)?);
        files.push(write(dir, &format!("hive-{name}.key"), &key, true)?);
    }
    Ok(files)
}
