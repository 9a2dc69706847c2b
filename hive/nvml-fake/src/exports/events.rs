//! Critical-XID event sets and the running-process list.

use std::ffi::{c_uint, c_ulonglong};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings::{self as sys, nvmlDevice_t, nvmlEventSet_t, nvmlReturn_t};

use super::{INVALID_ARGUMENT, NOT_SUPPORTED, SUCCESS, XID_EVENT, answer, put};
use crate::state::{self, call, device_call, handle};

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
            None => Ok(g.processes_now()),
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
            for (i, &(pid, used)) in list.iter().enumerate() {
                let info = sys::nvmlProcessInfo_t {
                    pid,
                    usedGpuMemory: used.unwrap_or(c_ulonglong::MAX),
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
