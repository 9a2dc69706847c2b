//! The exported NVML C functions, with the signatures and versioned structs of
//! `nvml.h` (as nvml-wrapper-sys declares them). Each reads the scenario through
//! [`crate::state`] and writes its answer through the caller's out-pointers.
//!
//! The only `unsafe` here is those writes (and one read of an in/out count): NVML's
//! contract is that out-pointers are valid for one write of their type, and string
//! buffers for `length` bytes. Null pointers answer INVALID_ARGUMENT.
//!
//! `device` holds the per-GPU queries, `events` the XID event sets and the process
//! list, `topology` the topology and MIG queries; this file the helpers, initialisation and enumeration.

mod device;
mod events;
mod topology;

pub use device::*;
pub use events::*;
pub use topology::*;

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};

use nvml_wrapper_sys::bindings::{self as sys, nvmlDevice_t, nvmlReturn_t};

use crate::codes::ErrorCode;
use crate::state::{self, call, handle};

pub(crate) const SUCCESS: ErrorCode = sys::nvmlReturn_enum_NVML_SUCCESS;
pub(crate) const NOT_SUPPORTED: ErrorCode = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
pub(crate) const INVALID_ARGUMENT: ErrorCode = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;

/// `NVML_STRUCT_VERSION(Memory, 2)`.
pub(crate) const MEMORY_V2: c_uint = (size_of::<sys::nvmlMemory_v2_t>() | (2 << 24)) as c_uint;
/// `nvmlEventTypeXidCriticalError`.
pub(crate) const XID_EVENT: c_ulonglong = sys::nvmlEventTypeXidCriticalError as c_ulonglong;

/// Writes `value` through `out`.
///
/// # Safety
/// `out` is null or valid for one write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) -> ErrorCode {
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
pub(crate) unsafe fn put_str(out: *mut c_char, length: c_uint, s: &str) -> ErrorCode {
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
pub(crate) fn fill<const N: usize>(dst: &mut [c_char; N], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().take(N - 1)) {
        *d = b as c_char;
    }
}

pub(crate) fn answer<T>(result: Result<T, ErrorCode>, write: impl FnOnce(T) -> ErrorCode) -> ErrorCode {
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
