//! The queen's hard state in etcd v3, shared by several queens of which one leads.
//!
//! Keys, under a prefix (default `/rbee/queen/`):
//! - `leader`: the leader's advertised address, attached to its lease;
//! - `reservations/ID`: a reservation (JSON, as in the embedded store);
//! - `devices/ADDRESS#DEVICE`: the bytes the reservations on that device hold in all;
//! - `hives/ADDRESS`: a hive added, announced or removed at run time;
//! - `facts/policy`: the last accepted policy.
//!
//! Every write is one transaction guarded by the leader's lease (`lease(leader) ==
//! mine`): a queen that lost its lease writes nothing. A new reservation also compares
//! its device's total (`mod_revision`) and checks it against the device's capacity, so
//! that even two queens that both believe they lead cannot promise one device twice.
//! The election itself (lease, campaign, renewal) is driven by `crate::ha`; this module
//! holds its primitives and the role they reached.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::watch;

use super::backend::{Leader, Store};
use super::etcd_commit::SharedCombiner;
use super::records::encode;
use super::{HiveRecord, PolicyRecord, ReservationRecord, Restored, StoreError};

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
}

impl EtcdSettings {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` into endpoints.
    pub fn parse_endpoints(url: &str) -> Result<Vec<String>, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("--store {url:?}: give etcd://HOST:PORT[,HOST:PORT...]"))?;
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .map(|hp| {
                let hp = hp.trim_end_matches('/');
                if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
                    Err(format!("--store {url:?}: {hp:?} is not HOST:PORT"))
                } else {
                    Ok(format!("http://{hp}"))
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

/// The renewal of a lease: its keeper and its answers.
pub type Renewal = (LeaseKeeper, LeaseKeepAliveStream);

/// The state in etcd.
pub struct EtcdStore {
    /// The client (cheap to clone; reconnects by itself).
    client: Client,
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
        let options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        let client = Client::connect(&settings.endpoints, Some(options))
            .await
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

    pub(super) fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client()
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
        Compare::lease(self.key(LEADER), CompareOp::Equal, lease)
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
        then: Vec<TxnOp>,
    ) -> Result<bool, StoreError> {
        when.push(self.fence(lease));
        let mut kv = self.client.kv_client();
        let done = kv.txn(Txn::new().when(when).and_then(then)).await.map_err(|e| self.err(e))?;
        if done.succeeded() {
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
        let got = self.client.kv_client().get(key, None).await.map_err(|e| self.err(e))?;
        Ok(match got.kvs().first() {
            Some(kv) => (kv.value_str().ok().and_then(|v| v.parse().ok()).unwrap_or(0), kv.mod_revision()),
            None => (0, 0),
        })
    }

    async fn forget_async(&self, id: &str) -> Result<(), StoreError> {
        let lease = self.my_lease()?;
        let key = self.key(&format!("reservations/{id}"));
        for _ in 0..COMMIT_TRIES {
            let got = self.client.kv_client().get(key.as_str(), None).await.map_err(|e| self.err(e))?;
            let Some(kv) = got.kvs().first() else { return Ok(()) };
            let r: ReservationRecord = decode(&key, kv.value()).map_err(|e| self.err(e))?;
            let device = self.device_key(&r.address, &r.device_id);
            let (reserved, revision) = self.device_total(&device).await?;
            let when = vec![
                Compare::mod_revision(device.as_str(), CompareOp::Equal, revision),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
            ];
            let then = vec![
                TxnOp::delete(key.as_str(), None),
                TxnOp::put(device.as_str(), reserved.saturating_sub(r.bytes).to_string(), None),
            ];
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
        let when =
            if must_exist { vec![Compare::version(key.as_str(), CompareOp::Greater, 0)] } else { Vec::new() };
        // A compare other than the fence that fails means the key is gone: nothing to do.
        self.guarded(lease, when, vec![TxnOp::put(key, value, None)]).await.map(|_| ())
    }

    /// Everything kept.
    pub async fn load(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        for kv in self.prefixed("reservations/").await? {
            restored.reservations.push(decode(kv.0.as_str(), &kv.1).map_err(|e| self.err(e))?);
        }
        for kv in self.prefixed("hives/").await? {
            restored.hives.push(decode(kv.0.as_str(), &kv.1).map_err(|e| self.err(e))?);
        }
        if let Some(kv) = self.prefixed("facts/policy").await?.into_iter().next() {
            restored.policy = Some(decode(kv.0.as_str(), &kv.1).map_err(|e| self.err(e))?);
        }
        Ok(restored)
    }

    async fn prefixed(&self, rest: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let got = self
            .client
            .kv_client()
            .get(self.key(rest), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        Ok(got
            .kvs()
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec()))
            .collect())
    }

    /// The leader's address and lease, if any queen leads.
    pub async fn current_leader(&self) -> Result<Option<(String, i64)>, StoreError> {
        let got = self.client.kv_client().get(self.key(LEADER), None).await.map_err(|e| self.err(e))?;
        Ok(got.kvs().first().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())))
    }

    /// Tries to become the leader: grants a lease and puts the leader key with it if no
    /// queen holds it.
    pub async fn campaign(&self) -> Result<Campaign, StoreError> {
        let mut client = self.client.clone();
        let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl, None).await.map_err(|e| self.err(e))?.id();
        let key = self.key(LEADER);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.settings.advertise.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let done = match client.txn(txn).await {
            Ok(done) => done,
            Err(e) => {
                let _ = client.lease_revoke(lease).await;
                return Err(self.err(e));
            }
        };
        if done.succeeded() {
            return Ok(Campaign::Won(lease));
        }
        let _ = client.lease_revoke(lease).await;
        let leader = done
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(got) => {
                    got.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        Ok(Campaign::Lost(leader))
    }

    /// Gives up a lease (and with it the leader key, if it holds it).
    /// A lease etcd no longer knows is given up already.
    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Opens the renewal of a lease.
    pub async fn renewal(&self, lease: i64) -> Result<Renewal, StoreError> {
        self.client.lease_client().keep_alive(lease).await.map_err(|e| self.err(e))
    }

    /// Watches the reservations (any change under `reservations/`).
    pub async fn watch_reservations(&self) -> Result<WatchStream, StoreError> {
        let key = self.key("reservations/");
        self.client
            .watch_client()
            .watch(key, Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))
    }
}

impl EtcdStore {
    /// Copies what an embedded store kept into etcd (`queen migrate`): only while no
    /// queen leads in this prefix and it holds no reservations yet, so that nothing is
    /// merged into promises made since. Returns how many reservations were copied.
    pub async fn import(&self, kept: &Restored) -> Result<usize, StoreError> {
        if let Some((at, _)) = self.current_leader().await? {
            return Err(
                self.err(format!("the queen at {at} leads on this prefix; stop every queen on it first"))
            );
        }
        let present = self.prefixed("reservations/").await?.len();
        if present > 0 {
            return Err(self.err(format!(
                "{present} reservations are already kept under {}; refusing to merge (use another --etcd-prefix)",
                self.settings.prefix
            )));
        }
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        let mut ops = Vec::new();
        for r in &kept.reservations {
            *totals.entry(self.device_key(&r.address, &r.device_id)).or_default() += r.bytes;
            ops.push(TxnOp::put(self.key(&format!("reservations/{}", r.id)), encode(r), None));
        }
        for (device, total) in totals {
            ops.push(TxnOp::put(device, total.to_string(), None));
        }
        for h in &kept.hives {
            ops.push(TxnOp::put(self.key(&format!("hives/{}", h.address)), encode(h), None));
        }
        if let Some(p) = &kept.policy {
            ops.push(TxnOp::put(self.key("facts/policy"), encode(p), None));
        }
        // etcd takes at most 128 operations per transaction; each batch re-checks that
        // no queen leads.
        let mut kv = self.client.kv_client();
        for batch in ops.chunks(100) {
            let txn = Txn::new()
                .when([Compare::create_revision(self.key(LEADER), CompareOp::Equal, 0)])
                .and_then(batch.to_vec());
            if !kv.txn(txn).await.map_err(|e| self.err(e))?.succeeded() {
                return Err(self.err("a queen started leading during the copy; the copy is incomplete"));
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

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the record {key:?} is unreadable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_into_endpoints() {
        assert_eq!(
            EtcdSettings::parse_endpoints("etcd://127.0.0.1:2379,10.0.0.2:2379").unwrap(),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in ["http://h:2379", "etcd://", "etcd://h", "etcd://h:1/x"] {
            assert!(EtcdSettings::parse_endpoints(bad).is_err(), "{bad}");
        }
    }
}
