//! Per-GPU queries: identity, memory, power, clocks, MIG mode, ECC counters.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};

use nvml_wrapper_sys::bindings::{self as sys, nvmlDevice_t, nvmlReturn_t};

use super::{INVALID_ARGUMENT, MEMORY_V2, NOT_SUPPORTED, SUCCESS, answer, put, put_str};
use crate::scenario::pick;
use crate::state::device_call;

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
    let info =
        device_call("nvmlDeviceGetPciInfo_v3", device, |g, _| Ok(super::topology::pci_info(&g.pci_bus_id)));
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
        let used = g.used_at(step);
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
