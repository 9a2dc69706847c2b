//! The exported functions called as a C caller would, on one scenario.

use std::ffi::{c_char, c_uint};
use std::ptr::null_mut;

use nvml_wrapper_sys::bindings::{self as sys, nvmlEventSet_t};

use crate::exports::*;
use crate::scenario::Scenario;
use crate::state::{self, handle};

const SUCCESS: u32 = sys::nvmlReturn_enum_NVML_SUCCESS;
const NOT_SUPPORTED: u32 = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const INVALID_ARGUMENT: u32 = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const XID_EVENT: u64 = sys::nvmlEventTypeXidCriticalError as u64;
/// `NVML_STRUCT_VERSION(Memory, 2)`.
const MEMORY_V2: u32 = (size_of::<sys::nvmlMemory_v2_t>() | (2 << 24)) as u32;

/// One test: the library state is process-global.
#[test]
fn the_process_list_memory_versions_and_events_answer_like_the_driver() {
    let text = r#"
        [[gpu]]
        uuid = "GPU-a"
        memory_total = "8GiB"
        memory_used = ["1GiB"]
        memory_reserved = "256MiB"
        process = [{ pid = 10, used_memory = "512MiB" }, { pid = 11 }]
        xid = [{ at_s = 0, code = 79 }]
        [[gpu]]
        uuid = "GPU-b"
        memory_total = "8GiB"
        processes_error = "NO_PERMISSION"
    "#;
    state::init_with(Scenario::parse(text).unwrap());
    let (a, b) = (handle(0), handle(1));

    // The count protocol: too small a buffer answers INSUFFICIENT_SIZE and the count.
    let mut count: c_uint = 0;
    // SAFETY: valid pointers; a null buffer with a zero count is allowed.
    let r = unsafe { nvmlDeviceGetComputeRunningProcesses_v3(a, &mut count, null_mut()) };
    assert_eq!((r, count), (sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE, 2));
    let mut infos =
        [sys::nvmlProcessInfo_t { pid: 0, usedGpuMemory: 0, gpuInstanceId: 0, computeInstanceId: 0 }; 4];
    count = 4;
    // SAFETY: `infos` holds `count` entries.
    let r = unsafe { nvmlDeviceGetComputeRunningProcesses_v3(a, &mut count, infos.as_mut_ptr()) };
    assert_eq!((r, count), (SUCCESS, 2));
    assert_eq!((infos[0].pid, infos[0].usedGpuMemory), (10, 512 << 20));
    assert_eq!((infos[1].pid, infos[1].usedGpuMemory), (11, u64::MAX), "NVML_VALUE_NOT_AVAILABLE");
    // SAFETY: as above.
    let r = unsafe { nvmlDeviceGetComputeRunningProcesses_v3(b, &mut count, infos.as_mut_ptr()) };
    assert_eq!(r, sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION);

    // Memory v2 checks the struct version and keeps reserved apart.
    let mut m = sys::nvmlMemory_v2_t { version: 1, total: 0, reserved: 0, free: 0, used: 0 };
    // SAFETY: a valid struct.
    assert_eq!(
        unsafe { nvmlDeviceGetMemoryInfo_v2(a, &mut m) },
        sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    );
    m.version = MEMORY_V2;
    // SAFETY: a valid struct.
    assert_eq!(unsafe { nvmlDeviceGetMemoryInfo_v2(a, &mut m) }, SUCCESS);
    assert_eq!((m.total, m.reserved, m.used, m.free), (8 << 30, 256 << 20, 1 << 30, (7 << 30) - (256 << 20)));

    // An XID is delivered once, to a set the GPU is registered on.
    let mut set: nvmlEventSet_t = null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { nvmlEventSetCreate(&mut set) }, SUCCESS);
    assert_eq!(nvmlDeviceRegisterEvents(a, XID_EVENT, set), SUCCESS);
    assert_eq!(nvmlDeviceRegisterEvents(a, 1, set), NOT_SUPPORTED);
    let mut e = sys::nvmlEventData_t {
        device: null_mut(),
        eventType: 0,
        eventData: 0,
        gpuInstanceId: 0,
        computeInstanceId: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { nvmlEventSetWait_v2(set, &mut e, 0) }, SUCCESS);
    assert_eq!((e.device, e.eventType, e.eventData), (a, XID_EVENT, 79));
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { nvmlEventSetWait_v2(set, &mut e, 10) }, sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT);
    assert_eq!(nvmlEventSetFree(set), SUCCESS);
    assert_eq!(nvmlEventSetFree(set), INVALID_ARGUMENT);

    // Null out-pointers and unknown handles are refused, not crashed on.
    // SAFETY: null is allowed and refused.
    assert_eq!(unsafe { nvmlDeviceGetPowerUsage(a, null_mut()) }, NOT_SUPPORTED, "unscripted first");
    let mut w: c_uint = 0;
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { nvmlDeviceGetPowerUsage(handle(7), &mut w) }, INVALID_ARGUMENT);
    let mut name = [0 as c_char; 4];
    // SAFETY: `name` holds 4 bytes.
    let r = unsafe { nvmlDeviceGetUUID(a, name.as_mut_ptr(), 4) };
    assert_eq!(r, sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE, "GPU-a and a NUL need 6 bytes");
}

#[test]
fn optional_symbols_are_exported_ones() {
    use crate::symbols::{EXPORTED, OPTIONAL};
    assert!(OPTIONAL.iter().all(|o| EXPORTED.contains(o)));
}
