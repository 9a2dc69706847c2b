//! Topology queries: NUMA node, CPU affinity, the PCIe level two GPUs share, P2P over
//! NVLink, NVLink link state and far end, and MIG instances. An old driver lacks them
//! all (they are in `symbols::OPTIONAL`).

use std::ffi::{c_uint, c_ulong};

use nvml_wrapper_sys::bindings::{self as sys, nvmlDevice_t, nvmlReturn_t};

use super::{INVALID_ARGUMENT, NOT_SUPPORTED, SUCCESS, answer, fill, put};
use crate::codes::ErrorCode;
use crate::scenario::Gpu;
use crate::scenario::topology::{MAX_LINKS, NVSWITCH_BUS_ID, Remote, common_ancestor, p2p_nvlink};
use crate::state::{State, call, device_call, handle, mig_handle, resolve_device};

/// Runs `f` on two devices (positions and GPUs), after the checks of
/// [`crate::state::device_call`] on the first.
fn pair_call<R>(
    name: &str,
    d1: nvmlDevice_t,
    d2: nvmlDevice_t,
    f: impl FnOnce(&State, (usize, &Gpu), (usize, &Gpu), std::time::Duration) -> Result<R, ErrorCode>,
) -> Result<R, ErrorCode> {
    call(name, |s, t| {
        let a = resolve_device(s, d1, t)?;
        let b = resolve_device(s, d2, t)?;
        if a.1.lost(t) || b.1.lost(t) {
            return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        if a.1.not_supported.iter().any(|n| n == name) {
            return Err(NOT_SUPPORTED);
        }
        f(s, a, b, t)
    })
}

/// A PCI info struct for the bus id `bus_id` ("DDDDDDDD:BB:DD.F").
pub(crate) fn pci_info(bus_id: &str) -> sys::nvmlPciInfo_t {
    let part = |range: std::ops::Range<usize>| {
        bus_id.get(range).and_then(|p| u32::from_str_radix(p, 16).ok()).unwrap_or(0)
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
    fill(&mut info.busId, bus_id);
    fill(&mut info.busIdLegacy, bus_id.get(4..).unwrap_or_default());
    info
}

optional_export! {
    /// `nvmlDeviceGetNumaNodeId`.
    ///
    /// # Safety
    /// `node` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetNumaNodeId(device: nvmlDevice_t, node: *mut c_uint) -> nvmlReturn_t {
        let v = device_call("nvmlDeviceGetNumaNodeId", device, |g, _| g.topology.numa_node.ok_or(NOT_SUPPORTED));
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(node, v) }
        })
    }

    /// `nvmlDeviceGetCpuAffinity`: `size` mask words, CPU `n` at bit `n % 64` of word `n / 64`.
    ///
    /// # Safety
    /// `cpu_set` is valid for `size` writes of `c_ulong`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetCpuAffinity(
        device: nvmlDevice_t,
        size: c_uint,
        cpu_set: *mut c_ulong,
    ) -> nvmlReturn_t {
        let v = device_call("nvmlDeviceGetCpuAffinity", device, |g, _| {
            g.topology.cpu_mask.clone().ok_or(NOT_SUPPORTED)
        });
        answer(v, |words| {
            if cpu_set.is_null() {
                return INVALID_ARGUMENT;
            }
            for i in 0..size as usize {
                let w = words.get(i).copied().unwrap_or(0) as c_ulong;
                // SAFETY: `cpu_set` holds `size` words by the contract; i < size.
                unsafe { cpu_set.add(i).write(w) };
            }
            SUCCESS
        })
    }

    /// `nvmlDeviceGetTopologyCommonAncestor`.
    ///
    /// # Safety
    /// `path_info` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
        device1: nvmlDevice_t,
        device2: nvmlDevice_t,
        path_info: *mut sys::nvmlGpuTopologyLevel_t,
    ) -> nvmlReturn_t {
        let v = pair_call("nvmlDeviceGetTopologyCommonAncestor", device1, device2, |_, a, b, _| {
            common_ancestor(&a.1.topology, &b.1.topology).ok_or(NOT_SUPPORTED)
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(path_info, v) }
        })
    }

    /// `nvmlDeviceGetP2PStatus`: the NVLINK index answers OK for a pair with a direct
    /// active link or both on the NVSwitch fabric, NOT_SUPPORTED (a status) otherwise;
    /// the other indices answer OK.
    ///
    /// # Safety
    /// `status` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetP2PStatus(
        device1: nvmlDevice_t,
        device2: nvmlDevice_t,
        index: sys::nvmlGpuP2PCapsIndex_t,
        status: *mut sys::nvmlGpuP2PStatus_t,
    ) -> nvmlReturn_t {
        let v = pair_call("nvmlDeviceGetP2PStatus", device1, device2, |s, a, b, t| {
            if index != sys::nvmlGpuP2PCapsIndex_enum_NVML_P2P_CAPS_INDEX_NVLINK {
                return Ok(sys::nvmlGpuP2PStatus_enum_NVML_P2P_STATUS_OK);
            }
            Ok(match a.1.mig_enabled != Some(true) && p2p_nvlink(&s.scenario.gpus, a.0, b.0, t) {
                true => sys::nvmlGpuP2PStatus_enum_NVML_P2P_STATUS_OK,
                false => sys::nvmlGpuP2PStatus_enum_NVML_P2P_STATUS_NOT_SUPPORTED,
            })
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(status, v) }
        })
    }

    /// `nvmlDeviceGetNvLinkState`: a GPU without links answers NOT_SUPPORTED, a link
    /// past its last NOT_SUPPORTED, one past `NVML_NVLINK_MAX_LINKS` INVALID_ARGUMENT.
    ///
    /// # Safety
    /// `is_active` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
        device: nvmlDevice_t,
        link: c_uint,
        is_active: *mut sys::nvmlEnableState_t,
    ) -> nvmlReturn_t {
        let v = call("nvmlDeviceGetNvLinkState", |s, t| {
            let (_, g) = resolve_device(s, device, t)?;
            if link as usize >= MAX_LINKS {
                return Err(INVALID_ARGUMENT);
            }
            if g.lost(t) {
                return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
            }
            if g.not_supported.iter().any(|n| n == "nvmlDeviceGetNvLinkState") {
                return Err(NOT_SUPPORTED);
            }
            let l = g.topology.nvlinks.get(link as usize).ok_or(NOT_SUPPORTED)?;
            Ok(sys::nvmlEnableState_t::from(l.active(t)))
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(is_active, v) }
        })
    }

    /// `nvmlDeviceGetNvLinkRemotePciInfo_v2`: the far end's bus id (a peer GPU's, or
    /// the NVSwitch's).
    ///
    /// # Safety
    /// `pci` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
        device: nvmlDevice_t,
        link: c_uint,
        pci: *mut sys::nvmlPciInfo_t,
    ) -> nvmlReturn_t {
        let v = call("nvmlDeviceGetNvLinkRemotePciInfo_v2", |s, t| {
            let (_, g) = resolve_device(s, device, t)?;
            if g.lost(t) {
                return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
            }
            if g.not_supported.iter().any(|n| n == "nvmlDeviceGetNvLinkRemotePciInfo_v2") {
                return Err(NOT_SUPPORTED);
            }
            let l = g.topology.nvlinks.get(link as usize).ok_or(INVALID_ARGUMENT)?;
            Ok(match l.remote {
                Remote::Gpu(p) => pci_info(&s.scenario.gpus[p].pci_bus_id),
                Remote::Switch => pci_info(NVSWITCH_BUS_ID),
            })
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(pci, v) }
        })
    }

    /// `nvmlDeviceGetMaxMigDeviceCount`: 7 for a GPU in MIG mode, else NOT_SUPPORTED.
    ///
    /// # Safety
    /// `count` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(device: nvmlDevice_t, count: *mut c_uint) -> nvmlReturn_t {
        let v = device_call("nvmlDeviceGetMaxMigDeviceCount", device, |g, _| match g.mig_enabled {
            Some(true) => Ok(7),
            _ => Err(NOT_SUPPORTED),
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(count, v) }
        })
    }

    /// `nvmlDeviceGetMigDeviceHandleByIndex`: NOT_FOUND past the last instance.
    ///
    /// # Safety
    /// `mig_device` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
        device: nvmlDevice_t,
        index: c_uint,
        mig_device: *mut nvmlDevice_t,
    ) -> nvmlReturn_t {
        let v = call("nvmlDeviceGetMigDeviceHandleByIndex", |s, t| {
            let pos = crate::state::resolve(s, device, t)?;
            let g = &s.scenario.gpus[pos];
            if g.lost(t) {
                return Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
            }
            if g.mig_enabled != Some(true) {
                return Err(NOT_SUPPORTED);
            }
            if index >= 7 {
                return Err(INVALID_ARGUMENT);
            }
            g.topology.mig.get(index as usize).ok_or(sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND)?;
            Ok(mig_handle(pos, index as usize))
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(mig_device, v) }
        })
    }

    /// `nvmlDeviceGetDeviceHandleFromMigDeviceHandle`.
    ///
    /// # Safety
    /// `device` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
        mig_device: nvmlDevice_t,
        device: *mut nvmlDevice_t,
    ) -> nvmlReturn_t {
        let v = call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", |s, t| {
            let (pos, _) = resolve_device(s, mig_device, t)?;
            match mig_device.addr() >> 20 {
                0 => Err(INVALID_ARGUMENT),
                _ => Ok(handle(pos)),
            }
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(device, v) }
        })
    }

    /// `nvmlDeviceIsMigDeviceHandle`.
    ///
    /// # Safety
    /// `is_mig` is valid for one write.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(device: nvmlDevice_t, is_mig: *mut c_uint) -> nvmlReturn_t {
        let v = call("nvmlDeviceIsMigDeviceHandle", |s, t| {
            resolve_device(s, device, t)?;
            Ok(c_uint::from(device.addr() >> 20 != 0))
        });
        answer(v, |v| {
            // SAFETY: the caller's pointer contract is this function's.
            unsafe { put(is_mig, v) }
        })
    }
}
