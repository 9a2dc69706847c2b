//! Oversized messages are `RESOURCE_EXHAUSTED`, as gRPC specifies for message size
//! limits (tonic's decoder says `OUT_OF_RANGE`): a tower layer for both servers, and
//! [`is_too_large`] / [`normalize`] for what a client (the queen's dialer, the CLI)
//! received.

use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use tower::{Layer, Service};

/// The layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeLimitStatusLayer;

impl<S> Layer<S> for SizeLimitStatusLayer {
    type Service = SizeLimitStatus<S>;
    fn layer(&self, inner: S) -> SizeLimitStatus<S> {
        SizeLimitStatus { inner }
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct SizeLimitStatus<S> {
    /// The wrapped service.
    inner: S,
}

/// True for tonic's status for a message over the size limit: `OUT_OF_RANGE` "... too
/// large ..." (or already `RESOURCE_EXHAUSTED` with that text).
pub fn is_too_large(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted)
        && status.message().contains("too large")
}

/// `status`, with a message-size error turned into `RESOURCE_EXHAUSTED` (its text
/// kept); any other status as it is.
pub fn normalize(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && is_too_large(&status) {
        tonic::Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

/// gRPC status codes as they appear in the `grpc-status` header.
const OUT_OF_RANGE: &[u8] = b"11";
const RESOURCE_EXHAUSTED: &str = "8";

fn rewrite<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers();
    let too_large = h.get("grpc-status").is_some_and(|s| s.as_bytes() == OUT_OF_RANGE)
        && h.get("grpc-message").is_some_and(|m| {
            let m = String::from_utf8_lossy(m.as_bytes());
            m.contains("too large") || m.contains("too%20large")
        });
    if too_large {
        resp.headers_mut().insert("grpc-status", http::HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
    resp
}

impl<S, Req, B> Service<Req> for SizeLimitStatus<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req).map(|r| r.map(rewrite)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_size_errors_are_rewritten() {
        let resp = |code: &'static str, msg: &'static str| {
            http::Response::builder()
                .header("grpc-status", code)
                .header("grpc-message", msg)
                .body(())
                .unwrap()
        };
        let r = rewrite(resp("11", "Error,%20decoded%20message%20length%20too%20large"));
        assert_eq!(r.headers()["grpc-status"], "8");
        let r = rewrite(resp("11", "index out of range"));
        assert_eq!(r.headers()["grpc-status"], "11");
        let r = rewrite(resp("3", "too large"));
        assert_eq!(r.headers()["grpc-status"], "3");
    }

    #[test]
    fn a_client_side_size_error_becomes_resource_exhausted() {
        let decoded = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 8500000 bytes, the limit is: 4194304 bytes",
        );
        assert!(is_too_large(&decoded));
        let n = normalize(decoded);
        assert_eq!(n.code(), tonic::Code::ResourceExhausted);
        assert!(n.message().contains("8500000"));
        assert_eq!(normalize(tonic::Status::out_of_range("index")).code(), tonic::Code::OutOfRange);
    }
}
