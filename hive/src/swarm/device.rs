//! One simulated machine for the fleet simulator: host CPU and RAM and a set of GPUs
//! whose values move the way real ones do. Each GPU is idle, steady or in a burst;
//! utilisation eases towards its mode's target, temperature follows utilisation with
//! a lag of tens of seconds, power follows utilisation, and VRAM moves in model-sized
//! steps now and then. Nothing on a GPU jumps every second; utilisation and
//! temperature are whole numbers, as NVML reports them. The host's cores carry a
//! slowly moving load and each second's reading jitters around it, the load averages
//! are the kernel's exponential averages, and uptime runs on the simulation's clock.
//!
//! It is a [`DeviceSource`] (the whole machine: no sysinfo), so the simulated hive runs
//! the real monitor, stream and service code on top of it. Hot-plug is a shared
//! counter of present GPUs that the swarm changes. Its GPUs have the topology of a
//! [`Shape`] (none unless [`SimulatedHost::with_shape`] says otherwise).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rbee_shared::{
    Backend, Capabilities, ComputeCapability, CpuInfo, DeviceSourceKind, GpuDevice, GpuSample, LoadAverage,
    MigMode, Sample,
};

use crate::HiveError;
use crate::source::DeviceSource;
use crate::source::sim_topology::{Shape, Slot};

/// VRAM of every simulated GPU: 80 GiB.
pub const VRAM_TOTAL: u64 = 80 << 30;
/// RAM of every simulated host: 512 GiB.
pub const RAM_TOTAL: u64 = 512 << 30;
/// A model load or unload moves VRAM by a multiple of this (4 GiB).
const MODEL_STEP: u64 = 4 << 30;
/// Power limit, mW.
const POWER_LIMIT_MW: u32 = 700_000;
/// Idle power, mW.
const IDLE_POWER_MW: f32 = 60_000.0;
/// Ambient (idle) temperature, °C.
const AMBIENT_C: f32 = 32.0;
/// Seconds for temperature to close about two thirds of the gap to its target.
const THERMAL_TIME_CONSTANT_S: f32 = 30.0;
/// The kernel recomputes the load averages every 5 s (`LOAD_FREQ`).
const LOAD_EVERY_S: f32 = 5.0;
/// The kernel's decay factors per 5 s for the 1-, 5- and 15-minute load averages
/// (`EXP_1`, `EXP_5`, `EXP_15` in `include/linux/sched/loadavg.h`, over 2048).
const LOAD_DECAY: [f64; 3] = [1884.0 / 2048.0, 2014.0 / 2048.0, 2037.0 / 2048.0];
/// The simulated hosts have been up a day when the simulation starts, s.
const BOOTED_BEFORE_S: f64 = 86_400.0;

/// A small, fast, deterministic random number generator (xorshift64*): the simulator
/// needs plausible noise, not cryptography, and one per simulated host.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
}

/// What a GPU is doing now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Nothing running.
    Idle,
    /// Serving at a steady load.
    Steady(f32),
    /// A burst of work near full load.
    Burst,
}

/// One GPU's moving state.
#[derive(Debug, Clone)]
struct GpuState {
    /// Its static description.
    device: GpuDevice,
    /// What it is doing.
    mode: Mode,
    /// SM utilisation now, percent.
    util: f32,
    /// Temperature now, °C.
    temperature: f32,
    /// VRAM in use, bytes.
    vram_used: u64,
}

impl GpuState {
    fn new(host: u64, index: u32, rng: &mut Rng) -> Self {
        let vram_used = MODEL_STEP * (rng.next_u64() % 10);
        Self {
            device: GpuDevice {
                id: format!("GPU-{host:08x}-{index:04x}-sim"),
                index,
                name: "Simulated H100 80GB".into(),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x10 + index),
                compute_capability: Some(ComputeCapability { major: 9, minor: 0 }),
                vram_total_bytes: VRAM_TOTAL,
                driver_version: Some("simulated".into()),
                cuda_version: Some("12.4".into()),
                power_limit_mw: Some(POWER_LIMIT_MW),
                mig_mode: MigMode::Disabled,
                topology: Default::default(),
            },
            mode: if vram_used == 0 { Mode::Idle } else { Mode::Steady(20.0 + 60.0 * rng.unit()) },
            util: 0.0,
            temperature: AMBIENT_C,
            vram_used,
        }
    }

    /// Moves the state on by `dt` seconds.
    fn advance(&mut self, dt: f32, rng: &mut Rng) {
        // Mode changes are rare: a GPU keeps what it does for tens of seconds or more.
        self.mode = match self.mode {
            Mode::Idle if rng.chance(0.01 * dt) => Mode::Steady(20.0 + 60.0 * rng.unit()),
            Mode::Steady(_) if rng.chance(0.02 * dt) => Mode::Burst,
            Mode::Steady(_) if rng.chance(0.005 * dt) => Mode::Idle,
            Mode::Burst if rng.chance(0.1 * dt) => Mode::Steady(20.0 + 60.0 * rng.unit()),
            m => m,
        };
        let target = match self.mode {
            Mode::Idle => 0.0,
            Mode::Steady(t) => t,
            Mode::Burst => 97.0,
        };
        // Ease towards the target, with a little noise while busy.
        let noise = if self.mode == Mode::Idle { 0.0 } else { (rng.unit() - 0.5) * 1.5 };
        self.util = (self.util + (target - self.util) * (0.3 * dt).min(1.0) + noise).clamp(0.0, 100.0);
        let hot = AMBIENT_C + 0.45 * self.util;
        self.temperature += (hot - self.temperature) * (dt / THERMAL_TIME_CONSTANT_S).min(1.0);
        // Models load and unload now and then; idle GPUs sometimes free their memory.
        if rng.chance(0.003 * dt) {
            let steps = 1 + rng.next_u64() % 4;
            self.vram_used = (self.vram_used + steps * MODEL_STEP).min(VRAM_TOTAL - MODEL_STEP);
        } else if self.mode == Mode::Idle && self.vram_used > 0 && rng.chance(0.01 * dt) {
            self.vram_used = self.vram_used.saturating_sub(MODEL_STEP);
        }
    }

    fn sample(&self) -> GpuSample {
        let power = IDLE_POWER_MW + (POWER_LIMIT_MW as f32 - IDLE_POWER_MW) * self.util / 100.0;
        GpuSample {
            id: self.device.id.clone(),
            index: self.device.index,
            vram_used_bytes: Some(self.vram_used),
            vram_free_bytes: Some(VRAM_TOTAL - self.vram_used),
            // NVML reports utilisation in whole percents and temperature in whole °C.
            gpu_util_percent: Some(self.util.round()),
            mem_util_percent: Some((self.util * 0.6).round()),
            temperature_c: Some(self.temperature.round()),
            power_draw_mw: Some(power as u32),
            sm_clock_mhz: Some(if self.util > 1.0 { 1980 } else { 345 }),
            mem_clock_mhz: Some(2619),
            ecc_corrected_volatile: Some(0),
            ecc_uncorrected_volatile: Some(0),
            xid_events: Some(0),
            ..GpuSample::default()
        }
    }
}

/// A simulated machine (see the module docs).
pub struct SimulatedHost {
    /// Noise.
    rng: Rng,
    /// Every GPU it can have; the first `present` are plugged in.
    gpus: Vec<GpuState>,
    /// How many GPUs are plugged in (the swarm changes it for hot-plug).
    present: Arc<AtomicUsize>,
    /// Logical cores.
    cores: u32,
    /// Per-core utilisation now, percent: the load each core carries.
    core_util: Vec<f32>,
    /// Per-core utilisation as measured over the last second, percent: the load plus
    /// the jitter of when threads happened to run.
    core_read: Vec<f32>,
    /// RAM in use, bytes.
    ram_used: u64,
    /// The 1-, 5- and 15-minute load averages, as the kernel keeps them.
    load: [f64; 3],
    /// Seconds until the kernel's next load average update.
    load_due: f32,
    /// When the state last moved.
    last: Instant,
    /// Seconds since the host booted, on the simulation's clock (the sum of `step`s).
    up: f64,
    /// The topology shape of its GPUs.
    shape: Shape,
}

impl SimulatedHost {
    /// Host number `host` (seeds its noise and names its GPUs) with up to `max_gpus`
    /// GPUs, of which `present` are plugged in, and `cores` logical cores.
    pub fn new(host: u64, max_gpus: u32, present: Arc<AtomicUsize>, cores: u32) -> Self {
        let mut rng = Rng::new(host);
        let gpus = (0..max_gpus).map(|i| GpuState::new(host, i, &mut rng)).collect();
        let now = Instant::now();
        Self {
            gpus,
            present,
            cores,
            core_util: vec![5.0; cores as usize],
            core_read: vec![5.0; cores as usize],
            ram_used: RAM_TOTAL / 8,
            load: [0.05 * f64::from(cores); 3],
            load_due: LOAD_EVERY_S,
            last: now,
            up: BOOTED_BEFORE_S,
            rng,
            shape: Shape::None,
        }
    }

    /// The same host with its GPUs in `shape` (a box of all the GPUs it can have).
    pub fn with_shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    fn present(&self) -> usize {
        self.present.load(Ordering::Relaxed).min(self.gpus.len())
    }

    fn advance(&mut self) {
        let dt = self.last.elapsed().as_secs_f32().min(60.0);
        self.last = Instant::now();
        self.step(dt);
    }

    /// Moves every value on by `dt` seconds.
    pub fn step(&mut self, dt: f32) {
        let n = self.present();
        for gpu in &mut self.gpus[..n] {
            gpu.advance(dt, &mut self.rng);
        }
        // Host CPU follows the GPUs' work loosely (data loading), per core.
        let busy = self.gpus[..n].iter().map(|g| g.util).sum::<f32>() / n.max(1) as f32;
        for (core, read) in self.core_util.iter_mut().zip(&mut self.core_read) {
            let target = 3.0 + busy * 0.25;
            *core = (*core + (target - *core) * (0.2 * dt).min(1.0) + (self.rng.unit() - 0.5) * 2.0)
                .clamp(0.0, 100.0);
            // A second's reading jitters around the load, more so on a busier core
            // (threads run in bursts): about ±2 points at 5%, ±5 at 25%.
            *read = (*core + (self.rng.unit() - 0.5) * 2.0 * core.sqrt()).clamp(0.0, 100.0);
        }
        if self.rng.chance(0.01 * dt) {
            self.ram_used = (RAM_TOTAL / 16) * (1 + self.rng.next_u64() % 8);
        }
        // Load averages: every 5 s the kernel counts the runnable tasks (here: the busy
        // cores' share, give or take one task) and folds them into three exponential
        // averages, so the 5- and 15-minute values move slowly.
        self.load_due -= dt;
        while self.load_due <= 0.0 {
            self.load_due += LOAD_EVERY_S;
            let busy = self.core_util.iter().sum::<f32>() / 100.0;
            let active = f64::from((busy + self.rng.unit() * 2.0 - 1.0).round().max(0.0));
            for (avg, decay) in self.load.iter_mut().zip(LOAD_DECAY) {
                *avg = *avg * decay + active * (1.0 - decay);
            }
        }
        self.up += f64::from(dt);
    }
}

impl DeviceSource for SimulatedHost {
    fn kind(&self) -> DeviceSourceKind {
        DeviceSourceKind::Simulated
    }

    fn scan(&mut self, caps: &mut Capabilities) -> Result<(), HiveError> {
        caps.cpu = CpuInfo {
            model: "Simulated EPYC".into(),
            physical_cores: Some(self.cores / 2),
            logical_cores: self.cores,
        };
        caps.ram_total_bytes = RAM_TOTAL;
        caps.backends.push(Backend::Cpu);
        let n = self.present();
        if n > 0 {
            caps.backends.push(Backend::Cuda);
        }
        let slots: Vec<Slot> = self.gpus[..n]
            .iter()
            .enumerate()
            .map(|(pos, g)| Slot { pos, id: g.device.id.clone(), nvlink_up: true })
            .collect();
        // The box is the GPUs at start; the spare that hot-plug adds joins the last socket.
        let topology = self.shape.place(self.gpus.len().saturating_sub(1).max(1), &slots);
        caps.gpus.extend(
            self.gpus[..n]
                .iter()
                .zip(topology)
                .map(|(g, topology)| (g.device.id.clone(), GpuDevice { topology, ..g.device.clone() })),
        );
        Ok(())
    }

    fn sample(&mut self, sample: &mut Sample) -> Result<(), HiveError> {
        let window = self.last.elapsed();
        self.advance();
        self.fill(sample, window);
        Ok(())
    }
}

impl SimulatedHost {
    /// Writes the current values into `sample`, measured over `window`.
    pub fn fill(&self, sample: &mut Sample, window: std::time::Duration) {
        sample.cpu_window_ms = Some(u32::try_from(window.as_millis()).unwrap_or(u32::MAX));
        sample.cpu_percent = Some(self.core_read.iter().sum::<f32>() / self.cores.max(1) as f32);
        sample.cpu_per_core_percent = self.core_read.clone();
        // /proc/loadavg shows two decimals.
        let [one, five, fifteen] = self.load.map(|l| (l * 100.0).round() / 100.0);
        sample.load_average = Some(LoadAverage { one, five, fifteen });
        sample.ram_total_bytes = RAM_TOTAL;
        sample.ram_used_bytes = self.ram_used;
        sample.ram_available_bytes = RAM_TOTAL - self.ram_used;
        sample.swap_total_bytes = Some(0);
        sample.swap_used_bytes = Some(0);
        sample.uptime_s = Some(self.up as u64);
        let n = self.present();
        sample.gpus.extend(self.gpus[..n].iter().map(GpuState::sample));
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
