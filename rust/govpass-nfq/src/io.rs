//! The system calls: receive queued packets, send verdicts and segments.

use std::io;
use std::os::fd::RawFd;

use govpass_core::engine::Disposition;
use govpass_core::{Action, Engine};

use crate::msg::{self, Message, NF_ACCEPT, NF_DROP};
use crate::QueuedPacket;

/// Largest datagram the kernel sends for one packet: the copy range (at most
/// 65535 bytes of packet) plus headers and attributes.
const RECV_BUF: usize = 65535 + 4096;

/// What the loop did besides the engine's own counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub inject_sent: u64,
    pub inject_errors: u64,
    /// Verdicts the kernel refused or that could not be sent.
    pub verdict_errors: u64,
}

/// Verdicts waiting to be sent, several netlink messages in one buffer.
#[derive(Debug, Default)]
struct Verdicts {
    buf: Vec<u8>,
    count: usize,
}

/// How a wait for queued packets ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Ready,
    Timeout,
    /// A signal arrived: the caller should give Python its turn.
    Interrupted,
}

/// Blocks until `fd` is readable, `timeout_ms` passes or a signal arrives.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<Wait> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(Wait::Interrupted)
        } else {
            Err(err)
        };
    }
    Ok(if n > 0 { Wait::Ready } else { Wait::Timeout })
}

/// One bound queue's loop state. The file descriptors stay owned by the
/// caller (Python), which must keep them open while the loop is used.
#[derive(Debug)]
pub struct Loop {
    buf: Vec<u8>,
    out: Output,
}

/// Where decisions go: verdicts over the queue's socket, segments through the
/// raw sockets. Kept apart from the receive buffer, which is borrowed while
/// its packets are decided.
#[derive(Debug)]
struct Output {
    fd: RawFd,
    queue: u16,
    mark: u32,
    raw4: RawFd,
    raw6: Option<RawFd>,
    verdicts: Verdicts,
    counters: Counters,
}

impl Loop {
    /// `fd`: the queue's netlink socket; `mark`: ORed into released packets'
    /// marks (the rules skip it); `raw4`/`raw6`: IP_HDRINCL-style raw sockets
    /// that already carry the mark (SO_MARK).
    pub fn new(fd: RawFd, queue: u16, mark: u32, raw4: RawFd, raw6: Option<RawFd>) -> Self {
        Loop {
            buf: vec![0; RECV_BUF],
            out: Output {
                fd,
                queue,
                mark,
                raw4,
                raw6,
                verdicts: Verdicts::default(),
                counters: Counters::default(),
            },
        }
    }

    pub fn fd(&self) -> RawFd {
        self.out.fd
    }

    pub fn counters(&self) -> Counters {
        self.out.counters
    }

    /// Reads every packet already queued (at most `max`), runs each through
    /// the engine and carries out the actions. Returns the packets read.
    pub fn drain<T, F>(
        &mut self,
        engine: &mut Engine<T>,
        now: u64,
        max: usize,
        mut token: F,
        actions: &mut Vec<Action<T>>,
    ) -> io::Result<usize>
    where
        T: QueuedPacket,
        F: FnMut(u32, u32) -> T,
    {
        let out = &mut self.out;
        let mut packets = 0;
        while packets < max {
            // SAFETY: the buffer outlives the call and its length is passed.
            let n = unsafe {
                libc::recv(
                    out.fd,
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => break,
                    // The socket overflowed and the kernel dropped (or, with
                    // fail-open, accepted) packets: go on with the next ones.
                    Some(libc::ENOBUFS) => continue,
                    _ => {
                        out.flush();
                        return Err(err);
                    }
                }
            }
            for message in msg::messages(&self.buf[..n as usize]) {
                match message {
                    Message::Packet(p) => {
                        packets += 1;
                        let (id, mark) = (p.id, p.mark);
                        let taken = engine.process_on(
                            p.payload,
                            now,
                            p.outdev,
                            || token(id, mark),
                            actions,
                        );
                        match taken {
                            Disposition::Pass => out.release(id, mark),
                            Disposition::Taken => out.apply(actions),
                        }
                    }
                    Message::Error(_) => out.counters.verdict_errors += 1,
                    Message::Other => {}
                }
            }
        }
        out.flush();
        Ok(packets)
    }

    /// Carries out engine actions in order (and empties `actions`), then
    /// sends the verdicts: for timer and shutdown actions.
    pub fn apply<T: QueuedPacket>(&mut self, actions: &mut Vec<Action<T>>) {
        self.out.apply(actions);
        self.out.flush();
    }
}

impl Output {
    fn apply<T: QueuedPacket>(&mut self, actions: &mut Vec<Action<T>>) {
        for action in actions.drain(..) {
            match action {
                Action::Send(packet) => {
                    // Verdicts already decided go first, so packets of a flow
                    // leave in the order the engine gave.
                    self.flush();
                    self.send(&packet);
                }
                Action::Release(t) => {
                    if let Some((id, mark)) = t.queued() {
                        self.release(id, mark);
                    }
                }
                Action::Accept(t) => {
                    if let Some((id, _)) = t.queued() {
                        self.push(id, NF_ACCEPT, None);
                    }
                }
                Action::Drop(t) => {
                    if let Some((id, _)) = t.queued() {
                        self.push(id, NF_DROP, None);
                    }
                }
            }
        }
    }

    /// Accept a packet unchanged, marked so that the rules let it through.
    fn release(&mut self, id: u32, mark: u32) {
        self.push(id, NF_ACCEPT, Some(mark | self.mark));
    }

    fn push(&mut self, id: u32, verdict: u32, mark: Option<u32>) {
        msg::push_verdict(&mut self.verdicts.buf, self.queue, id, verdict, mark);
        self.verdicts.count += 1;
    }

    /// Sends the pending verdicts in one `send`.
    fn flush(&mut self) {
        if self.verdicts.count == 0 {
            return;
        }
        let buf = &self.verdicts.buf;
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd, buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 || n as usize != buf.len() {
            self.counters.verdict_errors += self.verdicts.count as u64;
        }
        self.verdicts.buf.clear();
        self.verdicts.count = 0;
    }

    /// Sends one generated IP packet through the raw socket of its family.
    fn send(&mut self, packet: &[u8]) {
        let ok = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                addr.sin_family = libc::AF_INET as libc::sa_family_t;
                addr.sin_addr.s_addr =
                    u32::from_ne_bytes([packet[16], packet[17], packet[18], packet[19]]);
                send_to(self.raw4, packet, &addr)
            }
            Some(6) if packet.len() >= 40 => match self.raw6 {
                Some(fd) => {
                    // SAFETY: all-zero is a valid sockaddr_in6.
                    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    addr.sin6_addr.s6_addr.copy_from_slice(&packet[24..40]);
                    send_to(fd, packet, &addr)
                }
                None => false,
            },
            _ => false,
        };
        if ok {
            self.counters.inject_sent += 1;
        } else {
            self.counters.inject_errors += 1;
        }
    }
}

fn send_to<A>(fd: RawFd, packet: &[u8], addr: &A) -> bool {
    // SAFETY: `addr` is a valid sockaddr of its own size; the packet buffer is
    // valid for its length.
    let n = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (addr as *const A).cast(),
            std::mem::size_of::<A>() as libc::socklen_t,
        )
    };
    n >= 0 && n as usize == packet.len()
}
