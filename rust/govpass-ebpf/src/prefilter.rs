//! The kernel pre-filter (`bpf/prefilter.bpf.c`): a socket filter program for
//! iptables' bpf match, one per address family, each with its own flow map.
//!
//! The kernel split's gate map is created by its owner, not by this object.
//! aya has no way to hand a loader a map it did not create except a pin, so
//! the object declares the gate pinned by name: the loader pins the given map
//! in `pin_dir` for the length of the load and removes the pin afterwards (the
//! program keeps its own reference). Without a gate the loader creates an
//! empty one there (it reads "off") and removes that pin the same way.

use std::os::fd::OwnedFd;
use std::path::Path;

use aya::maps::{Map, MapData};
use aya::programs::SocketFilter;
use aya::{include_bytes_aligned, EbpfLoader};

use crate::{object, LoadError};

static OBJECT: &[u8] = include_bytes_aligned!("../bpf/prefilter.bpf.o");

/// The gate map's name in the object, and so its pin's name in `pin_dir`.
pub const GATE_MAP: &str = "gp_gate";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn program(self) -> &'static str {
        match self {
            Self::Ipv4 => "prefilter_ipv4",
            Self::Ipv6 => "prefilter_ipv6",
        }
    }

    fn flows(self) -> &'static str {
        match self {
            Self::Ipv4 => "flows_ipv4",
            Self::Ipv6 => "flows_ipv6",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Ipv4 => Self::Ipv6,
            Self::Ipv6 => Self::Ipv4,
        }
    }
}

/// The kernel split's gate: whole one-packet ClientHello records of a payload
/// size within `[min_payload, max_payload]`, and that the engine would cut
/// into two segments at `chunk` with `max_seg_payload` (`gp_split_max` in
/// common.h), do not match while it reads "on".
#[derive(Debug)]
pub struct Gate {
    pub map: OwnedFd,
    pub min_payload: u32,
    pub max_payload: u32,
    pub chunk: u32,
    pub max_seg_payload: u32,
}

/// A loaded (verified) program and its flow map, as file descriptors the
/// caller owns; nothing else of the load stays open.
#[derive(Debug)]
pub struct Prefilter {
    pub program: OwnedFd,
    pub flows: OwnedFd,
}

/// Loads the pre-filter for `family`: a flow remembered for at most
/// `max_age_ns` after its record's first packet, `gate` (when given) read on
/// every whole one-packet record. `pin_dir` is a directory on a bpf file
/// system, used only during the load.
pub fn load(
    family: Family,
    max_age_ns: u64,
    gate: Option<Gate>,
    pin_dir: &Path,
) -> Result<Prefilter, LoadError> {
    let pin = pin_dir.join(GATE_MAP);
    remove_pin(&pin)?; // left by a load that died half-way
    let globals = match &gate {
        Some(g) => [
            1u32,
            g.min_payload,
            g.max_payload,
            g.chunk,
            g.max_seg_payload,
        ],
        None => [0; 5],
    };
    if let Some(g) = gate {
        let map = MapData::from_fd(g.map).map_err(|e| LoadError::new("gate map", &e))?;
        map.pin(&pin).map_err(|e| LoadError::new("gate pin", &e))?;
    }
    let loaded = load_pinned(family, max_age_ns, globals, pin_dir);
    let removed = remove_pin(&pin);
    let loaded = loaded?;
    removed?;
    Ok(loaded)
}

fn load_pinned(
    family: Family,
    max_age_ns: u64,
    [gate_on, gate_min, gate_max, gate_chunk, gate_seg]: [u32; 5],
    pin_dir: &Path,
) -> Result<Prefilter, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(pin_dir)
        .set_global("max_age_ns", &max_age_ns, true)
        .set_global("gate_on", &gate_on, true)
        .set_global("gate_min", &gate_min, true)
        .set_global("gate_max", &gate_max, true)
        .set_global("gate_chunk", &gate_chunk, true)
        .set_global("gate_seg", &gate_seg, true)
        // The other family's program is not loaded: its map need not hold anything.
        .set_max_entries(family.other().flows(), 1)
        .load(OBJECT)
        .map_err(|e| LoadError::new("object load", &e))?;
    let program: &mut SocketFilter = object::program(&mut ebpf, family.program())?;
    program
        .load()
        .map_err(|e| LoadError::new("program load", &e))?;
    let program = object::program_fd(program.fd())?;
    let flows = match ebpf.map(family.flows()) {
        Some(Map::LruHashMap(data)) => object::map_fd(data)?,
        _ => return Err(object::missing(family.flows())),
    };
    Ok(Prefilter { program, flows })
}

fn remove_pin(pin: &Path) -> Result<(), LoadError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LoadError::io("gate unpin", &e)),
    }
}
