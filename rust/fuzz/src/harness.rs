//! The fuzz harness of `Engine::process`, shared by the cargo-fuzz target
//! (`fuzz_targets/process.rs`) and the stable-Rust proptest
//! (`rust/govpass-core/tests/fuzz_process.rs`, which includes this file by
//! path). It depends on `govpass_core` only.
//!
//! The input is read as a small script: a configuration byte, then
//! operations — a crafted packet of one of a few flows (payload cut from a
//! real ClientHello or taken from the input, any flags, options, seq near the
//! wrap, optionally truncated or with header bytes flipped), a raw packet
//! straight from the input, or a time step with `expire`. After every call
//! the invariants below are checked; any violation panics, which is what
//! the fuzzer reports:
//!
//! - no internal panic happened (`fail_count(Internal) == 0`): the engine
//!   catches its own panics and fails open, so a caught panic is a bug too;
//! - the ownership rule: a passed packet's token is never made, a taken
//!   one's exactly once, and every token gets at most one fate, and only
//!   after it was taken; at the end (`release_all`) every token has one;
//! - memory is bounded: `flows_now <= max_flows`, held packets equal the
//!   tokens still waiting for a fate and never exceed
//!   `max_flows * max_held_pkts`, held bytes never exceed that many packets
//!   of the largest size given;
//! - every `Send` parses as complete IPv4/IPv6 TCP, its checksums verify, it
//!   is no larger than `max_seg_payload + 40` bytes, and it carries no SYN,
//!   RST or URG.

use govpass_core::checksum;
use govpass_core::engine::Disposition;
use govpass_core::packet::{self, Skip};
use govpass_core::{Action, Engine, EngineConfig, FailReason, SplitMode, SplitPos};

/// Small limits so that eviction, overflow and too-many-packets are reached.
pub const MAX_FLOWS: u32 = 8;
pub const MAX_HELD_PKTS: u32 = 4;
pub const MAX_BUFFER: u32 = 512;

const HELLO_SHORT: &[u8] = include_bytes!("../../../tests/fixtures/hellos/openssl_tls12.bin");
const HELLO_MID: &[u8] = include_bytes!("../../../tests/fixtures/hellos/openssl_tls13.bin");
const HELLO_LONG: &[u8] = include_bytes!("../../../tests/fixtures/hellos/chromium_sni_early.bin");

/// Reads the script; runs out into zeros.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

fn config(c: &mut Cursor<'_>) -> EngineConfig {
    let a = c.u8();
    let b = c.u8();
    let positions: Vec<SplitPos> = [
        SplitPos::Sni(0),
        SplitPos::MidSld(0),
        SplitPos::SniEnd(-1),
        SplitPos::Abs(3),
        SplitPos::Sni(-300),
        SplitPos::Abs(100_000),
    ]
    .into_iter()
    .enumerate()
    .filter(|(i, _)| b & (1 << i) != 0)
    .map(|(_, p)| p)
    .collect();
    let chunk = [5, 1, 2, 100, 600, 0][usize::from(a >> 1) % 6];
    let chunk = if chunk == 0 && positions.is_empty() {
        5
    } else {
        chunk
    };
    EngineConfig {
        ports: vec![443],
        split_mode: if a & 1 == 0 {
            SplitMode::TlsHello
        } else {
            SplitMode::Immediate
        },
        split_chunk: chunk,
        split_positions: positions,
        collect_timeout_us: 1_000 + u64::from(a >> 4) * 20_000,
        max_buffer: if b & 0x80 == 0 { MAX_BUFFER } else { 2048 },
        max_held_pkts: MAX_HELD_PKTS,
        max_seg_payload: [1460, 1, 7, 100][usize::from(a >> 6)],
        flow_timeout_us: 1_000_000,
        max_flows: MAX_FLOWS,
        ..EngineConfig::default()
    }
}

/// One of a few flows: IPv4 on port 443, IPv6 with or without destination
/// options, and one IPv4 flow to port 80 (never watched).
fn header(flow: u8, seq: u32, flags: u8, options: &[u8], payload_len: usize) -> Vec<u8> {
    let flow = flow % 12;
    let tcp_len = 20 + options.len();
    let sport = 40_000 + u16::from(flow);
    let dport: u16 = if flow == 11 { 80 } else { 443 };
    let mut p;
    let t;
    if flow < 8 {
        let total = 20 + tcp_len + payload_len;
        p = vec![0u8; 20 + tcp_len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 51, 100, 2]);
        p[16..20].copy_from_slice(&[203, 0, 113, flow]);
        t = 20;
    } else {
        let ext: &[u8] = if flow & 1 == 0 {
            &[6, 0, 1, 4, 0, 0, 0, 0]
        } else {
            &[]
        };
        p = vec![0u8; 40 + ext.len() + tcp_len];
        let plen = ext.len() + tcp_len + payload_len;
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        p[6] = if ext.is_empty() { 6 } else { 60 };
        p[7] = 64;
        p[8..10].copy_from_slice(&[0x20, 0x01]);
        p[24..26].copy_from_slice(&[0x20, 0x01]);
        p[39] = flow;
        p[40..40 + ext.len()].copy_from_slice(ext);
        t = 40 + ext.len();
    }
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 12] = ((tcp_len / 4) as u8) << 4;
    p[t + 13] = flags;
    p[t + 20..].copy_from_slice(options);
    p
}

/// Fills in the checksums (so that valid packets are the common case).
fn finish(p: &mut [u8]) {
    let Ok(view) = packet::parse(p) else { return };
    let (t, key) = (view.tcp_offset, view.key);
    p[t + 16..t + 18].copy_from_slice(&[0, 0]);
    let sum = if key.v6 {
        checksum::tcp_ipv6(key.src, key.dst, &p[t..])
    } else {
        p[10..12].copy_from_slice(&[0, 0]);
        let s = checksum::ipv4_header(&p[..t]);
        p[10..12].copy_from_slice(&s.to_be_bytes());
        let (src, dst) = (&key.src, &key.dst);
        checksum::tcp_ipv4(
            [src[0], src[1], src[2], src[3]],
            [dst[0], dst[1], dst[2], dst[3]],
            &p[t..],
        )
    };
    p[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
}

fn crafted(c: &mut Cursor<'_>) -> Vec<u8> {
    let flow = c.u8();
    // Initial sequence numbers near the wrap.
    let isn = (u32::MAX - 600).wrapping_add(u32::from(flow % 12) * 97);
    let flags = c.u8() & 0x1f | 0x10;
    let off = c.u16();
    // Mostly forward offsets; sometimes a little before the start.
    let seq = isn
        .wrapping_add(u32::from(off % 2200))
        .wrapping_sub(u32::from(off >> 15) * 40);
    let options: &[u8] = match c.u8() % 4 {
        0 | 1 => &[],
        2 => &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        _ => &[1; 40],
    };
    let src = c.u8();
    let len = usize::from(c.u16() % 2100);
    let payload: Vec<u8> = match src % 5 {
        0 | 1 => {
            let hello = [HELLO_SHORT, HELLO_MID, HELLO_LONG][usize::from(src >> 3) % 3];
            let start = usize::from(off % 2200).min(hello.len());
            hello[start..(start + len).min(hello.len())].to_vec()
        }
        2 => {
            // A hello prefix with one byte changed.
            let mut h = HELLO_LONG[..len.min(HELLO_LONG.len())].to_vec();
            let at = usize::from(c.u16());
            if !h.is_empty() {
                let i = at % h.len();
                h[i] ^= c.u8() | 1;
            }
            h
        }
        _ => c.bytes(len).to_vec(),
    };
    let mut p = header(flow, seq, flags, options, payload.len());
    p.extend_from_slice(&payload);
    finish(&mut p);
    match c.u8() % 8 {
        // Truncated by the capture.
        0 => {
            let keep = usize::from(c.u16()) % (p.len() + 1);
            p.truncate(keep);
        }
        // Header bytes flipped (checksums then mostly wrong, as on a wire).
        1 => {
            for _ in 0..(c.u8() % 4) {
                let i = usize::from(c.u8()) % p.len().min(80);
                p[i] ^= c.u8();
            }
        }
        // Link-layer padding.
        2 => p.extend_from_slice(&[0; 6]),
        _ => {}
    }
    p
}

/// Per-token state: never made, taken (waiting for a fate), fated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    Unmade,
    Waiting,
    Fated,
}

struct Checker {
    cfg: EngineConfig,
    tokens: Vec<Tok>,
    largest_packet: u64,
}

impl Checker {
    fn actions(&mut self, out: &[Action<u32>]) {
        for a in out {
            match a {
                Action::Release(t) | Action::Drop(t) | Action::Accept(t) => {
                    let s = &mut self.tokens[*t as usize];
                    assert!(
                        *s == Tok::Waiting,
                        "fate for token {t} in state {}",
                        *s as u8
                    );
                    *s = Tok::Fated;
                }
                Action::Send(p) => self.sent(p),
            }
        }
    }

    fn sent(&self, p: &[u8]) {
        let v = match packet::parse(p) {
            Ok(v) => v,
            Err(e) => panic!("a Send does not parse: {e:?}: {p:02x?}"),
        };
        assert_eq!(
            v.bytes.len(),
            p.len(),
            "IP length of a Send disagrees with its size"
        );
        // Every packet the engine builds fits max-seg-payload + 40 bytes,
        // whatever the headers (TCP and IP options, IPv6 extension headers)
        // of the packet it was built from, and carries no flag that does not
        // survive a cut.
        assert!(
            p.len() as u64 <= u64::from(self.cfg.max_seg_payload) + 40,
            "Send of {} bytes > max-seg-payload {} + 40",
            p.len(),
            self.cfg.max_seg_payload,
        );
        assert_eq!(
            v.flags & (packet::flags::SYN | packet::flags::RST | packet::flags::URG),
            0,
            "Send with SYN, RST or URG"
        );
        assert!(v.payload_len() > 0, "empty Send");
        let t = v.tcp_offset;
        let ok = if v.key.v6 {
            checksum::tcp_ipv6(v.key.src, v.key.dst, &p[t..]) == 0
        } else {
            let (s, d) = (&v.key.src, &v.key.dst);
            checksum::ipv4_header(&p[..t]) == 0
                && checksum::tcp_ipv4([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]], &p[t..])
                    == 0
        };
        assert!(ok, "bad checksum in a Send");
    }

    fn state(&self, engine: &Engine<u32>) {
        let st = engine.stats();
        assert_eq!(
            st.fail_count(FailReason::Internal),
            0,
            "the engine caught a panic"
        );
        assert!(
            st.flows_now <= u64::from(self.cfg.max_flows),
            "flows {}",
            st.flows_now
        );
        let waiting = self.tokens.iter().filter(|t| **t == Tok::Waiting).count() as u64;
        assert_eq!(
            st.held_packets_now, waiting,
            "held packets != tokens without a fate"
        );
        let max_held = u64::from(self.cfg.max_flows) * u64::from(self.cfg.max_held_pkts);
        assert!(
            st.held_packets_now <= max_held,
            "held {} packets",
            st.held_packets_now
        );
        assert!(st.held_bytes_now <= st.held_packets_now * self.largest_packet);
        assert!(st.held_bytes_now <= max_held * self.largest_packet);
    }
}

/// Runs one script and returns the engine's final counters (so tests can
/// see which paths a corpus reaches). Panics when an invariant breaks.
pub fn run(data: &[u8]) -> govpass_core::Stats {
    let mut c = Cursor { data };
    let cfg = config(&mut c);
    let mut engine: Engine<u32> = Engine::new(cfg.clone()).expect("harness config is valid");
    let mut ck = Checker {
        cfg,
        tokens: Vec::new(),
        largest_packet: 0,
    };
    let mut out = Vec::new();
    let mut now: u64 = u64::from(c.u16());
    let mut ops = 0;
    while !c.is_empty() && ops < 256 {
        ops += 1;
        let op = c.u8();
        // Time moves forward by up to ~65 ms, or by up to ~4 s.
        let step = u64::from(c.u16());
        now += if op & 0x80 != 0 { step * 64 } else { step };
        let packet = match op & 0x7f {
            0..=7 => {
                engine.expire(now, &mut out);
                ck.actions(&out);
                out.clear();
                ck.state(&engine);
                continue;
            }
            8..=15 => {
                let len = usize::from(c.u16() % 1600);
                c.bytes(len).to_vec()
            }
            _ => crafted(&mut c),
        };
        ck.largest_packet = ck.largest_packet.max(packet.len() as u64);
        let id = ck.tokens.len() as u32;
        ck.tokens.push(Tok::Unmade);
        let mut made = 0;
        let d = engine.process(
            &packet,
            now,
            || {
                made += 1;
                id
            },
            &mut out,
        );
        match d {
            Disposition::Pass => {
                assert_eq!(made, 0, "passed packet's token was made");
                assert!(out.is_empty(), "passed packet with actions");
            }
            Disposition::Taken => {
                assert_eq!(made, 1, "taken packet's token made {made} times");
                ck.tokens[id as usize] = Tok::Waiting;
                if let Err(Skip::Malformed | Skip::Fragment | Skip::NotTcp) = packet::parse(&packet)
                {
                    panic!("a packet that is not TCP was taken");
                }
            }
        }
        ck.actions(&out);
        out.clear();
        ck.state(&engine);
    }
    engine.release_all(&mut out);
    ck.actions(&out);
    assert!(
        ck.tokens.iter().all(|t| *t != Tok::Waiting),
        "a token never got its fate"
    );
    let st = engine.stats();
    assert_eq!(
        (st.held_packets_now, st.held_bytes_now, st.flows_now),
        (0, 0, 0)
    );
    st
}

/// Writes scripts in the format `run` reads, for tests and seed corpora.
pub struct Script {
    bytes: Vec<u8>,
}

/// What happens to a crafted packet after its checksums are set.
#[derive(Debug, Clone)]
pub enum Mangle {
    None,
    /// Keep only this many bytes (a capture cut short).
    Truncate(u16),
    /// XOR byte `i % min(len, 80)` with `x`; at most 3 pairs are used.
    Flip(Vec<(u8, u8)>),
    /// Six bytes of link-layer padding after the IP packet.
    Pad,
}

/// Which embedded ClientHello a piece comes from.
#[derive(Debug, Clone, Copy)]
pub enum Hello {
    /// openssl_tls12.bin, 186 bytes.
    Short,
    /// openssl_tls13.bin, 249 bytes.
    Mid,
    /// chromium_sni_early.bin, 2000 bytes.
    Long,
}

impl Hello {
    pub fn len(self) -> usize {
        match self {
            Hello::Short => HELLO_SHORT.len(),
            Hello::Mid => HELLO_MID.len(),
            Hello::Long => HELLO_LONG.len(),
        }
    }
    pub fn is_empty(self) -> bool {
        false
    }
    /// A `src` byte that `crafted` maps to this hello.
    fn src(self) -> u8 {
        match self {
            Hello::Short => 0,
            Hello::Mid => 10,
            Hello::Long => 16,
        }
    }
}

impl Script {
    /// `mode`: bit 0 immediate mode, bits 1-3 chunk choice, bits 4-5
    /// collect timeout, bits 6-7 max-seg-payload choice; `positions`: bits
    /// 0-5 split positions, bit 7 max-buffer 2048 instead of 512.
    pub fn new(mode: u8, positions: u8, start_time: u16) -> Self {
        let mut bytes = vec![mode, positions];
        bytes.extend_from_slice(&start_time.to_be_bytes());
        Script { bytes }
    }

    fn op(&mut self, op: u8, step: u16, long_step: bool) {
        self.bytes.push(op | if long_step { 0x80 } else { 0 });
        self.bytes.extend_from_slice(&step.to_be_bytes());
    }

    /// Time moves on by `step` us (x64 when `long_step`), then `expire`.
    pub fn expire(&mut self, step: u16, long_step: bool) -> &mut Self {
        self.op(0, step, long_step);
        self
    }

    /// A packet of raw bytes (at most 1599 are read).
    pub fn raw(&mut self, step: u16, packet: &[u8]) -> &mut Self {
        let packet = &packet[..packet.len().min(1599)];
        self.op(8, step, false);
        self.bytes
            .extend_from_slice(&(packet.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(packet);
        self
    }

    /// Bytes `start..start+len` of a hello, at the matching sequence number
    /// of `flow` (0-7 IPv4, 8-10 IPv6, 11 IPv4 to port 80). `options`: 0 none,
    /// 2 timestamps, 3 forty bytes of NOPs.
    #[allow(clippy::too_many_arguments)]
    pub fn hello_piece(
        &mut self,
        step: u16,
        flow: u8,
        hello: Hello,
        start: u16,
        len: u16,
        flags: u8,
        options: u8,
        mangle: Mangle,
    ) -> &mut Self {
        self.op(16, step, false);
        self.bytes.extend_from_slice(&[flow, flags]);
        self.bytes.extend_from_slice(&(start % 2200).to_be_bytes());
        self.bytes.extend_from_slice(&[options, hello.src()]);
        self.bytes.extend_from_slice(&(len % 2100).to_be_bytes());
        self.mangle(mangle);
        self
    }

    /// A packet of `flow` with this payload at offset `off` of the flow.
    pub fn data(&mut self, step: u16, flow: u8, off: u16, flags: u8, payload: &[u8]) -> &mut Self {
        let payload = &payload[..payload.len().min(2099)];
        self.op(16, step, false);
        self.bytes.extend_from_slice(&[flow, flags]);
        self.bytes.extend_from_slice(&(off % 2200).to_be_bytes());
        self.bytes.extend_from_slice(&[0, 4]);
        self.bytes
            .extend_from_slice(&(payload.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(payload);
        self.mangle(Mangle::None);
        self
    }

    fn mangle(&mut self, m: Mangle) {
        match m {
            Mangle::None => self.bytes.push(3),
            Mangle::Truncate(keep) => {
                self.bytes.push(0);
                self.bytes.extend_from_slice(&keep.to_be_bytes());
            }
            Mangle::Flip(pairs) => {
                let pairs = &pairs[..pairs.len().min(3)];
                self.bytes.extend_from_slice(&[1, pairs.len() as u8]);
                for (i, x) in pairs {
                    self.bytes.extend_from_slice(&[*i, *x]);
                }
            }
            Mangle::Pad => self.bytes.push(2),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}
