//! NVML return codes by the names `nvml.h` gives them (without `NVML_ERROR_`), as a
//! scenario writes them.

use nvml_wrapper_sys::bindings as sys;

/// An `nvmlReturn_t`.
pub type ErrorCode = sys::nvmlReturn_t;

/// The return code named `name` (e.g. "GPU_IS_LOST"), if it is one.
pub fn parse_code(name: &str) -> Option<ErrorCode> {
    Some(match name {
        "UNINITIALIZED" => sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED,
        "INVALID_ARGUMENT" => sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
        "NOT_SUPPORTED" => sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
        "NO_PERMISSION" => sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION,
        "NOT_FOUND" => sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND,
        "DRIVER_NOT_LOADED" => sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED,
        "TIMEOUT" => sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT,
        "FUNCTION_NOT_FOUND" => sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND,
        "GPU_IS_LOST" => sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST,
        "LIB_RM_VERSION_MISMATCH" => sys::nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        "NO_DATA" => sys::nvmlReturn_enum_NVML_ERROR_NO_DATA,
        "UNKNOWN" => sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN,
        _ => return None,
    })
}
