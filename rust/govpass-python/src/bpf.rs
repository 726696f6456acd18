//! The eBPF loaders of `govpass-ebpf`, for the Python policy in `govpass.bpf`.
//! File descriptors cross as plain ints: the caller owns those returned.

use pyo3::prelude::*;

pyo3::import_exception!(govpass.bpf.syscall, BpfError);

/// Loads the pre-filter for `family` ("ipv4" or "ipv6"); returns the
/// program's and its flow map's file descriptors. `gate` is the kernel split's
/// gate as (map fd, min payload, max payload); `pin_dir` a directory on a bpf
/// file system, used during the load only. Raises BpfError.
#[pyfunction]
#[pyo3(signature = (family, max_age_ns, pin_dir, gate=None))]
pub fn prefilter_load(
    family: &str,
    max_age_ns: u64,
    pin_dir: std::path::PathBuf,
    gate: Option<(i32, u32, u32)>,
) -> PyResult<(i32, i32)> {
    imp::prefilter_load(family, max_age_ns, &pin_dir, gate)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::BpfError;
    use govpass_ebpf::prefilter::{self, Family, Gate};
    use govpass_ebpf::LoadError;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    use std::path::Path;

    pub fn prefilter_load(
        family: &str,
        max_age_ns: u64,
        pin_dir: &Path,
        gate: Option<(i32, u32, u32)>,
    ) -> PyResult<(i32, i32)> {
        let family = match family {
            "ipv4" => Family::Ipv4,
            "ipv6" => Family::Ipv6,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "family must be ipv4 or ipv6, got {family:?}"
                )))
            }
        };
        let gate = match gate {
            Some((fd, min_payload, max_payload)) => Some(Gate {
                map: dup(fd).map_err(|e| bpf_error(&LoadError::io("gate map", &e)))?,
                min_payload,
                max_payload,
            }),
            None => None,
        };
        let loaded =
            prefilter::load(family, max_age_ns, gate, pin_dir).map_err(|e| bpf_error(&e))?;
        Ok((loaded.program.into_raw_fd(), loaded.flows.into_raw_fd()))
    }

    /// A close-on-exec duplicate of a descriptor the caller keeps; an fd that
    /// is not open fails here (EBADF), not in the kernel.
    fn dup(fd: i32) -> std::io::Result<OwnedFd> {
        // SAFETY: fcntl only reads `fd`; a new descriptor it returns is ours alone.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if new < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `new` was just returned by fcntl and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }

    fn bpf_error(err: &LoadError) -> PyErr {
        BpfError::new_err((format!("{err}"), err.errno, err.log.clone()))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use pyo3::exceptions::PyOSError;
    use pyo3::prelude::*;

    pub fn prefilter_load(
        _family: &str,
        _max_age_ns: u64,
        _pin_dir: &std::path::Path,
        _gate: Option<(i32, u32, u32)>,
    ) -> PyResult<(i32, i32)> {
        Err(PyOSError::new_err((38, "eBPF programs need Linux"))) // ENOSYS
    }
}
