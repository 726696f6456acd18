//! Shared helpers of the integration tests: packet builders with their own
//! checksum code (independent of the crate's), fixture loading, and a driver
//! that checks the ownership rule on every call.

#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use govpass_core::engine::Disposition;
use govpass_core::packet::{self, TcpPacket};
use govpass_core::{Action, Engine, EngineConfig};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// NOP, NOP, timestamps (kind 8, length 10): what Linux puts on data segments.
pub fn ts_option(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

// ---------------------------------------------------------------- checksums

/// Plain RFC 1071 sum, written independently of `govpass_core::checksum`.
fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |b| u32::from(*b));
        acc += hi | lo;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn fold(acc: u32) -> u16 {
    let mut a = acc;
    while a > 0xffff {
        a = (a & 0xffff) + (a >> 16);
    }
    !(a as u16)
}

fn tcp_sum(pseudo: &[u8], segment: &[u8]) -> u16 {
    let acc = ones_sum(0, pseudo);
    let acc = acc + 6 + segment.len() as u32;
    fold(ones_sum(acc, segment))
}

/// True when the IP header (IPv4) and the TCP checksum of `pkt` verify.
pub fn checksums_ok(pkt: &[u8]) -> bool {
    match pkt[0] >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if total != pkt.len() || fold(ones_sum(0, &pkt[..ihl])) != 0 {
                return false;
            }
            tcp_sum(&pkt[12..20], &pkt[ihl..]) == 0
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if plen + 40 != pkt.len() {
                return false;
            }
            let t = packet::parse(pkt).expect("parsable").tcp_offset;
            tcp_sum(&pkt[8..40], &pkt[t..]) == 0
        }
        _ => false,
    }
}

// ----------------------------------------------------------------- builders

/// An IPv4 flow from 198.51.100.2 to 203.0.113.9:443 whose packets carry
/// `options` in their TCP header.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ack: u32,
    pub window: u16,
    pub ip_id: u16,
    pub ttl: u8,
    /// TCP options.
    pub options: Vec<u8>,
    /// IPv4 options (IHL > 5).
    pub ip_options: Vec<u8>,
}

impl Default for V4 {
    fn default() -> Self {
        V4 {
            src: [198, 51, 100, 2],
            dst: [203, 0, 113, 9],
            sport: 40000,
            dport: 443,
            ack: 0x1122_3344,
            window: 502,
            ip_id: 0x1234,
            ttl: 64,
            options: Vec::new(),
            ip_options: Vec::new(),
        }
    }
}

impl V4 {
    pub fn port(sport: u16) -> Self {
        V4 {
            sport,
            ..V4::default()
        }
    }

    pub fn with_options(&self, options: Vec<u8>) -> Self {
        V4 {
            options,
            ..self.clone()
        }
    }

    /// A packet with valid checksums; the ACK flag is always set.
    pub fn packet(&self, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        assert_eq!(self.ip_options.len() % 4, 0);
        let ihl = 20 + self.ip_options.len();
        let tcp_len = 20 + self.options.len();
        let total = ihl + tcp_len + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        p[6] = 0x40;
        p[8] = self.ttl;
        p[9] = 6;
        p[12..16].copy_from_slice(&self.src);
        p[16..20].copy_from_slice(&self.dst);
        p[20..ihl].copy_from_slice(&self.ip_options);
        let t = ihl;
        p[t..t + 2].copy_from_slice(&self.sport.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&self.dport.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&self.ack.to_be_bytes());
        p[t + 12] = ((tcp_len / 4) as u8) << 4;
        p[t + 13] = flags | ACK;
        p[t + 14..t + 16].copy_from_slice(&self.window.to_be_bytes());
        p[t + 20..t + tcp_len].copy_from_slice(&self.options);
        p[t + tcp_len..].copy_from_slice(payload);
        let c = fold(ones_sum(0, &p[..ihl]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let c = tcp_sum(&p[12..20], &p[t..]);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }
}

/// An IPv6 flow 2001:db8::2 -> 2001:db8::9 port 443, optionally with a
/// destination-options extension header (PadN) before TCP.
#[derive(Clone, Debug)]
pub struct V6 {
    pub sport: u16,
    pub dest_opts: bool,
    /// TCP options.
    pub options: Vec<u8>,
}

impl V6 {
    pub fn src() -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = 2;
        a
    }

    pub fn dst() -> [u8; 16] {
        let mut a = V6::src();
        a[15] = 9;
        a
    }

    pub fn packet(&self, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ext: &[u8] = if self.dest_opts {
            &[6, 0, 1, 4, 0, 0, 0, 0]
        } else {
            &[]
        };
        assert_eq!(self.options.len() % 4, 0);
        let tcp_len = 20 + self.options.len();
        let plen = ext.len() + tcp_len + payload.len();
        let mut p = vec![0u8; 40 + plen];
        p[0] = 0x60;
        p[1] = 0x0a; // traffic class / flow label bits that must be kept
        p[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        p[6] = if self.dest_opts { 60 } else { 6 };
        p[7] = 64;
        p[8..24].copy_from_slice(&V6::src());
        p[24..40].copy_from_slice(&V6::dst());
        p[40..40 + ext.len()].copy_from_slice(ext);
        let t = 40 + ext.len();
        p[t..t + 2].copy_from_slice(&self.sport.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&443u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&99u32.to_be_bytes());
        p[t + 12] = ((tcp_len / 4) as u8) << 4;
        p[t + 13] = flags | ACK;
        p[t + 14..t + 16].copy_from_slice(&1000u16.to_be_bytes());
        p[t + 20..t + tcp_len].copy_from_slice(&self.options);
        p[t + tcp_len..].copy_from_slice(payload);
        let c = tcp_sum(&p[8..40], &p[t..]);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }
}

// ----------------------------------------------------------------- fixtures

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hellos")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One line of `manifest.json`.
#[derive(Clone, Debug)]
pub struct Hello {
    pub file: String,
    pub sni: Option<String>,
    pub sni_offset: Option<usize>,
    pub record_len: usize,
    pub bytes: Vec<u8>,
}

/// The value after `"key": ` in a one-line JSON object (strings without
/// escapes, integers and null are all the manifest uses).
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\": ");
    let rest = &line[line.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(&s[..s.find('"')?]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    match rest[..end].trim() {
        "null" => None,
        v => Some(v),
    }
}

pub fn hellos() -> Vec<Hello> {
    let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).unwrap();
    let list: Vec<Hello> = text
        .lines()
        .filter(|l| l.contains("\"file\""))
        .map(|l| {
            let file = json_field(l, "file").unwrap().to_string();
            let bytes = fixture(&file);
            Hello {
                sni: json_field(l, "sni").map(str::to_string),
                sni_offset: json_field(l, "sni_offset").map(|v| v.parse().unwrap()),
                record_len: json_field(l, "record_len").unwrap().parse().unwrap(),
                file,
                bytes,
            }
        })
        .collect();
    assert!(list.len() >= 10, "manifest lists {} hellos", list.len());
    for h in &list {
        assert_eq!(h.bytes.len(), h.record_len, "{}", h.file);
    }
    list
}

// ------------------------------------------------------------------- driver

/// A parsed view of a packet the engine sent.
pub fn view(pkt: &[u8]) -> TcpPacket<'_> {
    packet::parse(pkt).expect("engine output parses")
}

/// Payload bytes of a packet.
pub fn payload(pkt: &[u8]) -> &[u8] {
    view(pkt).payload()
}

/// Drives an `Engine<u32>` (tokens are packet ids counted from 0) and checks
/// the ownership rule on every call: a passed packet's token is never made,
/// a taken packet's token is made once, and every token gets at most one
/// fate (Release, Drop or Accept) over the engine's life.
pub struct Driver {
    pub engine: Engine<u32>,
    next_id: u32,
    pub taken: HashSet<u32>,
    pub fates: HashMap<u32, Fate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Released,
    Dropped,
    /// Let go at once while the flow is still collecting (a packet without
    /// payload).
    Accepted,
}

impl Driver {
    pub fn new(cfg: EngineConfig) -> Self {
        Driver {
            engine: Engine::new(cfg).expect("valid config"),
            next_id: 0,
            taken: HashSet::new(),
            fates: HashMap::new(),
        }
    }

    pub fn default_cfg() -> Self {
        Driver::new(EngineConfig::default())
    }

    /// The id the next packet will get.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Feeds one packet; returns its disposition and this call's actions.
    pub fn feed(&mut self, pkt: &[u8], now: u64) -> (Disposition, Vec<Action<u32>>) {
        let id = self.next_id;
        self.next_id += 1;
        let made = Cell::new(0u32);
        let mut out = Vec::new();
        let d = self.engine.process(
            pkt,
            now,
            || {
                made.set(made.get() + 1);
                id
            },
            &mut out,
        );
        match d {
            Disposition::Pass => {
                assert_eq!(made.get(), 0, "packet {id} passed but its token was made");
                assert!(out.is_empty(), "packet {id} passed with actions {out:?}");
            }
            Disposition::Taken => {
                assert_eq!(made.get(), 1, "packet {id} taken without its token");
                self.taken.insert(id);
            }
        }
        self.record(&out);
        (d, out)
    }

    /// Feeds a packet the engine must let pass at once.
    pub fn pass(&mut self, pkt: &[u8], now: u64) {
        let (d, out) = self.feed(pkt, now);
        assert_eq!(d, Disposition::Pass, "{out:?}");
    }

    /// Feeds a packet the engine must take; returns the actions.
    pub fn take(&mut self, pkt: &[u8], now: u64) -> Vec<Action<u32>> {
        let (d, out) = self.feed(pkt, now);
        assert_eq!(d, Disposition::Taken);
        out
    }

    pub fn expire(&mut self, now: u64) -> Vec<Action<u32>> {
        let mut out = Vec::new();
        self.engine.expire(now, &mut out);
        self.record(&out);
        out
    }

    pub fn release_all(&mut self) -> Vec<Action<u32>> {
        let mut out = Vec::new();
        self.engine.release_all(&mut out);
        self.record(&out);
        out
    }

    fn record(&mut self, out: &[Action<u32>]) {
        for a in out {
            let (t, fate) = match a {
                Action::Release(t) => (*t, Fate::Released),
                Action::Drop(t) => (*t, Fate::Dropped),
                Action::Accept(t) => (*t, Fate::Accepted),
                Action::Send(pkt) => {
                    assert!(checksums_ok(pkt), "bad checksum in {pkt:02x?}");
                    continue;
                }
            };
            assert!(
                self.taken.contains(&t),
                "fate for token {t} that was never taken"
            );
            let before = self.fates.insert(t, fate);
            assert!(
                before.is_none(),
                "token {t} got a second fate {fate:?} after {before:?}"
            );
        }
    }

    /// Every taken token has its fate (call when nothing may be held).
    pub fn assert_all_fated(&self) {
        for t in &self.taken {
            assert!(self.fates.contains_key(t), "token {t} has no fate");
        }
        assert_eq!(self.engine.stats().held_packets_now, 0);
        assert_eq!(self.engine.stats().held_bytes_now, 0);
    }
}

/// The packets sent, in order.
pub fn sends(out: &[Action<u32>]) -> Vec<&Vec<u8>> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// The action kinds as a short string: `S` send, `R3` release of token 3,
/// `D3` drop of token 3, `A3` accept of token 3.
pub fn shape(out: &[Action<u32>]) -> String {
    out.iter()
        .map(|a| match a {
            Action::Send(_) => "S".to_string(),
            Action::Release(t) => format!("R{t}"),
            Action::Drop(t) => format!("D{t}"),
            Action::Accept(t) => format!("A{t}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits `data` at the given payload offsets.
pub fn cut(data: &[u8], at: &[usize]) -> Vec<(usize, Vec<u8>)> {
    let mut points = vec![0];
    points.extend(at.iter().copied().filter(|p| *p > 0 && *p < data.len()));
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| (w[0], data[w[0]..w[1]].to_vec()))
        .collect()
}
