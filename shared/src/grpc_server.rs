//! What both gRPC servers share: reflection over the rbee contract (v1 and v1alpha,
//! for grpcurl 1.8.x), the transport settings (TLS, TCP_NODELAY, HTTP/2 windows), and
//! the shutdown hand-off.

use std::future::Future;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// The HTTP/2 flow-control window each stream grants its peer, bytes: the most a
/// caller can have in flight towards the server on one stream (callers send small
/// requests; a larger message waits for the server to read).
pub const STREAM_WINDOW_BYTES: u32 = 64 * 1024;

/// Largest message a queen or hive server accepts from a caller (requests and hive
/// streams are a few bytes to a few KiB). The one limit for both servers.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 64 * 1024;
/// The HTTP/2 window of a whole connection, bytes (all its streams together).
pub const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// The health service's name, as reflection lists it.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// The reflection services' names, as reflection lists them.
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// The descriptors reflection serves: rbee's, health's, and both reflection protocols'
/// own. (tonic-reflection's default adds only the descriptor of the version being
/// built, so a v1alpha client such as grpcurl 1.8 could list
/// `grpc.reflection.v1.ServerReflection` but not describe it: "Symbol not found".)
fn builder(services: Option<&[&str]>) -> Builder<'static> {
    let mut b = Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(rbee_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    if let Some(services) = services {
        for name in services.iter().copied().chain([HEALTH_SERVICE]).chain(REFLECTION_SERVICES) {
            b = b.with_service_name(name);
        }
    }
    b
}

/// Reflection v1 over the rbee and health descriptors, listing every service in them.
/// (Kept for the queen; a server should prefer [`reflection_v1_for`].)
pub fn reflection_v1() -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder(None).build_v1()
}

/// Reflection v1alpha (what grpcurl 1.8.x and grpcio-reflection speak), listing every
/// service. (Kept for the queen; a server should prefer [`reflection_v1alpha_for`].)
pub fn reflection_v1alpha() -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error>
{
    builder(None).build_v1alpha()
}

/// Reflection v1 that lists only `services` (fully qualified, e.g. `rbee.v1.Hive`),
/// health and reflection: the services this server really serves.
pub fn reflection_v1_for(
    services: &[&str],
) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder(Some(services)).build_v1()
}

/// Reflection v1alpha that lists only `services`, health and reflection.
pub fn reflection_v1alpha_for(
    services: &[&str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder(Some(services)).build_v1alpha()
}

/// How often both servers ping an idle connection.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// A connection whose peer does not answer a ping within this (for example a reader that
/// stopped reading its socket) is closed, and what was queued for it is freed.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A server builder, serving TLS when `tls` is given, HTTP/2 keepalive pings
/// ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]), TCP_NODELAY (replies are
/// not held back by Nagle's algorithm; serve [`incoming`] for a caller's listener) and
/// bounded HTTP/2 windows
/// ([`STREAM_WINDOW_BYTES`], [`CONNECTION_WINDOW_BYTES`]).
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server, tonic::transport::Error> {
    let builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    match tls {
        Some(tls) => builder.tls_config(tls),
        None => Ok(builder),
    }
}

/// The connections accepted on `listener`, each with TCP_NODELAY set. (tonic ignores
/// its own `tcp_nodelay` setting for a caller-supplied listener, which is how both
/// servers are started; without this a reply larger than one segment waits about
/// 40 ms for a delayed ACK.)
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    TcpListenerStream::new(listener).map(|accepted| {
        let socket = accepted?;
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        Ok(socket)
    })
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
