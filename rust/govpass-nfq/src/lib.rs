//! The NFQUEUE packet loop of govpass, for a queue that Python has bound.
//!
//! Python binds the queue with `netfilterqueue` (queue length, copy mode,
//! fail-open flags) and hands over the netlink socket and the two raw
//! sockets; this crate then reads the queued packets itself, feeds them to
//! the engine and carries out its actions: verdicts go back over the same
//! socket, several per `send`, and split segments leave through the raw
//! sockets. Doing this in Rust takes the per-packet Python work (a callback,
//! a `bytes` copy, one call per action) out of the path of every ClientHello.
//!
//! [`msg`] is the wire format (pure, tested without a kernel); [`Loop`] the I/O.

pub mod msg;

#[cfg(target_os = "linux")]
mod io;

#[cfg(target_os = "linux")]
pub use io::{wait_readable, Counters, Loop, Wait};

/// What the engine keeps for a held packet: enough to give its verdict.
pub trait QueuedPacket {
    /// `(packet id, mark it carried)` when the packet came from the queue.
    fn queued(&self) -> Option<(u32, u32)>;
}
