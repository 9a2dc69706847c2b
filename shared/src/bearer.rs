//! The `authorization: Bearer TOKEN` header value, built in one place for every client
//! (the hive's announce, the queen's CLI).

use tonic::metadata::{Ascii, MetadataValue};

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// A token that cannot be sent in a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token has characters HTTP headers cannot carry")]
pub struct BearerError;

/// `Bearer TOKEN` as a header value (surrounding whitespace of the token trimmed).
pub fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, BearerError> {
    format!("Bearer {}", token.trim()).parse().map_err(|_| BearerError)
}

/// Adds the bearer header to a request.
pub fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), BearerError> {
    request.metadata_mut().insert(AUTHORIZATION, bearer_value(token)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_header() {
        assert_eq!(bearer_value(" secret\n").unwrap(), "Bearer secret");
        assert_eq!(bearer_value("bad\u{7f}token"), Err(BearerError));
        let mut r = tonic::Request::new(());
        authorize(&mut r, "t").unwrap();
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer t");
    }
}
