//! The exported NVML C functions, with the signatures and versioned structs of
//! `nvml.h` (as nvml-wrapper-sys declares them). Each reads the scenario through
//! [`crate::state`] and writes its answer through the caller's out-pointers.
//!
//! The only `unsafe` here is those writes (and one read of an in/out count): NVML's
//! contract is that out-pointers are valid for one write of their type, and string
//! buffers for `length` bytes. Null pointers answer INVALID_ARGUMENT.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings::{self as sys, nvmlDevice_t, nvmlEventSet_t, nvmlReturn_t};

use crate::codes::ErrorCode;
use crate::scenario::pick;
use crate::state::{self, call, device_call, handle};

const SUCCESS: ErrorCode = sys::nvmlReturn_enum_NVML_SUCCESS;
const NOT_SUPPORTED: ErrorCode = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const INVALID_ARGUMENT: ErrorCode = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;

/// `NVML_STRUCT_VERSION(Memory, 2)`.
const MEMORY_V2: c_uint = (size_of::<sys::nvmlMemory_v2_t>() | (2 << 24)) as c_uint;
/// `nvmlEventTypeXidCriticalError`.
const XID_EVENT: c_ulonglong = sys::nvmlEventTypeXidCriticalError as c_ulonglong;

/// Writes `value` through `out`.
///
/// # Safety
/// `out` is null or valid for one write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> ErrorCode {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: not null, and valid for a write by this function's contract.
    unsafe { out.write(value) };
    SUCCESS
}

/// Writes `s` and a NUL into the `length`-byte buffer `out`.
///
/// # Safety
/// `out` is null or valid for `length` bytes of writes.
unsafe fn put_str(out: *mut c_char, length: c_uint, s: &str) -> ErrorCode {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    if s.len() + 1 > length as usize {
        return sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: `out` holds `length` >= s.len() + 1 bytes by the contract; `s` is a
    // separate Rust string, so the ranges do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), out, s.len());
        out.add(s.len()).write(0);
    }
    SUCCESS
}

/// Copies `s` into a fixed C char array, NUL-terminated and truncated to fit.
fn fill<const N: usize>(dst: &mut [c_char; N], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().take(N - 1)) {
        *d = b as c_char;
    }
}

fn answer<T>(result: Result<T, ErrorCode>, write: impl FnOnce(T) -> ErrorCode) -> ErrorCode {
    result.map_or_else(|e| e, write)
}

/// `nvmlInit_v2`: loads the scenario; answers its `init_error` if it has one.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    state::init()
}

/// `nvmlShutdown`: NVML is process-global; the scenario stays loaded.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    SUCCESS
}

/// `nvmlSystemGetDriverVersion`.
///
/// # Safety
/// `version` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> nvmlReturn_t {
    answer(call("nvmlSystemGetDriverVersion", |s, _| Ok(s.scenario.driver_version.clone())), |v| {
        // SAFETY: the caller's buffer contract is this function's.
        unsafe { put_str(version, length, &v) }
    })
}

/// `nvmlSystemGetCudaDriverVersion_v2`.
///
/// # Safety
/// `version` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    answer(call("nvmlSystemGetCudaDriverVersion_v2", |s, _| Ok(s.scenario.cuda_version)), |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(version, v) }
    })
}

/// `nvmlDeviceGetCount_v2`: the GPUs listed now (hot-plugged ones once they appear).
///
/// # Safety
/// `count` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    answer(call("nvmlDeviceGetCount_v2", |s, t| Ok(s.scenario.listed(t).count() as c_uint)), |n| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(count, n) }
    })
}

/// `nvmlDeviceGetHandleByIndex_v2`: a lost GPU answers GPU_IS_LOST here already.
///
/// # Safety
/// `device` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    let found = call("nvmlDeviceGetHandleByIndex_v2", |s, t| {
        let (pos, gpu) = s.scenario.listed(t).nth(index as usize).ok_or(INVALID_ARGUMENT)?;
        if gpu.lost(t) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        Ok(handle(pos))
    });
    answer(found, |h| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(device, h) }
    })
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
/// `uuid` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    answer(device_call("nvmlDeviceGetUUID", device, |g, _| Ok(g.uuid.clone())), |v| {
        // SAFETY: the caller's buffer contract is this function's.
        unsafe { put_str(uuid, length, &v) }
    })
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    answer(device_call("nvmlDeviceGetName", device, |g, _| Ok(g.name.clone())), |v| {
        // SAFETY: the caller's buffer contract is this function's.
        unsafe { put_str(name, length, &v) }
    })
}

/// `nvmlDeviceGetPciInfo_v3`.
///
/// # Safety
/// `pci` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut sys::nvmlPciInfo_t,
) -> nvmlReturn_t {
    let info = device_call("nvmlDeviceGetPciInfo_v3", device, |g, _| {
        // "DDDDDDDD:BB:DD.F", hexadecimal.
        let part = |range: std::ops::Range<usize>| {
            g.pci_bus_id.get(range).and_then(|p| u32::from_str_radix(p, 16).ok()).unwrap_or(0)
        };
        let mut info = sys::nvmlPciInfo_t {
            busIdLegacy: [0; 16],
            domain: part(0..8),
            bus: part(9..11),
            device: part(12..14),
            pciDeviceId: 0x2330_10DE,
            pciSubSystemId: 0x16C1_10DE,
            busId: [0; 32],
        };
        fill(&mut info.busId, &g.pci_bus_id);
        fill(&mut info.busIdLegacy, g.pci_bus_id.get(4..).unwrap_or_default());
        Ok(info)
    });
    answer(info, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(pci, v) }
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`: checks the struct version as the driver does;
/// `total = reserved + used + free`.
///
/// # Safety
/// `memory` is valid for one read and one write of `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut sys::nvmlMemory_v2_t,
) -> nvmlReturn_t {
    if memory.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: not null, and valid for a read by the contract (the caller sets `version`).
    let version = unsafe { (*memory).version };
    if version != MEMORY_V2 {
        return sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    let info = device_call("nvmlDeviceGetMemoryInfo_v2", device, |g, step| {
        let used = pick(&g.memory_used, step).unwrap_or(0);
        Ok(sys::nvmlMemory_v2_t {
            version,
            total: g.memory_total,
            reserved: g.memory_reserved,
            free: g.memory_total - g.memory_reserved - used,
            used,
        })
    });
    answer(info, |v| {
        // SAFETY: checked not null above; valid for a write by the contract.
        unsafe { put(memory, v) }
    })
}

/// `nvmlDeviceGetCudaComputeCapability`.
///
/// # Safety
/// `major` and `minor` are valid for one write each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    let cc = device_call("nvmlDeviceGetCudaComputeCapability", device, |g, _| {
        g.compute_capability.ok_or(NOT_SUPPORTED)
    });
    answer(cc, |(a, b)| {
        // SAFETY: the caller's pointer contract is this function's.
        match unsafe { put(major, a) } {
            SUCCESS => unsafe { put(minor, b) },
            e => e,
        }
    })
}

/// `nvmlDeviceGetEnforcedPowerLimit`, mW.
///
/// # Safety
/// `limit` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    let v =
        device_call("nvmlDeviceGetEnforcedPowerLimit", device, |g, _| g.power_limit_mw.ok_or(NOT_SUPPORTED));
    answer(v, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(limit, v) }
    })
}

optional_export! {
    /// `nvmlDeviceGetMigMode`: current and pending mode (1 enabled, 0 disabled).
    ///
    /// # Safety
    /// `current` and `pending` are valid for one write each.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetMigMode(
        device: nvmlDevice_t,
        current: *mut c_uint,
        pending: *mut c_uint,
    ) -> nvmlReturn_t {
        let mode = device_call("nvmlDeviceGetMigMode", device, |g, _| {
            g.mig_enabled.map(c_uint::from).ok_or(NOT_SUPPORTED)
        });
        answer(mode, |m| {
            // SAFETY: the caller's pointer contract is this function's.
            match unsafe { put(current, m) } {
                SUCCESS => unsafe { put(pending, m) },
                e => e,
            }
        })
    }
}

/// `nvmlDeviceGetUtilizationRates`.
///
/// # Safety
/// `utilization` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut sys::nvmlUtilization_t,
) -> nvmlReturn_t {
    let v = device_call("nvmlDeviceGetUtilizationRates", device, |g, step| {
        let gpu = pick(&g.util_percent, step).ok_or(NOT_SUPPORTED)?;
        Ok(sys::nvmlUtilization_t { gpu, memory: pick(&g.mem_util_percent, step).unwrap_or(0) })
    });
    answer(v, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(utilization, v) }
    })
}

/// `nvmlDeviceGetTemperature` (sensor 0, the GPU die, only).
///
/// # Safety
/// `temp` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: sys::nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    let v = device_call("nvmlDeviceGetTemperature", device, |g, step| match sensor {
        0 => pick(&g.temperature_c, step).ok_or(NOT_SUPPORTED),
        _ => Err(INVALID_ARGUMENT),
    });
    answer(v, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(temp, v) }
    })
}

/// `nvmlDeviceGetPowerUsage`, mW.
///
/// # Safety
/// `power` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> nvmlReturn_t {
    let v = device_call("nvmlDeviceGetPowerUsage", device, |g, step| {
        pick(&g.power_draw_mw, step).ok_or(NOT_SUPPORTED)
    });
    answer(v, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(power, v) }
    })
}

/// `nvmlDeviceGetClockInfo`: graphics and SM clocks answer the SM cycle, memory the
/// memory cycle.
///
/// # Safety
/// `clock` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    kind: sys::nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    let v = device_call("nvmlDeviceGetClockInfo", device, |g, step| {
        let cycle = match kind {
            sys::nvmlClockType_enum_NVML_CLOCK_GRAPHICS | sys::nvmlClockType_enum_NVML_CLOCK_SM => {
                &g.sm_clock_mhz
            }
            sys::nvmlClockType_enum_NVML_CLOCK_MEM => &g.mem_clock_mhz,
            _ => return Err(NOT_SUPPORTED),
        };
        pick(cycle, step).ok_or(NOT_SUPPORTED)
    });
    answer(v, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(clock, v) }
    })
}

/// `nvmlDeviceGetTotalEccErrors`: the volatile and aggregate counters answer alike.
///
/// # Safety
/// `count` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: sys::nvmlMemoryErrorType_t,
    _counter: sys::nvmlEccCounterType_t,
    count: *mut c_ulonglong,
) -> nvmlReturn_t {
    let v = device_call("nvmlDeviceGetTotalEccErrors", device, |g, step| {
        let cycle = match error_type {
            sys::nvmlMemoryErrorType_enum_NVML_MEMORY_ERROR_TYPE_CORRECTED => &g.ecc_corrected,
            sys::nvmlMemoryErrorType_enum_NVML_MEMORY_ERROR_TYPE_UNCORRECTED => &g.ecc_uncorrected,
            _ => return Err(INVALID_ARGUMENT),
        };
        pick(cycle, step).ok_or(NOT_SUPPORTED)
    });
    answer(v, |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(count, v) }
    })
}

optional_export! {
    /// `nvmlDeviceGetComputeRunningProcesses_v3`: with `*count` too small (or `infos`
    /// null) it answers INSUFFICIENT_SIZE and the count needed, like the driver.
    ///
    /// # Safety
    /// `count` is valid for a read and a write; `infos` is null or valid for `*count`
    /// writes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
        device: nvmlDevice_t,
        count: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_t,
    ) -> nvmlReturn_t {
        if count.is_null() {
            return INVALID_ARGUMENT;
        }
        let list = device_call("nvmlDeviceGetComputeRunningProcesses_v3", device, |g, _| match g.processes_error {
            Some(e) => Err(e),
            None => Ok(g.processes.clone()),
        });
        answer(list, |list| {
            // SAFETY: `count` is not null and valid for a read by the contract.
            let room = unsafe { count.read() } as usize;
            // SAFETY: as above, for a write.
            unsafe { count.write(list.len() as c_uint) };
            if list.is_empty() {
                return SUCCESS;
            }
            if infos.is_null() || room < list.len() {
                return sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
            }
            for (i, p) in list.iter().enumerate() {
                let info = sys::nvmlProcessInfo_t {
                    pid: p.pid,
                    usedGpuMemory: p.used_memory.unwrap_or(c_ulonglong::MAX),
                    gpuInstanceId: c_uint::MAX,
                    computeInstanceId: c_uint::MAX,
                };
                // SAFETY: `infos` holds `room` >= list.len() > i entries by the contract.
                unsafe { infos.add(i).write(info) };
            }
            SUCCESS
        })
    }
}

/// `nvmlDeviceGetSupportedEventTypes`: critical XID errors.
///
/// # Safety
/// `types` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut c_ulonglong,
) -> nvmlReturn_t {
    answer(device_call("nvmlDeviceGetSupportedEventTypes", device, |_, _| Ok(XID_EVENT)), |v| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(types, v) }
    })
}

/// `nvmlEventSetCreate`. Set handles are plain numbers, never dereferenced.
///
/// # Safety
/// `set` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    let id = call("nvmlEventSetCreate", |s, _| {
        let id = s.next_set;
        s.next_set += 1;
        s.sets.insert(id, state::EventSet::default());
        Ok(id)
    });
    answer(id, |id| {
        // SAFETY: the caller's pointer contract is this function's.
        unsafe { put(set, std::ptr::without_provenance_mut(id)) }
    })
}

/// `nvmlDeviceRegisterEvents`: only critical XID errors can be registered.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    let registered = call("nvmlDeviceRegisterEvents", |s, t| {
        let pos = state::resolve(s, device, t)?;
        if s.scenario.gpus[pos].lost(t) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        if types & !XID_EVENT != 0 {
            return Err(NOT_SUPPORTED);
        }
        s.sets.get_mut(&set.addr()).ok_or(INVALID_ARGUMENT)?.registered.insert(pos);
        Ok(())
    });
    answer(registered, |()| SUCCESS)
}

/// `nvmlEventSetWait_v2`: the next scripted XID due on a registered GPU, waiting up
/// to `timeout_ms` for one; TIMEOUT when none comes.
///
/// # Safety
/// `data` is valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut sys::nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
    loop {
        match call("nvmlEventSetWait_v2", |s, t| s.next_xid(set.addr(), t)) {
            Err(e) => return e,
            Ok(Some((pos, code))) => {
                let event = sys::nvmlEventData_t {
                    device: handle(pos),
                    eventType: XID_EVENT,
                    eventData: code,
                    gpuInstanceId: c_uint::MAX,
                    computeInstanceId: c_uint::MAX,
                };
                // SAFETY: the caller's pointer contract is this function's.
                return unsafe { put(data, event) };
            }
            Ok(None) if Instant::now() >= deadline => return sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `nvmlEventSetFree`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    let freed =
        call("nvmlEventSetFree", |s, _| s.sets.remove(&set.addr()).map(|_| ()).ok_or(INVALID_ARGUMENT));
    answer(freed, |()| SUCCESS)
}
