//! Certificate-bound hive ids: the rule lives in [`rbee_shared::cert_names`] (the queen
//! holds the hives it dials to it; a hive holds its peers to it). The certificate is the
//! one the hive presented on the TLS connection the queen dialed, already verified
//! against `--hive-ca` and the dialed host name. A plaintext hive (loopback only while
//! `--hive-ca` is set) has no certificate and no binding: there, the first address to
//! report an id keeps it.

pub use rbee_shared::cert_names::{CertError, CertNames, HIVE_ID_URI_PREFIX};
