//! The `rbee.v1.Fleet` gRPC handlers: validate, call the fleet, convert back.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rbee_proto::v1 as pb;
use rbee_proto::v1::fleet_server::Fleet as FleetApi;
use rbee_shared::SampleInterval;
use tonic::{Request, Response, Status};

use super::convert::HivePage;
use super::journal::{Journal, JournalLimits};
use super::watch::{Resume, WatchSession, Watchers};
use crate::QueenError;
use crate::admission::{AdmissionSettings, RateLimit, admit_address};
use crate::fleet::{Fleet, Origin};
use crate::scheduler::Scheduler;
use crate::store::{HiveRecord, Store};

/// The Fleet service.
#[derive(Clone)]
pub struct FleetService {
    /// The fleet.
    fleet: Arc<Fleet>,
    /// The scheduler (its reservation events go to watchers).
    scheduler: Arc<Scheduler>,
    /// Which addresses may announce.
    admission: AdmissionSettings,
    /// Limits Announce calls.
    announces: Arc<RateLimit>,
    /// Bounds the open WatchFleet streams.
    watchers: Watchers,
    /// The numbered recent events WatchFleet streams send and resume from.
    journal: Arc<Journal>,
    /// Where hives added, announced and removed at run time are kept.
    store: Option<Arc<dyn Store>>,
}

impl FleetService {
    /// A service over `fleet`.
    pub fn new(fleet: Arc<Fleet>, scheduler: Arc<Scheduler>, admission: AdmissionSettings) -> Self {
        let announces = Arc::new(RateLimit::new(admission.announce_rate));
        let watchers = Watchers::new(admission.max_watchers);
        let journal =
            Arc::new(Journal::new(fleet.subscribe(), scheduler.subscribe(), JournalLimits::default()));
        Self { fleet, scheduler, admission, announces, watchers, journal, store: None }
    }

    /// Keeps at most these recent events for WatchFleet to resume from.
    pub fn with_journal_limits(self, limits: JournalLimits) -> Self {
        let journal = Arc::new(Journal::new(self.fleet.subscribe(), self.scheduler.subscribe(), limits));
        Self { journal, ..self }
    }

    /// Keeps hives added, announced and removed in `store` (none: kept in memory only).
    pub fn with_store(self, store: Option<Arc<dyn Store>>) -> Self {
        Self { store, ..self }
    }

    /// Writes a run-time change of the managed hives, durably, before it is answered.
    async fn keep(&self, address: &str, origin: Origin, removed: bool) -> Result<(), QueenError> {
        let Some(store) = self.store.clone() else { return Ok(()) };
        let origin = match origin {
            Origin::Announced => "announced",
            _ => "api",
        };
        let record = HiveRecord { address: address.to_owned(), origin: origin.into(), removed };
        tokio::task::spawn_blocking(move || store.keep_hive(&record))
            .await
            .map_err(|e| QueenError::Internal(format!("the state store writer failed: {e}")))??;
        Ok(())
    }
}

impl FleetService {
    /// Keeps a hive just added; when that fails, stops managing it again, so that the
    /// error leaves the fleet as it was and a retry adds (and keeps) it anew.
    async fn keep_or_undo(&self, address: &str, origin: Origin) -> Result<(), QueenError> {
        let kept = self.keep(address, origin, false).await;
        if kept.is_err() {
            let _ = self.fleet.remove(address);
        }
        kept
    }
}

fn key(raw: &str) -> Result<&str, QueenError> {
    let k = raw.trim();
    if k.is_empty() || k.len() > crate::fleet::address::MAX_ADDRESS_BYTES {
        return Err(QueenError::InvalidArgument(
            "hive must be a hive id or an address (1..=256 bytes)".into(),
        ));
    }
    Ok(k)
}

type FleetEventStream = Pin<Box<dyn Stream<Item = Result<pb::FleetEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FleetApi for FleetService {
    async fn list_hives(
        &self,
        request: Request<pb::ListHivesRequest>,
    ) -> Result<Response<pb::ListHivesResponse>, Status> {
        let page = HivePage::try_from(request.get_ref())?;
        let hives = self.fleet.list_after(page.after.as_deref(), page.size + 1);
        Ok(Response::new(page.response(&hives, &|h| self.scheduler.figures(h))))
    }

    async fn get_hive(&self, request: Request<pb::GetHiveRequest>) -> Result<Response<pb::HiveView>, Status> {
        let k = key(&request.get_ref().hive)?;
        let hive = self.fleet.get(k).ok_or_else(|| QueenError::NotFound(k.to_owned()))?;
        Ok(Response::new(super::convert::hive_view(&hive, &self.scheduler.figures(&hive))))
    }

    type WatchFleetStream = FleetEventStream;

    async fn watch_fleet(
        &self,
        request: Request<pb::WatchFleetRequest>,
    ) -> Result<Response<FleetEventStream>, Status> {
        let resume = request
            .get_ref()
            .resume_after_seq
            .map(|after| Resume { after, epoch: request.get_ref().resume_epoch });
        let every = match request.get_ref().sample_interval_ms {
            None | Some(0) => None,
            Some(ms) => {
                let d = Duration::from_millis(u64::from(ms));
                if SampleInterval::new(d).is_err() {
                    return Err(QueenError::InvalidArgument(format!(
                        "sample_interval_ms = {ms} is out of range: must be 0 (no samples) or 100..=60000"
                    ))
                    .into());
                }
                Some(d)
            }
        };
        let permit = self.watchers.admit()?;
        let session = WatchSession::new(
            self.fleet.clone(),
            &self.scheduler,
            self.journal.clone(),
            resume,
            every,
            permit,
        )?;
        Ok(Response::new(Box::pin(session.into_stream())))
    }

    async fn add_hive(
        &self,
        request: Request<pb::AddHiveRequest>,
    ) -> Result<Response<pb::AddHiveResponse>, Status> {
        let address = admit_address(&self.admission.allow, &request.get_ref().address).await?;
        let (hive, added) = self.fleet.add(&address, Origin::Api)?;
        if added {
            self.keep_or_undo(&hive.address, Origin::Api).await?;
        }
        Ok(Response::new(pb::AddHiveResponse { hive: Some(hive.as_ref().into()), added }))
    }

    async fn remove_hive(
        &self,
        request: Request<pb::RemoveHiveRequest>,
    ) -> Result<Response<pb::RemoveHiveResponse>, Status> {
        let k = key(&request.get_ref().hive)?;
        let hive = self.fleet.get(k).ok_or_else(|| QueenError::NotFound(k.to_owned()))?;
        // Durable first: a removal that cannot be kept changes nothing.
        self.keep(&hive.address, hive.origin, true).await?;
        let address = self.fleet.remove(&hive.address)?;
        Ok(Response::new(pb::RemoveHiveResponse { address }))
    }

    async fn announce(
        &self,
        request: Request<pb::AnnounceRequest>,
    ) -> Result<Response<pb::AnnounceResponse>, Status> {
        let req = request.get_ref();
        if !self.announces.try_acquire() {
            return Err(QueenError::ResourceExhausted("too many Announce calls; retry later".into()).into());
        }
        // Empty: the hive does not say who it is; otherwise the one hive-id rule.
        if !req.hive_id.is_empty()
            && let Err(e) = rbee_shared::identity::check_hive_id(&req.hive_id)
        {
            return Err(QueenError::InvalidArgument(format!("hive_id: {e}")).into());
        }
        let admitted = admit_address(&self.admission.allow, &req.address).await.and_then(|address| {
            match self.fleet.holder_of(&req.hive_id, &address).filter(|_| !req.hive_id.is_empty()) {
                Some(holder) => Err(QueenError::PermissionDenied(format!(
                    "hive id {:?} is already managed at {holder}; refusing an announce that claims it from {address}",
                    req.hive_id
                ))),
                None => Ok(address),
            }
        });
        let address = match admitted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(address = %req.address, hive_id = %req.hive_id, error = %e, "announce refused");
                return Err(e.into());
            }
        };
        let (hive, added) = self.fleet.add(&address, Origin::Announced)?;
        if added {
            tracing::info!(%address, hive_id = %req.hive_id, "hive announced itself");
            self.keep_or_undo(&hive.address, Origin::Announced).await?;
        }
        Ok(Response::new(pb::AnnounceResponse { added }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetSettings;
    use crate::link::{LinkSettings, Links};
    use crate::scheduler::SchedulerSettings;
    use crate::store::{Leader, TestStore};
    use tokio_util::sync::CancellationToken;

    /// AddHive, Announce and RemoveHive answer an error when their change cannot be
    /// kept, and then the fleet is as it was: no hive managed that a restart would
    /// forget, none dropped that a restart would bring back, and a retry is a new try
    /// (not "already managed").
    #[tokio::test]
    async fn a_change_that_cannot_be_kept_leaves_the_fleet_as_it_was() {
        let cancel = CancellationToken::new();
        let fleet = Fleet::new(FleetSettings::default(), cancel.clone(), Links::new(LinkSettings::default()));
        let scheduler = Scheduler::new(fleet.clone(), SchedulerSettings::default()).unwrap();
        let service = FleetService::new(fleet.clone(), scheduler, AdmissionSettings::default())
            .with_store(Some(Arc::new(TestStore { leader: Leader::Me, refused: TestStore::ALL })));

        for _ in 0..2 {
            let add = pb::AddHiveRequest { address: "127.0.0.1:9".into() };
            let refused = service.add_hive(Request::new(add)).await.unwrap_err();
            assert!(refused.message().contains("No space left"), "{}", refused.message());
            assert!(fleet.list().is_empty(), "a hive whose addition was not kept is not managed");
        }
        let announce = pb::AnnounceRequest { address: "127.0.0.1:9".into(), ..Default::default() };
        assert!(service.announce(Request::new(announce)).await.is_err());
        assert!(fleet.list().is_empty(), "an announce that was not kept is not managed");

        fleet.add("127.0.0.1:9", Origin::Static).unwrap();
        let remove = pb::RemoveHiveRequest { hive: "127.0.0.1:9".into() };
        assert!(service.remove_hive(Request::new(remove)).await.is_err());
        assert_eq!(fleet.list().len(), 1, "a hive whose removal was not kept stays managed");
        cancel.cancel();
    }
    /// WatchFleet resumes after a fleet_seq the journal holds, resets when it holds it no
    /// more (or the epoch is another queen's), and refuses a seq from the future.
    #[tokio::test]
    async fn watch_fleet_resumes_from_the_journal_or_resets() {
        use futures::StreamExt;
        let cancel = CancellationToken::new();
        let fleet = Fleet::new(FleetSettings::default(), cancel.clone(), Links::new(LinkSettings::default()));
        let scheduler = Scheduler::new(fleet.clone(), SchedulerSettings::default()).unwrap();
        let service = FleetService::new(fleet.clone(), scheduler, AdmissionSettings::default())
            .with_journal_limits(JournalLimits { max_events: 4, max_age: Duration::from_secs(60) });
        let watch = |after: Option<u64>, epoch: u64| {
            let req =
                pb::WatchFleetRequest { resume_after_seq: after, resume_epoch: epoch, ..Default::default() };
            service.watch_fleet(Request::new(req))
        };
        let first = watch(None, 0).await.unwrap().into_inner().next().await.unwrap().unwrap();
        assert!(matches!(first.event, Some(pb::fleet_event::Event::Snapshot(_))));
        let (seq, epoch) = (first.fleet_seq, first.queen_epoch);
        assert_ne!(epoch, 0);

        // Nothing happened since: the resumed stream has no snapshot, only what comes.
        let mut resumed = watch(Some(seq), epoch).await.unwrap().into_inner();
        fleet.add("127.0.0.1:9", Origin::Static).unwrap();
        let next = resumed.next().await.unwrap().unwrap();
        assert!(matches!(next.event, Some(pb::fleet_event::Event::HiveAdded(_))), "{next:?}");
        assert_eq!(next.fleet_seq, seq + 1);

        // From the future: refused, and nothing is opened.
        let ahead = watch(Some(next.fleet_seq + 1000), epoch).await.err().unwrap();
        assert_eq!(ahead.code(), tonic::Code::InvalidArgument);
        assert!(ahead.message().contains("resume_after_seq"), "{}", ahead.message());

        // Another queen's numbering: a reset snapshot.
        let other = watch(Some(seq), epoch ^ 1).await.unwrap().into_inner().next().await.unwrap().unwrap();
        let Some(pb::fleet_event::Event::Snapshot(s)) = other.event else { panic!("{other:?}") };
        assert!(s.reset && !s.coalesced);
        // No epoch: the queen cannot tell the seq is its own, so a reset snapshot too
        // (not this queen's events after a number another process gave out).
        let unknown = watch(Some(seq), 0).await.unwrap().into_inner().next().await.unwrap().unwrap();
        let Some(pb::fleet_event::Event::Snapshot(s)) = unknown.event else { panic!("{unknown:?}") };
        assert!(s.reset, "{s:?}");

        // More events than the journal holds: resuming from the first seq resets.
        for i in 10..20 {
            fleet.add(&format!("127.0.0.1:{i}"), Origin::Static).unwrap();
        }
        let gone = watch(Some(seq), epoch).await.unwrap().into_inner().next().await.unwrap().unwrap();
        let Some(pb::fleet_event::Event::Snapshot(s)) = gone.event else { panic!("{gone:?}") };
        assert!(s.reset, "{s:?}");
        assert_eq!(s.hives.len(), 11);
        assert!(gone.fleet_seq >= seq + 11, "the snapshot holds every event so far: {}", gone.fleet_seq);
        cancel.cancel();
    }
}
