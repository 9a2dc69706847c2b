//! The queen's hard state in etcd v3, shared by several queens of which one leads.
//!
//! Keys, under a prefix (default `/rbee/queen/`):
//! - `leader`: the leader's advertised address, attached to its lease;
//! - `reservations/ID`: a reservation (JSON, as in the embedded store);
//! - `devices/ADDRESS#DEVICE`: the bytes the reservations on that device hold in all;
//! - `hives/ADDRESS`: a hive added, announced or removed at run time;
//! - `facts/policy`: the last accepted policy;
//! - `ended/ID`: a keyed reservation that ended, kept for the request-id grace.
//!
//! Every write is one transaction guarded by the leader's lease (`lease(leader) ==
//! mine`): a queen that lost its lease writes nothing. A new reservation also compares
//! its device's total (`mod_revision`) and checks it against the device's capacity, so
//! that even two queens that both believe they lead cannot promise one device twice.
//! The election itself (lease, campaign, renewal) is driven by `crate::ha`; this module
//! holds its primitives and the role they reached.

// New reservations reach etcd in batches: an extension of `EtcdStore`, in its own file.
mod commit;

use std::future::Future;
use std::time::Duration;

use rbee_proto::etcd::response_op::Response;
use rbee_proto::etcd::{Compare, RequestOp};
use tokio::sync::watch;

use super::backend::{Leader, Store};
use super::etcd_api::{self as api, EtcdClient, EtcdTls, KeepAlive, Watcher};
use super::records::encode;
use super::{EndedRecord, HiveRecord, PolicyRecord, ReservationRecord, Restored, StoreError};
use commit::SharedCombiner;

/// The leader key, under the prefix.
const LEADER: &str = "leader";
/// How often a commit whose device changed under it is tried again before giving up
/// (each try is a fresh read; one of the racing writers always wins, and the whole is
/// bounded by the request deadline too).
const COMMIT_TRIES: usize = 64;

/// How to reach etcd and take part in the election.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `http://HOST:PORT` endpoints.
    pub endpoints: Vec<String>,
    /// Key prefix of this queen group.
    pub prefix: String,
    /// This queen's address as clients should dial it (`http://HOST:PORT`).
    pub advertise: String,
    /// The leader lease's TTL.
    pub lease_ttl: Duration,
    /// TLS to etcd (`None`: plain HTTP/2).
    pub tls: Option<EtcdTls>,
}

impl EtcdSettings {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` into endpoints (https ones with `tls`).
    pub fn parse_endpoints(url: &str, tls: bool) -> Result<EndpointUrls, EndpointsError> {
        let scheme = if tls { "https" } else { "http" };
        let rest = url.strip_prefix("etcd://").ok_or_else(|| EndpointsError::NotEtcd(url.to_owned()))?;
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .map(|hp| {
                let hp = hp.trim_end_matches('/');
                if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
                    Err(EndpointsError::NotHostPort { url: url.to_owned(), part: hp.to_owned() })
                } else {
                    Ok(format!("{scheme}://{hp}"))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(endpoints)
    }
}

/// Where this queen stands in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads, holding this lease.
    Leader {
        /// The lease the leader key is attached to.
        lease: i64,
    },
    /// It follows: who leads, or why nobody is known to.
    Follower(Leader),
}

/// The result of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This queen leads with this lease.
    Won(i64),
    /// Another queen leads, at this address.
    Lost(String),
}

/// The renewal of a lease.
pub type Renewal = KeepAlive;

/// The state in etcd.
pub struct EtcdStore {
    /// The client (cheap to clone; reconnects by itself).
    client: EtcdClient,
    /// Settings.
    settings: EtcdSettings,
    /// The runtime the blocking [`Store`] methods run their requests on.
    runtime: tokio::runtime::Handle,
    /// The role now (set by `crate::ha`).
    role: watch::Sender<Role>,
    /// New reservations, batched (see `etcd_commit`).
    combiner: SharedCombiner,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A client for `settings` (connects lazily: etcd may be down now and come later).
    /// Must be called inside the runtime.
    pub async fn connect(settings: EtcdSettings) -> Result<Self, StoreError> {
        let timeout = request_timeout(settings.lease_ttl);
        let client = EtcdClient::connect(&settings.endpoints, timeout, settings.tls.as_ref())
            .map_err(|e| etcd_error(&settings.endpoints, e))?;
        let role = watch::channel(Role::Follower(Leader::Unknown("no election has run yet".into()))).0;
        let runtime = tokio::runtime::Handle::current();
        Ok(Self { client, settings, runtime, role, combiner: SharedCombiner::default() })
    }

    /// The settings.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Sets the role (the election's driver does).
    pub fn set_role(&self, role: Role) {
        self.role.send_if_modified(|now| {
            let changed = *now != role;
            *now = role;
            changed
        });
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.settings.prefix)
    }

    pub(super) fn device_key(&self, address: &str, device: &str) -> String {
        self.key(&format!("devices/{address}#{device}"))
    }

    pub(super) fn reservation_key(&self, id: &str) -> String {
        self.key(&format!("reservations/{id}"))
    }

    pub(super) fn combiner(&self) -> &SharedCombiner {
        &self.combiner
    }

    pub(super) fn client(&self) -> &EtcdClient {
        &self.client
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        etcd_error(&self.settings.endpoints, e)
    }

    pub(super) fn store_error(&self, e: impl std::fmt::Display) -> StoreError {
        self.err(e)
    }

    /// The lease to guard a write with, or why this queen may not write.
    pub(super) fn my_lease(&self) -> Result<i64, StoreError> {
        match self.role() {
            Role::Leader { lease } => Ok(lease),
            Role::Follower(leader) => Err(StoreError::NotLeader(leader)),
        }
    }

    /// The guard of every write: the leader key still carries this queen's lease.
    fn fence(&self, lease: i64) -> Compare {
        api::lease_is(self.key(LEADER), lease)
    }

    /// Runs `f` on the runtime from a blocking thread, within a deadline.
    pub(super) fn block<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let limit = self.settings.lease_ttl.max(Duration::from_secs(2));
        self.runtime.block_on(async {
            tokio::time::timeout(limit, f).await.unwrap_or_else(|_| Err(self.err("the request timed out")))
        })
    }

    /// A guarded transaction; `Ok(false)` when a compare failed while this queen still
    /// leads, `Err(NotLeader)` when it no longer does.
    pub(super) async fn guarded(
        &self,
        lease: i64,
        mut when: Vec<Compare>,
        then: Vec<RequestOp>,
    ) -> Result<bool, StoreError> {
        when.push(self.fence(lease));
        let done = self.client.txn(when, then, Vec::new()).await.map_err(|e| self.err(e))?;
        if done.succeeded {
            return Ok(true);
        }
        match self.current_leader().await? {
            Some((_, l)) if l == lease => Ok(false),
            Some((at, _)) => Err(StoreError::NotLeader(Leader::Other(at))),
            None => Err(StoreError::NotLeader(Leader::Unknown("the leader lease lapsed".into()))),
        }
    }

    /// A device's reserved total and the revision it was last changed at (0, 0 if none).
    async fn device_total(&self, key: &str) -> Result<(u64, i64), StoreError> {
        let got = self.client.get(key).await.map_err(|e| self.err(e))?;
        Ok(got.map_or((0, 0), |kv| (api::value_u64(&kv), kv.mod_revision)))
    }

    async fn forget_async(&self, id: &str) -> Result<(), StoreError> {
        let lease = self.my_lease()?;
        let key = self.key(&format!("reservations/{id}"));
        for _ in 0..COMMIT_TRIES {
            let got = self.client.get(key.as_str()).await.map_err(|e| self.err(e))?;
            let Some(kv) = got else { return Ok(()) };
            let r: ReservationRecord = decode(&key, &kv.value).map_err(|e| self.err(e))?;
            // Every device of a gang gives its bytes back in the same transaction.
            let mut when = vec![api::mod_revision_is(key.as_str(), kv.mod_revision)];
            let mut then = vec![api::delete(key.as_str())];
            for device in r.devices() {
                let device = self.device_key(&r.address, device);
                let (reserved, revision) = self.device_total(&device).await?;
                when.push(api::mod_revision_is(device.as_str(), revision));
                then.push(api::put(device.as_str(), reserved.saturating_sub(r.bytes).to_string(), 0));
            }
            if self.guarded(lease, when, then).await? {
                return Ok(());
            }
            back_off().await;
        }
        Err(self.err("the device's reserved total kept changing under concurrent commits"))
    }

    /// Puts `value` at `key` when it exists (`must_exist`) or in any case.
    async fn put_guarded(&self, key: String, value: Vec<u8>, must_exist: bool) -> Result<(), StoreError> {
        let lease = self.my_lease()?;
        let when = if must_exist { vec![api::exists(key.as_str())] } else { Vec::new() };
        // A compare other than the fence that fails means the key is gone: nothing to do.
        self.guarded(lease, when, vec![api::put(key, value, 0)]).await.map(|_| ())
    }

    /// Everything kept.
    pub async fn load(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        // An unreadable record is refused with its key (etcd answered: it is not down).
        for kv in self.prefixed("reservations/").await? {
            let r: ReservationRecord =
                decode(kv.0.as_str(), &kv.1).map_err(|e| StoreError::Refused(e.to_string()))?;
            if kv.0 != self.key(&format!("reservations/{}", r.id)) {
                return Err(StoreError::Refused(format!(
                    "the record {:?} is unreadable: its id {:?} is not its key",
                    kv.0, r.id
                )));
            }
            restored.reservations.push(r);
        }
        for kv in self.prefixed("hives/").await? {
            restored
                .hives
                .push(decode(kv.0.as_str(), &kv.1).map_err(|e| StoreError::Refused(e.to_string()))?);
        }
        if let Some(kv) = self.prefixed("facts/policy").await?.into_iter().next() {
            restored.policy =
                Some(decode(kv.0.as_str(), &kv.1).map_err(|e| StoreError::Refused(e.to_string()))?);
        }
        for kv in self.prefixed("ended/").await? {
            restored
                .ended
                .push(decode(kv.0.as_str(), &kv.1).map_err(|e| StoreError::Refused(e.to_string()))?);
        }
        Ok(restored)
    }

    async fn prefixed(&self, rest: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let got = self.client.get_prefix(self.key(rest)).await.map_err(|e| self.err(e))?;
        Ok(got.into_iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value)).collect())
    }

    /// The leader's address and lease, if any queen leads.
    pub async fn current_leader(&self) -> Result<Option<(String, i64)>, StoreError> {
        let got = self.client.get(self.key(LEADER)).await.map_err(|e| self.err(e))?;
        Ok(got.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease)))
    }

    /// Tries to become the leader: grants a lease and puts the leader key with it if no
    /// queen holds it.
    pub async fn campaign(&self) -> Result<Campaign, StoreError> {
        let client = &self.client;
        let ttl = i64::try_from(self.settings.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client.grant(ttl).await.map_err(|e| self.err(e))?;
        let key = self.key(LEADER);
        let when = vec![api::create_revision_is(key.as_str(), 0)];
        let then = vec![api::put(key.as_str(), self.settings.advertise.as_str(), lease)];
        let done = match client.txn(when, then, vec![api::get(key.as_str())]).await {
            Ok(done) => done,
            Err(e) => {
                let _ = client.revoke(lease).await;
                return Err(self.err(e));
            }
        };
        if done.succeeded {
            return Ok(Campaign::Won(lease));
        }
        let _ = client.revoke(lease).await;
        let leader = done
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(Response::ResponseRange(got)) => {
                    got.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        Ok(Campaign::Lost(leader))
    }

    /// Gives up a lease (and with it the leader key, if it holds it).
    /// A lease etcd no longer knows is given up already.
    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        match self.client.revoke(lease).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Opens the renewal of a lease.
    pub async fn renewal(&self, lease: i64) -> Result<Renewal, StoreError> {
        self.client.keep_alive(lease).await.map_err(|e| self.err(e))
    }

    /// Watches everything kept under the prefix (reservations, hives, the policy, the
    /// leader key).
    pub async fn watch_all(&self) -> Result<Watcher, StoreError> {
        self.client.watch_prefix(self.settings.prefix.as_str()).await.map_err(|e| self.err(e))
    }
}

impl EtcdStore {
    /// Copies what an embedded store kept into etcd (`queen migrate`): only while no
    /// queen leads in this prefix and it holds no reservations yet, so that nothing is
    /// merged into promises made since. Returns how many reservations were copied.
    pub async fn import(&self, kept: &Restored) -> Result<usize, StoreError> {
        if let Some((at, _)) = self.current_leader().await? {
            return Err(StoreError::Refused(format!(
                "the queen at {at} leads on the prefix {}; stop every queen on it first",
                self.settings.prefix
            )));
        }
        let present = self.prefixed("reservations/").await?.len();
        if present > 0 {
            return Err(StoreError::Refused(format!(
                "{present} reservations are already kept under {}; refusing to merge (use another --etcd-prefix)",
                self.settings.prefix
            )));
        }
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        let mut ops = Vec::new();
        for r in &kept.reservations {
            for device in r.devices() {
                *totals.entry(self.device_key(&r.address, device)).or_default() += r.bytes;
            }
            ops.push(api::put(self.key(&format!("reservations/{}", r.id)), encode(r), 0));
        }
        for (device, total) in totals {
            ops.push(api::put(device, total.to_string(), 0));
        }
        for h in &kept.hives {
            ops.push(api::put(self.key(&format!("hives/{}", h.address)), encode(h), 0));
        }
        if let Some(p) = &kept.policy {
            ops.push(api::put(self.key("facts/policy"), encode(p), 0));
        }
        for e in &kept.ended {
            ops.push(api::put(self.key(&format!("ended/{}", e.id)), encode(e), 0));
        }
        // etcd takes at most 128 operations per transaction; each batch re-checks that
        // no queen leads.
        for batch in ops.chunks(100) {
            let when = vec![api::create_revision_is(self.key(LEADER), 0)];
            let done = self.client.txn(when, batch.to_vec(), Vec::new()).await.map_err(|e| self.err(e))?;
            if !done.succeeded {
                return Err(StoreError::Refused(
                    "a queen started leading during the copy; the copy is incomplete".into(),
                ));
            }
        }
        Ok(kept.reservations.len())
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd at {}", self.settings.endpoints.join(","))
    }

    fn commit_placed(&self, record: &ReservationRecord, device_total: u64) -> Result<(), StoreError> {
        self.commit_combined(record, device_total)
    }

    fn update_reservations(&self, records: &[ReservationRecord]) -> Result<(), StoreError> {
        self.block(async {
            for r in records {
                self.put_guarded(self.key(&format!("reservations/{}", r.id)), encode(r), true).await?;
            }
            Ok(())
        })
    }

    fn forget_reservations(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.block(async {
            for id in ids {
                self.forget_async(id).await?;
            }
            Ok(())
        })
    }

    fn keep_ended(&self, records: &[EndedRecord]) -> Result<(), StoreError> {
        self.block(async {
            for r in records {
                self.put_guarded(self.key(&format!("ended/{}", r.id)), encode(r), false).await?;
            }
            Ok(())
        })
    }

    fn forget_ended(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.block(async {
            let lease = self.my_lease()?;
            for id in ids {
                self.guarded(lease, Vec::new(), vec![api::delete(self.key(&format!("ended/{id}")))]).await?;
            }
            Ok(())
        })
    }

    fn keep_hive(&self, record: &HiveRecord) -> Result<(), StoreError> {
        self.block(self.put_guarded(self.key(&format!("hives/{}", record.address)), encode(record), false))
    }

    fn keep_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        self.block(self.put_guarded(self.key("facts/policy"), encode(record), false))
    }

    fn leader(&self) -> Leader {
        match self.role() {
            Role::Leader { .. } => Leader::Me,
            Role::Follower(leader) => leader,
        }
    }
}

/// A short, jittered pause before a commit tries again, so that writers racing for
/// one device do not keep colliding in lockstep.
async fn back_off() {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    tokio::time::sleep(Duration::from_micros(u64::from(nanos % 2_000))).await;
}

/// How long one etcd request may take: a third of the lease TTL (at least 500 ms).
fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

fn etcd_error(endpoints: &[String], e: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd { endpoints: endpoints.join(","), reason: e.to_string() }
}

fn decode<T: serde::Serialize + serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, UnreadableRecord> {
    super::records::decode(bytes).map_err(|source| UnreadableRecord { key: key.to_owned(), source })
}

/// A record in etcd that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the record {key:?} is unreadable: {source}")]
struct UnreadableRecord {
    /// Its key.
    key: String,
    /// What is wrong with it.
    source: super::records::DamagedRecord,
}

/// etcd endpoints as URLs (`http(s)://HOST:PORT`).
pub type EndpointUrls = Vec<String>;

/// Why `--store etcd://...` names no etcd endpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointsError {
    /// Not an `etcd://` URL.
    #[error("--store {0:?}: give etcd://HOST:PORT[,HOST:PORT...]")]
    NotEtcd(String),
    /// One of its parts is not `HOST:PORT`.
    #[error("--store {url:?}: {part:?} is not HOST:PORT")]
    NotHostPort {
        /// The URL.
        url: String,
        /// The part.
        part: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_into_endpoints() {
        assert_eq!(
            EtcdSettings::parse_endpoints("etcd://127.0.0.1:2379,10.0.0.2:2379", false).unwrap(),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(EtcdSettings::parse_endpoints("etcd://h:2379", true).unwrap(), ["https://h:2379"]);
        for bad in ["http://h:2379", "etcd://", "etcd://h", "etcd://h:1/x"] {
            assert!(EtcdSettings::parse_endpoints(bad, false).is_err(), "{bad}");
        }
    }
}
