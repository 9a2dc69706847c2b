//! The library's global state: the scenario loaded by `nvmlInit_v2`, the time it was
//! loaded (scenario time zero), and the event sets. Every exported function goes
//! through [`call`] or [`device_call`], which apply the scenario's faults in the order
//! the real driver would meet them: not initialised, symbol "missing", unknown handle,
//! GPU lost, function not supported.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings as sys;

use crate::codes::ErrorCode;
use crate::scenario::{Gpu, Scenario};

/// The environment variable naming the scenario file.
pub const SCENARIO_ENV: &str = "RBEE_FAKE_NVML_SCENARIO";

/// One event set: the GPUs registered on it and the events already delivered.
#[derive(Debug, Default)]
pub struct EventSet {
    /// Positions (in the scenario) of the GPUs registered for XID events.
    pub registered: HashSet<usize>,
    /// (GPU position, XID number in its list) already delivered.
    pub delivered: HashSet<(usize, usize)>,
}

/// The initialised library.
#[derive(Debug)]
pub struct State {
    /// The scenario.
    pub scenario: Scenario,
    /// Scenario time zero.
    pub start: Instant,
    /// Event sets by handle value.
    pub sets: HashMap<usize, EventSet>,
    /// The next event set handle value.
    pub next_set: usize,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// `nvmlInit_v2`: loads the scenario named by [`SCENARIO_ENV`] once. A scenario that
/// cannot be read fails init with UNKNOWN and says why on stderr.
pub fn init() -> ErrorCode {
    let mut state = lock();
    if state.is_some() {
        return sys::nvmlReturn_enum_NVML_SUCCESS;
    }
    let scenario =
        std::env::var_os(SCENARIO_ENV).ok_or_else(|| format!("{SCENARIO_ENV} is not set")).and_then(|path| {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.to_string_lossy()))?;
            Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.to_string_lossy()))
        });
    match scenario {
        Err(e) => {
            eprintln!("rbee-nvml-fake: nvmlInit_v2 fails: {e}");
            sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN
        }
        Ok(s) if s.init_error.is_some() => s.init_error.unwrap_or(sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN),
        Ok(scenario) => {
            *state = Some(State { scenario, start: Instant::now(), sets: HashMap::new(), next_set: 1 });
            sys::nvmlReturn_enum_NVML_SUCCESS
        }
    }
}

/// Loads `scenario` as `nvmlInit_v2` would (for this crate's unit tests, which cannot
/// point the environment variable at a file without racing each other).
#[cfg(test)]
pub fn init_with(scenario: Scenario) {
    *lock() = Some(State { scenario, start: Instant::now(), sets: HashMap::new(), next_set: 1 });
}

/// The device handle of the GPU at `pos` in the scenario. Handles are plain numbers
/// (never dereferenced by a caller), so a handle stays valid across hot-plug.
pub fn handle(pos: usize) -> sys::nvmlDevice_t {
    std::ptr::without_provenance_mut(pos + 1)
}

/// Runs `f` on the state at scenario time `t`, after the checks every call makes.
pub fn call<R>(
    name: &str,
    f: impl FnOnce(&mut State, Duration) -> Result<R, ErrorCode>,
) -> Result<R, ErrorCode> {
    let mut guard = lock();
    let state = guard.as_mut().ok_or(sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED)?;
    if state.scenario.missing.iter().any(|m| m == name) {
        return Err(sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND);
    }
    let t = state.start.elapsed();
    f(state, t)
}

/// The handle of MIG instance `mig` of the GPU at `pos`: the instance number above
/// bit 20, the GPU's handle below.
pub fn mig_handle(pos: usize, mig: usize) -> sys::nvmlDevice_t {
    std::ptr::without_provenance_mut(((mig + 1) << 20) | (pos + 1))
}

/// The device a handle names (a GPU, or a MIG instance while its GPU is in MIG mode),
/// if it is listed at `t`, with the position of its (parent) GPU.
pub fn resolve_device(
    state: &State,
    device: sys::nvmlDevice_t,
    t: Duration,
) -> Result<(usize, &Gpu), ErrorCode> {
    let addr = device.addr();
    let pos = (addr & 0xF_FFFF).wrapping_sub(1);
    let gpu = match state.scenario.gpus.get(pos) {
        Some(g) if g.present(t) => g,
        _ => return Err(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT),
    };
    match addr >> 20 {
        0 => Ok((pos, gpu)),
        m => gpu
            .topology
            .mig
            .get(m - 1)
            .filter(|_| gpu.mig_enabled == Some(true))
            .map(|g| (pos, g))
            .ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT),
    }
}

/// The GPU position a handle names, if it is listed at `t`.
pub fn resolve(state: &State, device: sys::nvmlDevice_t, t: Duration) -> Result<usize, ErrorCode> {
    let pos = device.addr().wrapping_sub(1);
    match state.scenario.gpus.get(pos) {
        Some(g) if g.present(t) => Ok(pos),
        _ => Err(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT),
    }
}

/// Runs `f` on the GPU (or MIG instance) behind `device` with the step of the metric cycles, after the
/// checks: a lost GPU answers GPU_IS_LOST, a function the scenario marks unsupported
/// for this GPU answers NOT_SUPPORTED.
pub fn device_call<R>(
    name: &str,
    device: sys::nvmlDevice_t,
    f: impl FnOnce(&Gpu, usize) -> Result<R, ErrorCode>,
) -> Result<R, ErrorCode> {
    call(name, |state, t| {
        let (_, gpu) = resolve_device(state, device, t)?;
        if gpu.lost(t) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        if gpu.not_supported.iter().any(|n| n == name) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        f(gpu, state.scenario.step_at(t))
    })
}

impl State {
    /// The next XID event due on set `set` at `t`: (GPU position, code).
    pub fn next_xid(&mut self, set: usize, t: Duration) -> Result<Option<(usize, u64)>, ErrorCode> {
        let gpus = &self.scenario.gpus;
        let s = self.sets.get_mut(&set).ok_or(sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        let mut due: Vec<(Duration, usize, usize, u64)> = s
            .registered
            .iter()
            .flat_map(|&pos| gpus[pos].xids.iter().enumerate().map(move |(i, x)| (x.at, pos, i, x.code)))
            .filter(|&(at, pos, i, _)| at <= t && !s.delivered.contains(&(pos, i)))
            .collect();
        due.sort_unstable();
        Ok(due.first().map(|&(_, pos, i, code)| {
            s.delivered.insert((pos, i));
            (pos, code)
        }))
    }
}
