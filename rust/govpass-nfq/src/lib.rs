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
pub use io::{Counters, Loop, Received};

/// What the engine keeps for a held packet: enough to give its verdict.
pub trait QueuedPacket {
    /// `(packet id, mark it carried)` when the packet came from the queue.
    fn queued(&self) -> Option<(u32, u32)>;
}

/// What a loop works with. The file descriptors stay owned by the caller
/// (Python), which must keep them open while the loop is used.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The bound queue's netlink socket, and the queue's number.
    pub fd: i32,
    pub queue: u16,
    /// ORed into released packets' marks: the rules skip it.
    pub mark: u32,
    /// IP_HDRINCL-style raw sockets that already carry the mark (SO_MARK).
    pub raw4: i32,
    pub raw6: Option<i32>,
    /// Whether a split's last segments may leave in the verdicts of the
    /// packets they replace rather than through a raw socket (see
    /// `Loop`'s `Output::apply`).
    pub in_verdicts: bool,
}
