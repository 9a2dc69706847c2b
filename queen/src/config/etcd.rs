//! TLS to etcd: flags shared by `queen serve` and `queen migrate`, read once at start
//! into [`EtcdTls`] (errors name the file).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::QueenError;
use crate::store::EtcdTls;

/// How to reach an etcd that serves TLS (`--store etcd://...` then speaks https).
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdTlsArgs {
    /// With --store etcd://: the CA (PEM) that signed etcd's server certificates; etcd is then reached over TLS.
    #[arg(long, env = "QUEEN_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// With --etcd-ca: this queen's client certificate (PEM), for an etcd started with --client-cert-auth.
    #[arg(long, env = "QUEEN_ETCD_CERT", value_name = "FILE", requires = "etcd_key", requires = "etcd_ca")]
    pub etcd_cert: Option<PathBuf>,
    /// With --etcd-cert: its private key (PEM).
    #[arg(long, env = "QUEEN_ETCD_KEY", value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    /// True when any of the flags is given.
    pub fn given(&self) -> bool {
        self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_key.is_some()
    }

    /// The TLS settings, read from the files; `None` without `--etcd-ca`.
    pub fn load(&self) -> Result<Option<EtcdTls>, QueenError> {
        let Some(ca) = &self.etcd_ca else {
            if self.given() {
                return Err(QueenError::Config("--etcd-cert and --etcd-key need --etcd-ca".into()));
            }
            return Ok(None);
        };
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(cert), Some(key)) => Some((read_pem(cert, "--etcd-cert")?, read_pem(key, "--etcd-key")?)),
            (None, None) => None,
            _ => return Err(QueenError::Config("--etcd-cert and --etcd-key go together".into())),
        };
        Ok(Some(EtcdTls { ca: read_pem(ca, "--etcd-ca")?, identity }))
    }
}

/// A PEM file's contents, or an error naming the flag and the file.
fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, QueenError> {
    let pem = std::fs::read(path)
        .map_err(|e| QueenError::Config(format!("{flag} {}: cannot read it: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(QueenError::Config(format!("{flag} {}: not a PEM file", path.display())));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_read_once_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let args = EtcdTlsArgs { etcd_ca: Some(ca.clone()), ..Default::default() };
        assert!(args.load().unwrap().unwrap().identity.is_none());
        assert!(EtcdTlsArgs::default().load().unwrap().is_none());

        let missing = dir.path().join("nope.pem");
        let err = EtcdTlsArgs { etcd_ca: Some(missing.clone()), ..Default::default() }.load().unwrap_err();
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        let err = EtcdTlsArgs { etcd_ca: Some(garbage), ..Default::default() }.load().unwrap_err();
        assert!(err.to_string().contains("not a PEM file"), "{err}");
        let err = EtcdTlsArgs { etcd_cert: Some(ca), ..Default::default() }.load().unwrap_err();
        assert!(err.to_string().contains("--etcd-ca"), "{err}");
    }
}
