//! The system calls: receive queued packets, send verdicts and segments.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use govpass_core::engine::Disposition;
use govpass_core::{Action, Engine};

use crate::msg::{self, Message, NF_ACCEPT, NF_DROP};
use crate::{QueuedPacket, Setup};

/// Largest datagram the kernel sends for one packet: the copy range (at most
/// 65535 bytes of packet) plus headers and attributes.
const RECV_BUF: usize = 65535 + 4096;

/// Datagrams one receive takes at most (one `recvmmsg`).
const BATCH: usize = 16;

/// How far the socket's receive timeout may be off the time asked for before
/// it is set again: a wait may end this much after its deadline, and a steady
/// stream of packets costs a `setsockopt` per this much time, not per packet.
const TIMEOUT_SLACK: Duration = Duration::from_millis(2);

/// The largest packet a verdict may carry (an attribute's length is 16 bits).
const MAX_VERDICT_PACKET: usize = 0xFFFF - 8;

/// What the loop did besides the engine's own counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Segments sent through the raw sockets.
    pub inject_sent: u64,
    pub inject_errors: u64,
    /// Segments that left in place of a packet they replace, in its verdict.
    pub verdict_sent: u64,
    /// Verdicts the kernel refused or that could not be sent.
    pub verdict_errors: u64,
}

/// Verdicts waiting to be sent, several netlink messages in one buffer.
#[derive(Debug, Default)]
struct Verdicts {
    buf: Vec<u8>,
    count: usize,
}

/// How a receive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// This many datagrams are waiting for [`Loop::handle`] (0: the socket
    /// overflowed and the kernel dropped, or with fail-open accepted, some).
    Datagrams(usize),
    Timeout,
    /// A signal arrived: the caller should give Python its turn.
    Interrupted,
}

/// One bound queue's loop state.
#[derive(Debug)]
pub struct Loop {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    received: usize,
    /// The receive timeout (SO_RCVTIMEO) set on the socket, if any.
    timeout: Option<Duration>,
    out: Output,
}

/// Where decisions go: verdicts over the queue's socket, segments through the
/// raw sockets. Kept apart from the receive buffers, which are borrowed while
/// their packets are decided.
#[derive(Debug)]
struct Output {
    setup: Setup,
    verdicts: Verdicts,
    /// Scratch: the queued packets a split drops, `(id, mark)`.
    carriers: Vec<(u32, u32)>,
    counters: Counters,
}

impl Loop {
    /// A loop over `setup`'s queue. Makes the queue's socket blocking:
    /// [`Loop::receive`] waits in the receive itself.
    pub fn new(setup: Setup) -> io::Result<Self> {
        let fd = setup.fd;
        // SAFETY: fcntl on a descriptor the caller keeps open.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Loop {
            bufs: (0..BATCH).map(|_| vec![0; RECV_BUF]).collect(),
            lens: [0; BATCH],
            received: 0,
            timeout: None,
            out: Output {
                setup,
                verdicts: Verdicts::default(),
                carriers: Vec::new(),
                counters: Counters::default(),
            },
        })
    }

    pub fn counters(&self) -> Counters {
        self.out.counters
    }

    /// Waits up to `timeout` (zero: not at all) for queued packets and reads
    /// what is there, up to [`BATCH`] datagrams, in one system call. Needs no
    /// engine, so the caller can run it without holding anything else.
    pub fn receive(&mut self, timeout: Duration) -> io::Result<Received> {
        let flags = if timeout.is_zero() {
            libc::MSG_DONTWAIT
        } else {
            self.set_timeout(timeout)?;
            // Block for the first datagram only, then take what is there.
            libc::MSG_WAITFORONE
        };
        // SAFETY: all-zero iovecs and mmsghdrs are valid; they are filled below.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((v, m), buf) in iov
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(self.bufs.iter_mut())
        {
            v.iov_base = buf.as_mut_ptr().cast();
            v.iov_len = buf.len();
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: BATCH headers, each pointing to one buffer that outlives the call.
        let n = unsafe {
            libc::recvmmsg(
                self.out.setup.fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(Received::Timeout),
                Some(libc::EINTR) => Ok(Received::Interrupted),
                // The socket overflowed: go on with the next packets.
                Some(libc::ENOBUFS) => Ok(Received::Datagrams(0)),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for (len, m) in self.lens.iter_mut().zip(&msgs[..n]) {
            *len = m.msg_len as usize;
        }
        self.received = n;
        Ok(Received::Datagrams(n))
    }

    /// Runs every packet of the datagrams [`Loop::receive`] read through the
    /// engine and carries out the actions; sends the verdicts. Returns the
    /// packets handled.
    pub fn handle<T, F>(
        &mut self,
        engine: &mut Engine<T>,
        now: u64,
        mut token: F,
        actions: &mut Vec<Action<T>>,
    ) -> usize
    where
        T: QueuedPacket + Send + 'static,
        F: FnMut(u32, u32) -> T,
    {
        let out = &mut self.out;
        let mut packets = 0;
        for (buf, &len) in self.bufs.iter().zip(&self.lens[..self.received]) {
            for message in msg::messages(&buf[..len]) {
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
        self.received = 0;
        out.flush();
        packets
    }

    /// Carries out engine actions in order (and empties `actions`), then
    /// sends the verdicts: for timer and shutdown actions.
    pub fn apply<T: QueuedPacket>(&mut self, actions: &mut Vec<Action<T>>) {
        self.out.apply(actions);
        self.out.flush();
    }

    /// Gives the socket back without a receive timeout, as the binding that
    /// owns it expects between calls.
    pub fn end_wait(&mut self) {
        if self.timeout.take().is_some() {
            // Best effort: a failure leaves a timeout that only shortens waits.
            let _ = set_rcvtimeo(self.out.setup.fd, Duration::ZERO);
        }
    }

    fn set_timeout(&mut self, want: Duration) -> io::Result<()> {
        if let Some(now) = self.timeout {
            if now.abs_diff(want) <= TIMEOUT_SLACK {
                return Ok(());
            }
        }
        // Zero would mean "no timeout": wait at least a microsecond.
        let want = want.max(Duration::from_micros(1));
        set_rcvtimeo(self.out.setup.fd, want)?;
        self.timeout = Some(want);
        Ok(())
    }
}

/// Sets SO_RCVTIMEO (zero: none).
fn set_rcvtimeo(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Output {
    /// Carries out one engine call's actions, in order.
    ///
    /// A split drops the packets it replaces. With `setup.in_verdicts`, each of
    /// them carries one of the split's last segments out instead: the
    /// verdict accepts the queued packet with the segment's bytes in place
    /// of its own (the segment's own mark added, as the raw sockets give it).
    /// That saves a raw send per carried segment and, for a hello in one
    /// packet, leaves the first segment as the only raw send. Only packets of
    /// the same call serve, and the engine gives Sends and Drops of one flow
    /// per call, so the kernel's route, socket and connection tracking of
    /// the packet fit the segment it carries. A carried segment's verdict
    /// takes the segment's place among the verdicts, and every raw send
    /// flushes the verdicts before it, so packets leave in the engine's order.
    fn apply<T: QueuedPacket>(&mut self, actions: &mut Vec<Action<T>>) {
        let (first_carried, carried) = self.pick_carriers(actions);
        let (mut send_no, mut drop_no) = (0, 0);
        for action in actions.drain(..) {
            match action {
                Action::Send(packet) => {
                    if send_no >= first_carried {
                        let (id, mark) = self.carriers[send_no - first_carried];
                        let mark = Some(mark | self.setup.mark);
                        self.push(id, NF_ACCEPT, mark, Some(&packet));
                        self.counters.verdict_sent += 1;
                    } else {
                        // Verdicts already decided go first, so packets of a
                        // flow leave in the order the engine gave.
                        self.flush();
                        self.send(&packet);
                    }
                    send_no += 1;
                }
                Action::Release(t) => {
                    if let Some((id, mark)) = t.queued() {
                        self.release(id, mark);
                    }
                }
                Action::Accept(t) => {
                    if let Some((id, _)) = t.queued() {
                        self.push(id, NF_ACCEPT, None, None);
                    }
                }
                Action::Drop(t) => {
                    if let Some((id, _)) = t.queued() {
                        // The first `carried` dropped packets left as segments.
                        if drop_no >= carried {
                            self.push(id, NF_DROP, None, None);
                        }
                        drop_no += 1;
                    }
                }
            }
        }
    }

    /// Fills `carriers` with the queued packets `actions` drop, one per
    /// carried segment (the last ones). Returns the index, among the Sends,
    /// of the first carried segment, and how many are carried.
    fn pick_carriers<T: QueuedPacket>(&mut self, actions: &[Action<T>]) -> (usize, usize) {
        self.carriers.clear();
        if !self.setup.in_verdicts {
            return (usize::MAX, 0);
        }
        let mut sends = 0;
        for action in actions {
            match action {
                Action::Drop(t) => self.carriers.extend(t.queued()),
                Action::Send(p) if p.len() > MAX_VERDICT_PACKET => return (usize::MAX, 0),
                Action::Send(_) => sends += 1,
                _ => {}
            }
        }
        let carried = sends.min(self.carriers.len());
        (sends - carried, carried)
    }

    /// Accept a packet unchanged, marked so that the rules let it through.
    fn release(&mut self, id: u32, mark: u32) {
        self.push(id, NF_ACCEPT, Some(mark | self.setup.mark), None);
    }

    fn push(&mut self, id: u32, verdict: u32, mark: Option<u32>, packet: Option<&[u8]>) {
        let queue = self.setup.queue;
        msg::push_verdict(&mut self.verdicts.buf, queue, id, verdict, mark, packet);
        self.verdicts.count += 1;
    }

    /// Sends the pending verdicts in one `send`.
    fn flush(&mut self) {
        if self.verdicts.count == 0 {
            return;
        }
        let buf = &self.verdicts.buf;
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.setup.fd, buf.as_ptr().cast(), buf.len(), 0) };
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
                send_to(self.setup.raw4, packet, &addr)
            }
            Some(6) if packet.len() >= 40 => match self.setup.raw6 {
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
