//! The `rbee.v1.Scheduler` gRPC handlers: validate, call the scheduler, convert back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;
use rbee_proto::v1::scheduler_server::Scheduler as SchedulerApi;
use tonic::{Request, Response, Status};

use super::model_removal::{ModelRemover, Removal};
use super::models::ModelFetcher;
use super::preload::{ModelCache, source_of};
use crate::QueenError;
use crate::scheduler::Scheduler;
use crate::scheduler::request::{ListRequest, PlaceRequest, RenewRequest, page_token};

/// When the caller stops waiting: now plus the `grpc-timeout` it sent (1 to 8 digits
/// and a unit: H, M, S, m, u or n), or `None` when it sent none or an unreadable one.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// The Scheduler service.
#[derive(Clone)]
pub struct SchedulerService {
    /// The scheduler.
    scheduler: Arc<Scheduler>,
    /// Forwards FetchModel to hives (absent: FetchModel is UNIMPLEMENTED).
    models: Option<Arc<ModelFetcher>>,
    /// Preload, evict and prefetch on hives (absent: those are UNIMPLEMENTED).
    cache: Option<ModelCache>,
    /// CancelFetch and DeleteModel on hives (absent: those are UNIMPLEMENTED).
    remover: Option<ModelRemover>,
}

impl SchedulerService {
    /// A service over `scheduler`.
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler, models: None, cache: None, remover: None }
    }

    /// Serves PreloadModel, EvictModel and Place's prefetch with `cache`.
    pub fn with_cache(mut self, cache: ModelCache) -> Self {
        self.cache = Some(cache);
        self
    }

    fn cache(&self) -> Result<&ModelCache, Status> {
        self.cache.as_ref().ok_or_else(|| Status::unimplemented("this queen does not forward preloads"))
    }

    /// Serves CancelFetch and DeleteModel with `remover`.
    pub fn with_remover(mut self, remover: ModelRemover) -> Self {
        self.remover = Some(remover);
        self
    }

    fn remover(&self) -> Result<&ModelRemover, Status> {
        self.remover
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this queen does not forward model removals"))
    }

    /// Serves FetchModel with `models`.
    pub fn with_models(mut self, models: ModelFetcher) -> Self {
        self.models = Some(Arc::new(models));
        self
    }
}

#[tonic::async_trait]
impl SchedulerApi for SchedulerService {
    async fn place(&self, request: Request<pb::PlaceRequest>) -> Result<Response<pb::PlaceResponse>, Status> {
        let r = request.get_ref();
        let req = PlaceRequest { deadline: deadline_of(&request), ..PlaceRequest::try_from(r)? };
        let caller = request.remote_addr().map(|a| a.ip());
        let from = r.prefetch_from.as_deref().map(source_of).transpose()?;
        if r.prefetch {
            // A prefetch sends the model id to a hive: refuse a bad one here, up front.
            rbee_shared::convert::models::model_id_from_wire("model", &r.model)
                .map_err(|e| QueenError::InvalidArgument(format!("prefetch: {e}")))?;
        }
        let (model, dry_run) = (req.model.clone(), req.dry_run);
        let mut outcome = self.scheduler.place(req).await?;
        if let (crate::scheduler::Outcome::Placed(p), Some(cache), false) =
            (&mut outcome, &self.cache, dry_run)
            && !model.is_empty()
        {
            let limit = self.models.clone().map(|m| (m, caller));
            p.prefetching = cache.after_place(&p.hive_id, &model, r.prefetch, from, limit);
        }
        Ok(Response::new((&outcome).into()))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let id = request.get_ref().reservation_id.trim();
        if id.is_empty() || id.len() > 64 {
            return Err(QueenError::InvalidArgument("reservation_id must be 1..=64 bytes".into()).into());
        }
        let r = self.scheduler.release_durably(id.to_owned()).await?;
        Ok(Response::new(pb::ReleaseResponse { reservation: Some((&r).into()) }))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let req = RenewRequest::try_from(request.get_ref())?;
        let r = self.scheduler.renew_durably(req).await?;
        Ok(Response::new(pb::RenewResponse { reservation: Some((&r).into()) }))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let page = self.scheduler.reservations_page(&ListRequest::try_from(request.get_ref())?);
        Ok(Response::new(pb::ListReservationsResponse {
            reservations: page.reservations.iter().map(Into::into).collect(),
            next_page_token: page.next.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    async fn get_policy(
        &self,
        _: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyStatus>, Status> {
        Ok(Response::new((&self.scheduler.status()).into()))
    }

    async fn fetch_model(
        &self,
        request: Request<pb::ScheduleFetchRequest>,
    ) -> Result<Response<pb::ScheduleFetchResponse>, Status> {
        let models = self
            .models
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this queen does not forward fetches"))?;
        let caller = request.remote_addr().map(|a| a.ip());
        Ok(Response::new(models.fetch_for(request.get_ref(), caller).await?))
    }

    async fn preload_model(
        &self,
        request: Request<pb::ScheduleCacheRequest>,
    ) -> Result<Response<pb::ScheduleCacheResponse>, Status> {
        Ok(Response::new(self.cache()?.apply(request.get_ref(), false).await?))
    }

    async fn evict_model(
        &self,
        request: Request<pb::ScheduleCacheRequest>,
    ) -> Result<Response<pb::ScheduleCacheResponse>, Status> {
        Ok(Response::new(self.cache()?.apply(request.get_ref(), true).await?))
    }

    async fn cancel_fetch(
        &self,
        request: Request<pb::ScheduleModelRequest>,
    ) -> Result<Response<pb::ScheduleModelResponse>, Status> {
        Ok(Response::new(self.remover()?.apply(request.get_ref(), Removal::CancelFetch).await?))
    }

    async fn delete_model(
        &self,
        request: Request<pb::ScheduleModelRequest>,
    ) -> Result<Response<pb::ScheduleModelResponse>, Status> {
        Ok(Response::new(self.remover()?.apply(request.get_ref(), Removal::DeleteModel).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
        r
    }

    #[test]
    fn the_callers_deadline_comes_from_grpc_timeout() {
        let before = Instant::now();
        let d = deadline_of(&with_timeout("1500m")).unwrap();
        assert!(
            d >= before + Duration::from_millis(1500) && d <= Instant::now() + Duration::from_millis(1500)
        );
        assert!(deadline_of(&with_timeout("2H")).unwrap() >= before + Duration::from_secs(7200));
        assert!(deadline_of(&with_timeout("20S")).unwrap() >= before + Duration::from_secs(20));
        assert!(deadline_of(&with_timeout("5n")).is_some());
        for bad in ["", "m", "12", "1x", "123456789S", "-1S", "1.5S"] {
            assert!(deadline_of(&with_timeout(bad)).is_none(), "{bad:?}");
        }
        assert!(deadline_of(&Request::new(())).is_none());
    }
}
