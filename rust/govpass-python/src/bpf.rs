//! The eBPF loaders of `govpass-ebpf`, for the Python policy in `govpass.bpf`.
//! File descriptors cross as plain ints: the caller owns those returned.

use pyo3::prelude::*;

pyo3::import_exception!(govpass.bpf.syscall, BpfError);

/// Loads the pre-filter for `family` ("ipv4" or "ipv6"); returns the
/// program's and its flow map's file descriptors. `gate` is the kernel split's
/// gate as (map fd, min payload, max payload, split chunk, max seg payload);
/// `pin_dir` a directory on a bpf file system, used during the load only.
/// Raises BpfError.
#[pyfunction]
#[pyo3(signature = (family, max_age_ns, pin_dir, gate=None))]
pub fn prefilter_load(
    family: &str,
    max_age_ns: u64,
    pin_dir: std::path::PathBuf,
    gate: Option<(i32, u32, u32, u32, u32)>,
) -> PyResult<(i32, i32)> {
    imp::prefilter_load(family, max_age_ns, &pin_dir, gate)
}

/// Loads the kernel split for these parameters (checked again here: a bad
/// one raises ValueError); returns the program's, its scratch map's and its
/// counter map's file descriptors. Raises BpfError.
#[pyfunction]
#[pyo3(signature = (*, chunk, max_payload, max_seg_payload, ports, mark, local, l2))]
pub fn ksplit_load(
    chunk: u32,
    max_payload: u32,
    max_seg_payload: u32,
    ports: Vec<u16>,
    mark: u32,
    local: bool,
    l2: u32,
) -> PyResult<(i32, i32, i32)> {
    #[cfg(target_os = "linux")]
    {
        imp::ksplit_load(govpass_ebpf::ksplit::Params {
            chunk,
            max_payload,
            max_seg_payload,
            ports,
            mark,
            local,
            l2,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (chunk, max_payload, max_seg_payload, ports, mark, local, l2);
        imp::ksplit_load()
    }
}

/// Attaches the kernel split program `prog_fd` to the egress of interface
/// `ifindex` (a tcx bpf link); returns the link's file descriptor, which
/// keeps it there while open. Raises BpfError (ENODEV: no such interface).
#[pyfunction]
pub fn ksplit_attach(prog_fd: i32, ifindex: u32) -> PyResult<i32> {
    imp::ksplit_attach(prog_fd, ifindex)
}

/// The kernel split's counters (split, unsplit, first_only, dropped), each
/// summed over the CPUs, from its counter map `counters_fd`. Raises BpfError.
#[pyfunction]
pub fn ksplit_counters(counters_fd: i32) -> PyResult<(u64, u64, u64, u64)> {
    imp::ksplit_counters(counters_fd)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::BpfError;
    use govpass_ebpf::ksplit;
    use govpass_ebpf::prefilter::{self, Family, Gate};
    use govpass_ebpf::LoadError;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
    use std::path::Path;

    pub fn prefilter_load(
        family: &str,
        max_age_ns: u64,
        pin_dir: &Path,
        gate: Option<(i32, u32, u32, u32, u32)>,
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
            Some((fd, min_payload, max_payload, chunk, max_seg_payload)) => Some(Gate {
                map: dup(fd).map_err(|e| bpf_error(&LoadError::io("gate map", &e)))?,
                min_payload,
                max_payload,
                chunk,
                max_seg_payload,
            }),
            None => None,
        };
        let loaded =
            prefilter::load(family, max_age_ns, gate, pin_dir).map_err(|e| bpf_error(&e))?;
        Ok((loaded.program.into_raw_fd(), loaded.flows.into_raw_fd()))
    }

    pub fn ksplit_load(params: ksplit::Params) -> PyResult<(i32, i32, i32)> {
        params.check().map_err(PyValueError::new_err)?;
        let loaded = ksplit::load(&params).map_err(|e| bpf_error(&e))?;
        Ok((
            loaded.program.into_raw_fd(),
            loaded.scratch.into_raw_fd(),
            loaded.counters.into_raw_fd(),
        ))
    }

    pub fn ksplit_attach(prog_fd: i32, ifindex: u32) -> PyResult<i32> {
        let program = dup(prog_fd).map_err(|e| bpf_error(&LoadError::io("program fd", &e)))?;
        let link =
            ksplit::attach_tcx_egress(program.as_fd(), ifindex).map_err(|e| bpf_error(&e))?;
        Ok(link.into_raw_fd())
    }

    pub fn ksplit_counters(counters_fd: i32) -> PyResult<(u64, u64, u64, u64)> {
        let map = dup(counters_fd).map_err(|e| bpf_error(&LoadError::io("counters fd", &e)))?;
        let [a, b, c, d] = ksplit::counters(map.as_fd()).map_err(|e| bpf_error(&e))?;
        Ok((a, b, c, d))
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
        _gate: Option<(i32, u32, u32, u32, u32)>,
    ) -> PyResult<(i32, i32)> {
        Err(PyOSError::new_err((38, "eBPF programs need Linux"))) // ENOSYS
    }

    pub fn ksplit_load() -> PyResult<(i32, i32, i32)> {
        Err(PyOSError::new_err((38, "eBPF programs need Linux"))) // ENOSYS
    }

    pub fn ksplit_attach(_prog_fd: i32, _ifindex: u32) -> PyResult<i32> {
        Err(PyOSError::new_err((38, "eBPF programs need Linux"))) // ENOSYS
    }

    pub fn ksplit_counters(_counters_fd: i32) -> PyResult<(u64, u64, u64, u64)> {
        Err(PyOSError::new_err((38, "eBPF programs need Linux"))) // ENOSYS
    }
}
