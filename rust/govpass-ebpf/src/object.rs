//! What every loader does with a loaded object: find a program or a map by
//! name and keep its descriptor, the object itself being dropped.

use std::os::fd::{AsFd, OwnedFd};

use aya::maps::MapData;
use aya::programs::{Program, ProgramError, ProgramFd};
use aya::Ebpf;

use crate::LoadError;

/// The program `name` of `ebpf`, as its type `T`.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| missing(name))?
        .try_into()
        .map_err(|e| LoadError::new("program type", &e))
}

/// A descriptor of a loaded program of our own, outliving the object.
pub fn program_fd(fd: Result<&ProgramFd, ProgramError>) -> Result<OwnedFd, LoadError> {
    fd.map_err(|e| LoadError::new("program load", &e))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| LoadError::io("program fd", &e))
}

/// A descriptor of a map of our own, outliving the object.
pub fn map_fd(data: &MapData) -> Result<OwnedFd, LoadError> {
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| LoadError::io("map fd", &e))
}

/// The error for a program or map the embedded object should have and has not.
pub fn missing(name: &str) -> LoadError {
    let err = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{name} is not in the embedded object"),
    );
    LoadError::new("object", &err)
}
