//! What both gRPC servers share: reflection over the rbee contract (v1 and v1alpha,
//! for grpcurl 1.8.x), TLS set-up, and the shutdown hand-off.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_reflection::server::{Builder, Error, v1, v1alpha};

fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(rbee_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Reflection v1 over the rbee and health descriptors.
pub fn reflection_v1() -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder().build_v1()
}

/// Reflection v1alpha (what grpcurl 1.8.x and grpcio-reflection speak).
pub fn reflection_v1alpha() -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error>
{
    builder().build_v1alpha()
}

/// A server builder, serving TLS when `tls` is given.
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server, tonic::transport::Error> {
    match tls {
        Some(tls) => Server::builder().tls_config(tls),
        None => Ok(Server::builder()),
    }
}

/// Cancels `token` when `shutdown` resolves (so servers and tasks that watch the token stop).
pub fn cancel_on(shutdown: impl Future<Output = ()> + Send + 'static, token: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => token.cancel(),
            () = token.cancelled() => {}
        }
    });
}
