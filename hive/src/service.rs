//! The `rbee.v1.Hive` gRPC handlers: thin, they admit, convert and hand over to the
//! domain.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rbee_proto::v1 as pb;
use rbee_proto::v1::hive_server::Hive;
use tonic::{Request, Response, Status, Streaming};

use rbee_shared::convert::models::{model_id_from_wire, source_from_wire};

use crate::HiveError;
use crate::convert;
use crate::models::serve::PeerServer;
use crate::models::{FetchOutcome, Models};
use crate::preload::Preloader;
use crate::stream::{Session, SessionContext};
use crate::stream_compact::CompactEgress;
use crate::streams::Streams;

/// The Hive service.
#[derive(Clone)]
pub struct HiveService {
    /// Everything a session needs.
    ctx: SessionContext,
    /// Stream admission.
    streams: Streams,
    /// The models directory, if this hive has one.
    models: Option<Models>,
    /// The preloader (with a models directory).
    preloader: Option<Preloader>,
    /// Serves model files to peers (with a models directory).
    peer_server: Option<PeerServer>,
    /// The address its listener is bound to.
    listen: Option<std::net::SocketAddr>,
}

impl HiveService {
    /// A service over the hive's shared context.
    pub fn new(ctx: SessionContext, streams: Streams, models: Option<Models>) -> Self {
        Self { ctx, streams, models, preloader: None, peer_server: None, listen: None }
    }

    /// With the address its listener is bound to (a fetch may not name it as a peer).
    pub fn with_listen(mut self, listen: std::net::SocketAddr) -> Self {
        self.listen = Some(listen);
        self
    }

    /// This hive as a FetchModel's peers may not name it.
    fn myself(&self) -> crate::models::peer_fetch::Myself {
        crate::models::peer_fetch::Myself {
            hive_id: self.ctx.identity.hive_id.clone(),
            listen: self.listen,
            advertised: Some(self.ctx.identity.advertised_address.clone()),
        }
    }

    /// With the preloader of PreloadModel and EvictModel.
    pub fn with_preloader(mut self, preloader: Option<Preloader>) -> Self {
        self.preloader = preloader;
        self
    }

    /// With the server of ReadModelFile (with a models directory).
    pub fn with_peer_server(mut self, peer_server: Option<PeerServer>) -> Self {
        self.peer_server = peer_server;
        self
    }

    fn preloader(&self) -> Result<&Preloader, Status> {
        self.preloader.as_ref().ok_or_else(|| HiveError::ModelsDisabled.into())
    }

    fn models(&self) -> Result<&Models, Status> {
        self.models.as_ref().ok_or_else(|| HiveError::ModelsDisabled.into())
    }
}

type HiveMessageStream = Pin<Box<dyn Stream<Item = Result<pb::HiveMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Hive for HiveService {
    async fn discover(
        &self,
        _request: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        let caps = self.ctx.telemetry.capabilities();
        let answer = pb::DiscoverResponse {
            identity: Some(self.ctx.identity.as_ref().into()),
            capabilities: Some(caps.as_ref().into()),
        };
        // The catalog's budget keeps this far below; say so loudly if it ever is not.
        let bytes = prost::Message::encoded_len(&answer);
        if bytes > rbee_shared::view_budget::MAX_DISCOVER_BYTES {
            tracing::error!(
                bytes,
                budget = rbee_shared::view_budget::MAX_DISCOVER_BYTES,
                "Discover answer over its budget"
            );
        }
        Ok(Response::new(answer))
    }

    type MetricsStreamStream = HiveMessageStream;

    async fn metrics_stream(
        &self,
        request: Request<Streaming<pb::QueenMessage>>,
    ) -> Result<Response<Self::MetricsStreamStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let slot = self.streams.admit(peer)?;
        let ctx = self.ctx.clone();
        let inbound = convert::inbound(request.into_inner());
        // Subscribing waits for the caller's first message, so it happens inside the
        // response stream: the caller gets headers at once, as gRPC clients expect.
        let stream = futures::stream::once(Session::subscribe(ctx, peer, inbound, slot))
            .map(|subscribed| -> HiveMessageStream {
                match subscribed {
                    Ok(Some(session)) => {
                        let mut edge = if session.wants_compact() {
                            CompactEgress::compact(session.delivered().map(|c| c.as_ref().clone()))
                        } else {
                            CompactEgress::whole()
                        };
                        Box::pin(session.into_stream().map(move |m| edge.outbound(m)))
                    }
                    Ok(None) => Box::pin(futures::stream::empty()),
                    Err(e) => Box::pin(futures::stream::once(async move { Err(e.into()) })),
                }
            })
            .flatten();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_model(
        &self,
        request: Request<pb::FetchModelRequest>,
    ) -> Result<Response<pb::FetchModelResponse>, Status> {
        let models = self.models()?;
        let caller = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        let id = model_id_from_wire("model_id", &r.model_id).map_err(HiveError::from)?;
        let source =
            r.source.as_ref().map(|s| source_from_wire(Some(s))).transpose().map_err(HiveError::from)?;
        let peers = crate::models::peer_fetch::check_peers(
            &r.peers,
            &r.peer_files,
            source.as_ref(),
            models.peer_dialer(),
            &self.myself(),
        )
        .map_err(HiveError::from)?;
        let accepted_at_unix_ms = rbee_shared::time::now_unix_ms();
        let outcome = models.fetch_with(&id, source, peers, caller)?;
        Ok(Response::new(pb::FetchModelResponse {
            accepted_at_unix_ms,
            joined: outcome == FetchOutcome::Joined,
            already_ready: outcome == FetchOutcome::AlreadyReady,
        }))
    }

    async fn cancel_fetch(
        &self,
        request: Request<pb::CancelFetchRequest>,
    ) -> Result<Response<pb::CancelFetchResponse>, Status> {
        let id = model_id_from_wire("model_id", &request.into_inner().model_id).map_err(HiveError::from)?;
        self.models()?.cancel(&id)?;
        Ok(Response::new(pb::CancelFetchResponse {}))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let id = model_id_from_wire("model_id", &request.into_inner().model_id).map_err(HiveError::from)?;
        self.models()?.delete(&id).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    async fn preload_model(
        &self,
        request: Request<pb::PreloadModelRequest>,
    ) -> Result<Response<pb::PreloadModelResponse>, Status> {
        let r = request.into_inner();
        let id = model_id_from_wire("model_id", &r.model_id).map_err(HiveError::from)?;
        let out = self.preloader()?.preload(&id, r.wait).await?;
        Ok(Response::new(pb::PreloadModelResponse {
            joined: out.joined,
            evicted: out.evicted,
            resident_bytes: out.resident_bytes,
            size_bytes: out.size_bytes,
        }))
    }

    async fn evict_model(
        &self,
        request: Request<pb::EvictModelRequest>,
    ) -> Result<Response<pb::EvictModelResponse>, Status> {
        let id = model_id_from_wire("model_id", &request.into_inner().model_id).map_err(HiveError::from)?;
        let resident_bytes = self.preloader()?.evict(&id).await?;
        Ok(Response::new(pb::EvictModelResponse { resident_bytes }))
    }

    type ReadModelFileStream = Pin<Box<dyn Stream<Item = Result<pb::ModelFileChunk, Status>> + Send>>;

    async fn read_model_file(
        &self,
        request: Request<pb::ReadModelFileRequest>,
    ) -> Result<Response<Self::ReadModelFileStream>, Status> {
        let server = self.peer_server.as_ref().ok_or(HiveError::ModelsDisabled)?;
        server.may_read(request.remote_addr(), request.peer_certs().is_some_and(|c| !c.is_empty()))?;
        let req = convert::file_request(request.into_inner())?;
        let chunks = server.read(req).await?;
        Ok(Response::new(Box::pin(chunks.map(|c| c.map(pb::ModelFileChunk::from).map_err(Status::from)))))
    }
}
