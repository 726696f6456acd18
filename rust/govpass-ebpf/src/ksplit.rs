//! The kernel split (`bpf/ksplit.bpf.c`): a tc classifier for the egress
//! path of an interface (tcx), with a per-CPU scratch map and per-CPU counters.
//!
//! Loading goes through aya, parameters as the object's `const volatile`
//! globals. Attaching does not: aya's tcx attach takes an interface name, not
//! the index rtnetlink reports (a rename in between would attach elsewhere),
//! and keeps the link inside its program object, while the caller needs the
//! link's descriptor itself (the link lasts exactly as long as it stays open,
//! and a forked child closes it). So [`attach_tcx_egress`] is one
//! `BPF_LINK_CREATE`, as the program's Python loader made it before. Nothing
//! is pinned: the descriptors are the only references.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::SchedClassifier;
use aya::{include_bytes_aligned, EbpfLoader};

use crate::{object, LoadError};

static OBJECT: &[u8] = include_bytes_aligned!("../bpf/ksplit.bpf.o");

const PROGRAM: &str = "govpass_split";
const SCRATCH_MAP: &str = "gp_scratch";
const COUNTERS_MAP: &str = "gp_counters";

/// The first segment's largest size (`GP_CHUNK_MAX` in common.h).
pub const CHUNK_MAX: u32 = 64;
/// The largest whole record split (`GP_PAYLOAD_MAX` in common.h).
pub const PAYLOAD_MAX: u32 = 1500;
/// The most destination ports (`GP_PORTS_MAX` in ksplit.bpf.c).
pub const PORTS_MAX: usize = 16;
/// The counters, in the order of the map's entries.
pub const COUNTERS: [&str; 4] = ["split", "unsplit", "first_only", "dropped"];

/// What the program is loaded for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// The first segment's payload bytes, 1..=CHUNK_MAX.
    pub chunk: u32,
    /// The largest record split, min_payload()..=PAYLOAD_MAX.
    pub max_payload: u32,
    /// The engine's max-seg-payload: with more than 40 bytes of IP and TCP
    /// headers, records it would cut into more than two segments are left
    /// alone (`gp_split_max` in common.h). At least 1.
    pub max_seg_payload: u32,
    /// Destination ports, 1..=PORTS_MAX of them, none 0.
    pub ports: Vec<u16>,
    /// Packets carrying any of these bits are left alone (not 0).
    pub mark: u32,
    /// Host mode (packets with a socket) or router mode (without).
    pub local: bool,
    /// Link header bytes before the IP header: 14 (Ethernet) or 0 (raw IP).
    pub l2: u32,
}

impl Params {
    /// The smallest payload split: a record header and type, more than `chunk`.
    pub fn min_payload(&self) -> u32 {
        (self.chunk + 1).max(6)
    }

    /// Why the program cannot be loaded for these parameters, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=CHUNK_MAX).contains(&self.chunk) {
            return Err(format!(
                "chunk must be in 1..{CHUNK_MAX}, got {}",
                self.chunk
            ));
        }
        if !(self.min_payload()..=PAYLOAD_MAX).contains(&self.max_payload) {
            return Err(format!(
                "max_payload must be in {}..{PAYLOAD_MAX}, got {}",
                self.min_payload(),
                self.max_payload
            ));
        }
        if self.ports.is_empty() || self.ports.len() > PORTS_MAX || self.ports.contains(&0) {
            return Err(format!(
                "ports must be 1 to {PORTS_MAX} ports in 1..65535, got {:?}",
                self.ports
            ));
        }
        if self.max_seg_payload == 0 {
            return Err("max_seg_payload must be at least 1".to_owned());
        }
        if self.mark == 0 {
            return Err("mark must be a non-zero 32-bit value".to_owned());
        }
        if self.l2 != 0 && self.l2 != 14 {
            return Err(format!("l2 must be 0 or 14, got {}", self.l2));
        }
        Ok(())
    }
}

/// A loaded (verified) program and its maps, as descriptors the caller owns.
#[derive(Debug)]
pub struct Ksplit {
    pub program: OwnedFd,
    pub scratch: OwnedFd,
    pub counters: OwnedFd,
}

/// Loads the program for `params` (checked by [`Params::check`] first: an
/// error there is EINVAL with the reason as its detail).
pub fn load(params: &Params) -> Result<Ksplit, LoadError> {
    if let Err(why) = params.check() {
        let err = std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        return Err(LoadError::new("parameters", &err));
    }
    let mut ports = [0u16; PORTS_MAX];
    ports[..params.ports.len()].copy_from_slice(&params.ports);
    let n_ports = params.ports.len() as u32; // at most PORTS_MAX
    let local = u32::from(params.local);
    let mut ebpf = EbpfLoader::new()
        .set_global("chunk", &params.chunk, true)
        .set_global("max_payload", &params.max_payload, true)
        .set_global("max_seg", &params.max_seg_payload, true)
        .set_global("mark", &params.mark, true)
        .set_global("local", &local, true)
        .set_global("l2", &params.l2, true)
        .set_global("n_ports", &n_ports, true)
        .set_global("ports", &ports, true)
        .load(OBJECT)
        .map_err(|e| LoadError::new("object load", &e))?;
    let program: &mut SchedClassifier = object::program(&mut ebpf, PROGRAM)?;
    program
        .load()
        .map_err(|e| LoadError::new("program load", &e))?;
    let program = object::program_fd(program.fd())?;
    let scratch = per_cpu_array_fd(&ebpf, SCRATCH_MAP)?;
    let counters = per_cpu_array_fd(&ebpf, COUNTERS_MAP)?;
    Ok(Ksplit {
        program,
        scratch,
        counters,
    })
}

fn per_cpu_array_fd(ebpf: &aya::Ebpf, name: &str) -> Result<OwnedFd, LoadError> {
    match ebpf.map(name) {
        Some(Map::PerCpuArray(data)) => object::map_fd(data),
        _ => Err(object::missing(name)),
    }
}

/// The counters of a loaded program (its `counters` map), each summed over
/// the CPUs, in the order of [`COUNTERS`].
pub fn counters(map: BorrowedFd<'_>) -> Result<[u64; 4], LoadError> {
    let owned = map
        .try_clone_to_owned()
        .map_err(|e| LoadError::io("counters fd", &e))?;
    let data = MapData::from_fd(owned).map_err(|e| LoadError::new("counters map", &e))?;
    let array: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .map_err(|e| LoadError::new("counters map", &e))?;
    let mut out = [0u64; 4];
    for (index, total) in (0u32..).zip(out.iter_mut()) {
        let values = array
            .get(&index, 0)
            .map_err(|e| LoadError::new("counters read", &e))?;
        *total = values.iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
    }
    Ok(out)
}

/// `union bpf_attr` for BPF_LINK_CREATE, as far as a tcx link reads it (the
/// tail, relative program and expected revision, stays zero: append).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    tail: [u64; 6],
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_EGRESS: u32 = 47; // Linux 6.6 and later

/// Attaches `program` to the egress of interface `ifindex` (tcx, after the
/// programs already there); the link lasts as long as the returned descriptor
/// (and its duplicates) stays open. Errors: ENODEV for no such interface,
/// EINVAL on kernels without tcx.
pub fn attach_tcx_egress(program: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd, LoadError> {
    use std::os::fd::AsRawFd;
    let attr = LinkCreateAttr {
        prog_fd: u32::try_from(program.as_raw_fd()).unwrap_or(u32::MAX),
        target_ifindex: ifindex,
        attach_type: BPF_TCX_EGRESS,
        flags: 0,
        tail: [0; 6],
    };
    // SAFETY: bpf(2) reads `size_of::<LinkCreateAttr>()` bytes of `attr`, which
    // lives across the call; the kernel zero-extends a shorter attribute.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<LinkCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(LoadError::io(
            "tcx attach",
            &std::io::Error::last_os_error(),
        ));
    }
    let fd = i32::try_from(fd).map_err(|_| {
        LoadError::io(
            "tcx attach",
            &std::io::Error::from_raw_os_error(libc::EBADF),
        )
    })?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            chunk: 5,
            max_payload: 1500,
            max_seg_payload: 1460,
            ports: vec![443],
            mark: 0x4000_0000,
            local: true,
            l2: 14,
        }
    }

    #[test]
    fn check_takes_the_edges_and_refuses_past_them() {
        assert_eq!(params().check(), Ok(()));
        let ok = [
            Params {
                chunk: 1,
                max_payload: 6,
                ..params()
            },
            Params {
                chunk: 64,
                max_payload: 65,
                ..params()
            },
            Params {
                ports: (1..=16).collect(),
                l2: 0,
                mark: u32::MAX,
                ..params()
            },
        ];
        for p in ok {
            assert_eq!(p.check(), Ok(()), "{p:?}");
        }
        let bad = [
            Params {
                chunk: 0,
                ..params()
            },
            Params {
                chunk: 65,
                ..params()
            },
            Params {
                max_payload: 5,
                ..params()
            },
            Params {
                chunk: 6,
                max_payload: 6,
                ..params()
            },
            Params {
                max_payload: 1501,
                ..params()
            },
            Params {
                ports: vec![],
                ..params()
            },
            Params {
                ports: vec![443, 0],
                ..params()
            },
            Params {
                ports: (1..=17).collect(),
                ..params()
            },
            Params {
                mark: 0,
                ..params()
            },
            Params {
                max_seg_payload: 0,
                ..params()
            },
            Params { l2: 4, ..params() },
        ];
        for p in bad {
            assert!(p.check().is_err(), "{p:?}");
        }
    }
}
