//! The fleet simulator (`hive swarm`): many simulated hives in one process, for scale
//! tests and load benchmarks of the queen.
//!
//! Every simulated hive is a real hive server ([`crate::server::serve`]: the real
//! `rbee.v1.Hive` service, sessions and monitor) on its own loopback address
//! (127.1.x.y, one per hive), with its own id and a new epoch at every start. Only the
//! device source is simulated ([`device::SimulatedHost`]), and reflection is left out
//! (each server would build its own descriptor pool). All hives share one tokio
//! runtime and its timer wheel.
//!
//! Faults ([`Fault`]) pick hives by count or fraction: kill (the server and its
//! connections go away), silence (connections held, no samples), restart (a new
//! epoch on the same address), hot-plug (a GPU appears or goes), and hives announce to
//! a queen at a given rate when one is named.

pub mod args;
pub mod device;
pub mod fault;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use args::SwarmArgs;
pub use fault::{Action, Amount, Fault};

use crate::monitor::{GpuChoice, Monitor, Telemetry};
use crate::server::{ServeOptions, serve};
use crate::{HiveConfig, HiveError};
use device::SimulatedHost;

/// The first simulated hive's address; hive `i` is this plus `i`.
pub const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
/// How long a restarted hive keeps trying to bind its old address.
const REBIND_DEADLINE: Duration = Duration::from_secs(10);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// How many hives.
    pub count: usize,
    /// GPUs per hive at start (hot-plug adds one more, or takes it away again).
    pub gpus: u32,
    /// Logical CPU cores per hive.
    pub cores: u32,
    /// Hive ids are `PREFIX-00000`, `PREFIX-00001`, ...
    pub id_prefix: String,
    /// The first hive's IP; hive `i` serves on this plus `i`.
    pub first_address: Ipv4Addr,
    /// The port every hive listens on (0: any free port, kept across restarts).
    pub port: u16,
    /// A queen to announce to.
    pub queen: Option<String>,
    /// Hives started (and so announced) per second; 0 starts all at once.
    pub announce_rate: f64,
    /// The sample interval for subscribers that do not set one.
    pub sample_interval: Duration,
    /// Labels every hive reports.
    pub labels: BTreeMap<String, String>,
    /// The topology shape of every hive's GPUs.
    pub topology: crate::source::sim_topology::Shape,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            count: 10,
            gpus: 8,
            cores: 16,
            id_prefix: "sim".into(),
            first_address: FIRST_ADDRESS,
            port: 0,
            queen: None,
            announce_rate: 0.0,
            sample_interval: rbee_shared::DEFAULT_SAMPLE_INTERVAL,
            labels: BTreeMap::new(),
            topology: Default::default(),
        }
    }
}

/// The state a simulated hive is in, as faults left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimState {
    /// Serving and sampling.
    Running,
    /// Serving, connections held, no samples.
    Silenced,
    /// Gone.
    Killed,
}

/// One simulated hive.
struct SimHive {
    /// Its id.
    id: String,
    /// Where it serves.
    addr: SocketAddr,
    /// GPUs plugged in now.
    present: Arc<AtomicUsize>,
    /// Its monitor while it runs.
    telemetry: Option<Arc<Telemetry>>,
    /// The server task while it runs.
    task: Option<JoinHandle<Result<(), HiveError>>>,
    /// What faults left it in.
    state: SimState,
    /// Starts so far (1 after the first).
    starts: u64,
}

/// Many simulated hives (see the module docs).
pub struct Swarm {
    /// The configuration.
    config: SwarmConfig,
    /// The hives, in address order.
    hives: Vec<SimHive>,
}

fn address(first: Ipv4Addr, i: usize) -> Result<Ipv4Addr, HiveError> {
    u32::from(first)
        .checked_add(u32::try_from(i).unwrap_or(u32::MAX))
        .map(Ipv4Addr::from)
        .filter(|a| a.is_loopback())
        .ok_or_else(|| HiveError::Config(format!("hive {i} does not fit in 127.0.0.0/8 after {first}")))
}

async fn bind_until(addr: SocketAddr, deadline: Instant) -> Result<TcpListener, HiveError> {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() >= deadline => {
                return Err(HiveError::Config(format!("cannot listen on {addr}: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Swarm {
    /// Starts `config.count` hives (at `announce_rate` per second when given).
    pub async fn start(config: SwarmConfig) -> Result<Self, HiveError> {
        if config.count == 0 {
            return Err(HiveError::Config("a swarm needs at least one hive".into()));
        }
        // Check the last address first: fail before starting anything.
        address(config.first_address, config.count - 1)?;
        let mut swarm = Self { hives: Vec::with_capacity(config.count), config };
        let gap = (swarm.config.announce_rate > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / swarm.config.announce_rate));
        let mut next = Instant::now();
        for i in 0..swarm.config.count {
            let ip = address(swarm.config.first_address, i)?;
            let listener = bind_until(SocketAddr::from((ip, swarm.config.port)), Instant::now()).await?;
            let addr = listener.local_addr().map_err(|e| HiveError::Config(format!("{ip}: {e}")))?;
            let present = Arc::new(AtomicUsize::new(swarm.config.gpus as usize));
            swarm.hives.push(SimHive {
                id: format!("{}-{i:05}", swarm.config.id_prefix),
                addr,
                present,
                telemetry: None,
                task: None,
                state: SimState::Running,
                starts: 0,
            });
            if let Some(gap) = gap {
                tokio::time::sleep_until(next).await;
                next += gap;
            }
            swarm.launch(i, listener).await?;
        }
        Ok(swarm)
    }

    async fn launch(&mut self, i: usize, listener: TcpListener) -> Result<(), HiveError> {
        let c = &self.config;
        let hive = &mut self.hives[i];
        let host =
            SimulatedHost::new(i as u64 + (hive.starts << 32), c.gpus + 1, hive.present.clone(), c.cores)
                .with_shape(c.topology);
        let telemetry =
            Telemetry::start(Monitor::from_sources(vec![Box::new(host)], c.labels.clone())).await?;
        let mut config = HiveConfig::new(hive.id.clone(), GpuChoice::Nvml { lib: None });
        config.labels = c.labels.clone();
        config.default_interval = c.sample_interval;
        // Capabilities change only by hot-plug, which rescans at once.
        config.rescan_interval = Duration::from_secs(3600);
        config.queen = c.queen.clone();
        config.max_streams = 8;
        let options = ServeOptions { reflection: false };
        hive.task =
            Some(tokio::spawn(serve(config, listener, telemetry.clone(), options, std::future::pending())));
        hive.telemetry = Some(telemetry);
        hive.state = SimState::Running;
        hive.starts += 1;
        Ok(())
    }

    /// How many hives.
    pub fn len(&self) -> usize {
        self.hives.len()
    }

    /// True without hives (never, once started).
    pub fn is_empty(&self) -> bool {
        self.hives.is_empty()
    }

    /// Hive `i`'s id.
    pub fn id(&self, i: usize) -> &str {
        &self.hives[i].id
    }

    /// Hive `i`'s address as the queen dials it (`http://127.1.x.y:PORT`).
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.hives[i].addr)
    }

    /// Every hive's address, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// The state faults left hive `i` in.
    pub fn state(&self, i: usize) -> SimState {
        self.hives[i].state
    }

    /// GPUs hive `i` has plugged in now.
    pub fn gpus(&self, i: usize) -> usize {
        self.hives[i].present.load(Ordering::Relaxed)
    }

    /// The hives `amount` picks among those in `from` state, spread evenly over them.
    pub fn pick(&self, amount: Amount, from: SimState) -> Vec<usize> {
        let candidates: Vec<usize> = (0..self.len()).filter(|&i| self.hives[i].state == from).collect();
        let n = amount.of(candidates.len());
        (0..n).map(|k| candidates[k * candidates.len() / n.max(1)]).collect()
    }

    /// Applies `action` to `amount` of the hives it applies to; returns which.
    pub async fn apply(&mut self, action: Action, amount: Amount) -> Result<Vec<usize>, HiveError> {
        let from = match action {
            Action::Unsilence => SimState::Silenced,
            Action::Revive => SimState::Killed,
            _ => SimState::Running,
        };
        let picked = self.pick(amount, from);
        for &i in &picked {
            match action {
                Action::Kill => self.kill(i).await,
                Action::Silence => self.silence(i, true),
                Action::Unsilence => self.silence(i, false),
                Action::Restart | Action::Revive => self.restart(i).await?,
                Action::HotPlug => self.hot_plug(i).await?,
            }
        }
        Ok(picked)
    }

    /// Kills hive `i`: its server, connections and tasks go away at once.
    pub async fn kill(&mut self, i: usize) {
        let hive = &mut self.hives[i];
        if let Some(task) = hive.task.take() {
            task.abort();
            let _ = task.await;
        }
        hive.telemetry = None;
        hive.state = SimState::Killed;
    }

    /// Holds hive `i` silent (connections open, no samples), or lets it go.
    pub fn silence(&mut self, i: usize, silenced: bool) {
        let hive = &mut self.hives[i];
        if let Some(t) = &hive.telemetry {
            t.set_silenced(silenced);
            hive.state = if silenced { SimState::Silenced } else { SimState::Running };
        }
    }

    /// Restarts hive `i` on the same address with a new epoch (starts a killed one).
    pub async fn restart(&mut self, i: usize) -> Result<(), HiveError> {
        self.kill(i).await;
        let listener = bind_until(self.hives[i].addr, Instant::now() + REBIND_DEADLINE).await?;
        self.launch(i, listener).await
    }

    /// Plugs a GPU into hive `i`, or pulls it out again, and rescans at once.
    pub async fn hot_plug(&mut self, i: usize) -> Result<(), HiveError> {
        let hive = &self.hives[i];
        let gpus = self.config.gpus as usize;
        let now = hive.present.load(Ordering::Relaxed);
        hive.present.store(if now > gpus { gpus } else { gpus + 1 }, Ordering::Relaxed);
        if let Some(t) = &hive.telemetry {
            t.rescan().await?;
        }
        Ok(())
    }

    /// Stops every hive.
    pub async fn stop(mut self) {
        for i in 0..self.len() {
            self.kill(i).await;
        }
    }
}
