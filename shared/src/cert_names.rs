//! Certificate-bound hive ids: with mutual TLS, a hive may only claim a hive id that its
//! certificate carries. The queen holds the hives it dials to this rule, and a hive holds
//! the peers it reads model files from to it (hive `models::peer_fetch_dial`).
//!
//! The rule, in one function ([`CertNames::check`]): the hive id must be
//! - the `ID` of a URI SAN `rbee-hive-id:ID` (exact, case-sensitive), or
//! - one of its DNS SANs (ASCII case-insensitive; a wildcard name such as `*.gpu.lan`
//!   never matches: it would let one certificate claim a whole family of ids), or
//! - its subject common name (ASCII case-insensitive).
//!
//! The certificate is the one the hive presented on a TLS connection its caller dialed,
//! already verified against the hives' CA and the dialed host name.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI SAN prefix that names a hive id: `rbee-hive-id:gpu-node-7`.
pub const HIVE_ID_URI_PREFIX: &str = "rbee-hive-id:";

/// Why a hive's certificate does not let it be the hive it says it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The certificate is not valid DER X.509.
    #[error("the hive's certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The subjectAltName extension is malformed.
    #[error("the hive's certificate has a bad subjectAltName: {0}")]
    BadSubjectAltName(String),
    /// The id the hive claims is not among the certificate's names.
    #[error(
        "hive id {id:?} is not in the hive's TLS certificate ({carries}); with mutual TLS a hive may only \
         claim an id its certificate carries (a DNS name, the CN, or a {HIVE_ID_URI_PREFIX}ID URI)"
    )]
    NotBound {
        /// The id claimed (bounded).
        id: String,
        /// What the certificate carries (bounded).
        carries: String,
    },
}

/// Most names listed in a refusal (a certificate can carry many).
const NAMES_SHOWN: usize = 4;

/// Longest name shown in a refusal.
const NAME_BYTES_SHOWN: usize = 64;

/// The names in a hive's certificate that it may use as its hive id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// `ID`s of `rbee-hive-id:ID` URI SANs.
    ids: Vec<String>,
    /// DNS SANs, wildcards included (they are shown, never matched).
    dns: Vec<String>,
    /// The subject common name.
    common_name: Option<String>,
}

impl CertNames {
    /// The names in a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Unparsable(e.to_string()))?;
        let mut names = Self {
            common_name: cert.subject().iter_common_name().find_map(|cn| cn.as_str().ok()).map(str::to_owned),
            ..Self::default()
        };
        let san = cert.subject_alternative_name().map_err(|e| CertError::BadSubjectAltName(e.to_string()))?;
        for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
                GeneralName::URI(uri) => {
                    if let Some(id) = uri.strip_prefix(HIVE_ID_URI_PREFIX) {
                        names.ids.push(id.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(names)
    }

    /// Whether the certificate lets its hive claim `hive_id` (the rule in the module
    /// docs). The refusal says what the certificate does carry.
    pub fn check(&self, hive_id: &str) -> Result<(), CertError> {
        let same_name = |name: &str| !name.starts_with("*.") && name.eq_ignore_ascii_case(hive_id);
        let bound = self.ids.iter().any(|id| id == hive_id)
            || self.dns.iter().any(|dns| same_name(dns))
            || self.common_name.as_deref().is_some_and(same_name);
        if bound {
            return Ok(());
        }
        Err(CertError::NotBound { id: shorten(hive_id).to_owned(), carries: self.describe() })
    }

    /// What the certificate carries, bounded.
    fn describe(&self) -> String {
        let list = |names: &[String]| {
            let mut shown: Vec<String> =
                names.iter().take(NAMES_SHOWN).map(|n| format!("{:?}", shorten(n))).collect();
            if names.len() > NAMES_SHOWN {
                shown.push(format!("{} more", names.len() - NAMES_SHOWN));
            }
            shown.join(", ")
        };
        let mut parts = vec![];
        if !self.ids.is_empty() {
            parts.push(format!("hive ids {}", list(&self.ids)));
        }
        if !self.dns.is_empty() {
            parts.push(format!("DNS names {}", list(&self.dns)));
        }
        if let Some(cn) = &self.common_name {
            parts.push(format!("CN {:?}", shorten(cn)));
        }
        if parts.is_empty() {
            "it carries no names".into()
        } else {
            format!("it carries {}", parts.join("; "))
        }
    }
}

/// At most [`NAME_BYTES_SHOWN`] bytes of a name, cut on a character boundary.
fn shorten(name: &str) -> &str {
    let mut end = name.len().min(NAME_BYTES_SHOWN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> CertNames {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        CertNames::from_der(&der).unwrap()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn uri(name: &str) -> SanType {
        SanType::URI(name.try_into().unwrap())
    }

    #[test]
    fn a_dns_name_binds_its_id_in_any_case() {
        let names = cert(Some("other"), vec![dns("gpu-node-7"), dns("gpu-node-7.lan")]);
        assert!(names.check("gpu-node-7").is_ok());
        assert!(names.check("GPU-Node-7").is_ok());
        assert!(names.check("gpu-node-7.lan").is_ok());
        let err = names.check("gpu-node-8").unwrap_err().to_string();
        assert!(err.contains("\"gpu-node-8\" is not in the hive's TLS certificate"), "{err}");
        assert!(err.contains("DNS names \"gpu-node-7\", \"gpu-node-7.lan\""), "{err}");
    }

    #[test]
    fn the_common_name_binds_its_id() {
        let names = cert(Some("hive-a"), vec![]);
        assert!(names.check("hive-a").is_ok());
        assert!(names.check("hive-b").unwrap_err().to_string().contains("CN \"hive-a\""));
    }

    #[test]
    fn a_hive_id_uri_binds_exactly_that_id() {
        let names = cert(None, vec![uri("rbee-hive-id:Rack2-GPU"), uri("https://example.com/x")]);
        assert!(names.check("Rack2-GPU").is_ok());
        assert!(names.check("rack2-gpu").is_err(), "URI ids are exact");
        assert!(names.check("https://example.com/x").is_err(), "other URIs are not ids");
        assert!(names.check("").is_err());
    }

    #[test]
    fn wildcards_and_empty_certificates_bind_nothing() {
        let names = cert(None, vec![dns("*.gpu.lan")]);
        assert!(names.check("*.gpu.lan").is_err());
        assert!(names.check("a.gpu.lan").is_err());
        let err = cert(None, vec![]).check("x").unwrap_err().to_string();
        assert!(err.contains("carries no names"), "{err}");
    }

    #[test]
    fn a_refusal_is_bounded_whatever_the_certificate_carries() {
        let many: Vec<SanType> = (0..50).map(|i| dns(&format!("{}-{i}", "n".repeat(200)))).collect();
        let err = cert(Some(&"c".repeat(60)), many).check(&"x".repeat(1000)).unwrap_err().to_string();
        assert!(err.len() < 800, "{} bytes: {err}", err.len());
        assert!(err.contains("46 more"), "{err}");
    }

    #[test]
    fn the_certificates_queen_certs_makes_bind_the_hive_name() {
        let dir = std::env::temp_dir().join(format!("rbee-identity-{}", std::process::id()));
        crate::certs::generate(&dir, &["localhost".into()], &["gpu-node-1".into()]).unwrap();
        let pem = std::fs::read(dir.join("hive-gpu-node-1.pem")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let names = CertNames::from_der(&pem.contents).unwrap();
        assert!(names.check("gpu-node-1").is_ok());
        assert!(names.check("gpu-node-2").is_err());
    }
}
