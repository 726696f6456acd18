//! The engine: packets in, actions out.
//!
//! Ownership rule for callers: a packet given to [`Engine::process`] either
//! passes at once ([`Disposition::Pass`]: the caller accepts it unmodified and
//! no action was produced), or the engine takes it ([`Disposition::Taken`]):
//! its fate — [`Action::Release`], [`Action::Accept`] or [`Action::Drop`] —
//! is then given exactly once, in this call's actions or in a later call's
//! (`process`, `expire` or `release_all`).
//! Actions are to be carried out in order.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::config::{check_strategy, EngineConfig, SplitMode};
use crate::error::ConfigError;
use crate::flow::{Collector, Flow, FlowState, FlowTable, HeldPacket, Timer};
pub use crate::flow::{COLLECT_BUDGET, EXPIRE_BUDGET, SILENCE_BUDGET};
use crate::packet::{self, flags, FlowKey, Skip, TcpPacket};
use crate::reassembly::{Added, Assembler};
use crate::seq::Seq;
use crate::stats::{FailReason, Stats};
use crate::targeting::{preselect, FlowFacts, Pre, Profile, ProfileAction, Strategy};
use crate::tls::{self, Detect};

mod choose;
mod split;
pub use choose::AutoEvent;
use split::resplit;

/// What the caller must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<T> {
    /// Let this packet go out unchanged now, while its flow is still being
    /// collected (it carries no payload). Backends that steer the kernel's
    /// queueing by marks keep the flow watched for this one.
    Accept(T),
    /// Let this held packet go out exactly as it was captured.
    Release(T),
    /// Discard this held packet: its bytes go out in `Send` segments.
    Drop(T),
    /// Send this new packet (IP header first, checksums valid).
    Send(Vec<u8>),
}

/// The fate of the packet given to `process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Accept it unmodified now; no actions were produced.
    Pass,
    /// The engine owns it; see the module documentation.
    Taken,
}

/// Holds the caller's token for the current packet until the engine stores it.
struct Slot<F> {
    make: Option<F>,
}

impl<F> Slot<F> {
    fn take<T>(&mut self) -> T
    where
        F: FnOnce() -> T,
    {
        match self.make.take() {
            Some(f) => f(),
            None => unreachable!("the current packet's token was taken twice"),
        }
    }
}

pub struct Engine<T> {
    cfg: EngineConfig,
    ports: Box<[u64; 1024]>,
    profiles: Vec<Profile>,
    /// Whether choosing a profile or cutting needs the host name.
    needs_host: bool,
    /// Whether some profile learns names (inbound packets then matter).
    auto: bool,
    events: Vec<AutoEvent>,
    /// Interface of the packet being processed (0: unknown).
    iface: u32,
    flows: FlowTable<T>,
    stats: Stats,
    panic_armed: bool,
    panic_in_plan: std::sync::atomic::AtomicBool,
}

impl<T: Send + 'static> Engine<T> {
    pub fn new(cfg: EngineConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut ports = Box::new([0u64; 1024]);
        for p in &cfg.ports {
            ports[usize::from(*p) / 64] |= 1 << (p % 64);
        }
        let default = Profile::catch_all(
            "default",
            ProfileAction::Split(Strategy {
                chunk: cfg.split_chunk,
                positions: cfg.split_positions.clone(),
            }),
        );
        // Idle flows are forgotten at most flow-timeout / 16 late.
        let flows = FlowTable::new(cfg.flow_timeout_us / 16);
        let mut engine = Engine {
            cfg,
            ports,
            profiles: Vec::new(),
            needs_host: false,
            auto: false,
            events: Vec::new(),
            iface: 0,
            flows,
            stats: Stats::default(),
            panic_armed: false,
            panic_in_plan: std::sync::atomic::AtomicBool::new(false),
        };
        engine.set_profiles(vec![default])?;
        Ok(engine)
    }

    /// Replaces the profiles (ordered, first match wins). Flows already
    /// decided keep their decision; flows still collecting use the new ones.
    pub fn set_profiles(&mut self, profiles: Vec<Profile>) -> Result<(), ConfigError> {
        for p in &profiles {
            if let ProfileAction::Split(s) = &p.action {
                check_strategy(s.chunk, &s.positions)?;
            }
        }
        self.needs_host = profiles.iter().any(|p| {
            p.has_host_filter()
                || p.watch
                || matches!(&p.action, ProfileAction::Split(s) if s.needs_sni())
        });
        self.auto = profiles.iter().any(|p| p.auto || p.watch);
        self.profiles = profiles;
        Ok(())
    }

    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    /// Auto-learning verdicts since the last call.
    pub fn take_events(&mut self) -> Vec<AutoEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        Stats {
            flows_now: self.flows.len() as u64,
            ..self.stats.clone()
        }
    }

    /// Makes the next `process` call panic inside the engine, to exercise the
    /// recovery path from tests.
    pub fn arm_panic(&mut self) {
        self.panic_armed = true;
    }

    /// Makes the next first-record plan (profile choice and segment
    /// building) panic, to exercise the path where held packets must be
    /// released rather than lost.
    pub fn arm_panic_in_plan(&mut self) {
        self.panic_in_plan
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    #[inline]
    fn watched(&self, port: u16) -> bool {
        self.ports[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    /// Handles one captured packet (bytes from the IP header). `now` is a
    /// monotonic time in microseconds; `token` makes the caller's handle for
    /// the packet and is called only if the engine takes the packet.
    pub fn process<F>(
        &mut self,
        packet: &[u8],
        now: u64,
        token: F,
        out: &mut Vec<Action<T>>,
    ) -> Disposition
    where
        F: FnOnce() -> T,
    {
        self.process_on(packet, now, 0, token, out)
    }

    /// [`Engine::process`] for a packet whose interface index is known, so
    /// profiles with interface filters can match.
    pub fn process_on<F>(
        &mut self,
        packet: &[u8],
        now: u64,
        iface: u32,
        token: F,
        out: &mut Vec<Action<T>>,
    ) -> Disposition
    where
        F: FnOnce() -> T,
    {
        self.stats.packets += 1;
        self.iface = iface;
        if let Some(dport) = packet::quick_ipv4_dport(packet) {
            if !self.watched(dport) && !self.auto {
                self.stats.passed += 1;
                return Disposition::Pass;
            }
        }
        let mark = out.len();
        let mut slot = Slot { make: Some(token) };
        let result = catch_unwind(AssertUnwindSafe(|| self.step(packet, now, &mut slot, out)));
        let disposition = match result {
            Ok(d) => d,
            Err(_) => self.recover(packet, mark, out),
        };
        match (disposition, slot.make.is_some()) {
            (Disposition::Pass, true) if out.len() == mark => {
                self.stats.passed += 1;
                Disposition::Pass
            }
            (_, true) => {
                // Earlier packets were released: the current one follows them.
                out.push(Action::Release(slot.take()));
                Disposition::Taken
            }
            (_, false) => Disposition::Taken,
        }
    }

    /// After a caught panic: undo this call's actions (their packets are
    /// released instead, new segments are discarded) and fail the flow open.
    fn recover(&mut self, packet: &[u8], mark: usize, out: &mut Vec<Action<T>>) -> Disposition {
        self.stats.fail(FailReason::Internal);
        let partial: Vec<Action<T>> = out.drain(mark..).collect();
        for action in partial {
            match action {
                Action::Release(t) | Action::Drop(t) | Action::Accept(t) => {
                    out.push(Action::Release(t))
                }
                Action::Send(_) => {}
            }
        }
        let key = catch_unwind(|| packet::parse(packet).ok().map(|p| p.key))
            .ok()
            .flatten();
        if let Some(key) = key {
            if let Some(flow) = self.flows.remove(&key) {
                if let FlowState::Collecting(c) = flow.state {
                    release_all(*c, &mut self.stats, out);
                }
            }
        }
        Disposition::Pass
    }

    fn step<F>(
        &mut self,
        packet: &[u8],
        now: u64,
        slot: &mut Slot<F>,
        out: &mut Vec<Action<T>>,
    ) -> Disposition
    where
        F: FnOnce() -> T,
    {
        if std::mem::take(&mut self.panic_armed) {
            panic!("armed panic");
        }
        let p = match packet::parse(packet) {
            Ok(p) => p,
            Err(Skip::Truncated(Some(key))) => {
                self.fail_flow(key, FailReason::Truncated, out);
                return Disposition::Pass;
            }
            Err(_) => return Disposition::Pass,
        };
        if !self.watched(p.key.dport) {
            if self.auto && self.watched(p.key.sport) {
                self.inbound(&p);
            }
            return Disposition::Pass;
        }
        let timeout = self.cfg.flow_timeout_us;
        let requeue_us = self.flows.requeue_us();
        let state = match self.flows.get_mut(&p.key) {
            Some(_) if p.has(flags::SYN) => {
                // A new connection on a tuple still tracked (the old one was
                // reset, say): forget the old flow, releasing what it held.
                self.remove_flow(p.key, FailReason::FinRst, out);
                return self.new_flow(&p, now, slot, out);
            }
            Some(flow) if restarts(flow, &p, self.cfg.max_buffer) => {
                // A ClientHello at another sequence number: a new connection
                // reusing the tuple (its SYN was not seen). Start afresh.
                self.flows.remove(&p.key);
                return self.new_flow(&p, now, slot, out);
            }
            Some(flow) if flow.last_seen.saturating_add(timeout) > now => {
                if flow.seen(now, requeue_us) {
                    self.flows.requeue(&p.key, now);
                    match self.flows.get_mut(&p.key) {
                        Some(flow) => &mut flow.state,
                        None => return Disposition::Pass,
                    }
                } else {
                    &mut flow.state
                }
            }
            Some(_) => {
                // Idle too long: forget it and treat this packet as new.
                self.remove_flow(p.key, FailReason::Timeout, out);
                return self.new_flow(&p, now, slot, out);
            }
            None => return self.new_flow(&p, now, slot, out),
        };
        match state {
            FlowState::PassThrough => {
                if p.has(flags::FIN | flags::RST) {
                    self.flows.remove(&p.key);
                }
                Disposition::Pass
            }
            FlowState::Watching(w) => {
                if p.payload_len() > 0 && w.resent(p.seq, self.cfg.auto_retrans) {
                    self.verdict(p.key, true);
                }
                if p.has(flags::FIN | flags::RST) {
                    self.flows.remove(&p.key);
                }
                Disposition::Pass
            }
            FlowState::Injected(memo) => {
                if let Some(w) = memo.watch.as_mut() {
                    // Any part of the record counts: a censor that drops a
                    // later segment gets the first one acknowledged, and the
                    // kernel resends from there.
                    if p.payload_len() > 0 && w.resent(p.seq, self.cfg.auto_retrans) {
                        self.verdict(p.key, true);
                    }
                }
                let Some(flow) = self.flows.get_mut(&p.key) else {
                    return Disposition::Pass;
                };
                let FlowState::Injected(memo) = &mut flow.state else {
                    return Disposition::Pass;
                };
                let msp = self.cfg.max_seg_payload;
                let d = resplit(memo, msp, &p, slot, &mut self.stats, out);
                if p.has(flags::FIN | flags::RST) {
                    self.flows.remove(&p.key);
                }
                d
            }
            FlowState::Collecting(c) => {
                let collect_deadline = c.started.saturating_add(self.cfg.collect_timeout_us);
                let reason = if now >= collect_deadline {
                    Some(FailReason::Timeout)
                } else if p.has(flags::FIN | flags::RST) {
                    Some(FailReason::FinRst)
                } else if p.has(flags::SYN) {
                    Some(FailReason::SynData)
                } else if p.has(flags::URG) {
                    Some(FailReason::Ambiguous)
                } else if p.payload_len() == 0 {
                    out.push(Action::Accept(slot.take()));
                    return Disposition::Taken;
                } else if c.held.len() >= self.cfg.max_held_pkts as usize {
                    Some(FailReason::TooManyPackets)
                } else {
                    match c.stream.add(p.seq, p.payload()) {
                        Added::Ok => None,
                        Added::Overflow => Some(FailReason::Overflow),
                        Added::Ambiguous => Some(FailReason::Ambiguous),
                    }
                };
                if let Some(reason) = reason {
                    let closing = reason == FailReason::FinRst;
                    self.fail_flow(p.key, reason, out);
                    if closing {
                        self.flows.remove(&p.key);
                    }
                    return Disposition::Pass;
                }
                self.stats.hold(p.bytes.len());
                c.max_payload = c.max_payload.max(p.payload_len());
                c.held.push(HeldPacket::new(slot.take(), &p));
                self.advance(p.key, now, out);
                Disposition::Taken
            }
        }
    }

    /// First payload packet of a flow (or the first after the flow was forgotten).
    fn new_flow<F>(
        &mut self,
        p: &TcpPacket<'_>,
        now: u64,
        slot: &mut Slot<F>,
        out: &mut Vec<Action<T>>,
    ) -> Disposition
    where
        F: FnOnce() -> T,
    {
        if p.payload_len() == 0 || p.has(flags::RST | flags::FIN) && !p.has(flags::SYN) {
            return Disposition::Pass;
        }
        if p.has(flags::SYN) {
            // Data on a SYN (TCP Fast Open): never touched.
            self.stats.fail(FailReason::SynData);
            self.insert(p.key, now, p.seq, FlowState::PassThrough, out);
            return Disposition::Pass;
        }
        self.stats.flows += 1;
        if p.has(flags::URG) {
            // Urgent data: a receiver without SO_OOBINLINE takes a byte out
            // of the stream, so what the stream holds is ambiguous, and no
            // cut keeps the urgent pointer right.
            self.stats.fail(FailReason::Ambiguous);
            self.insert(p.key, now, p.seq, FlowState::PassThrough, out);
            return Disposition::Pass;
        }
        let facts = FlowFacts {
            key: p.key,
            iface: self.iface,
        };
        if preselect(&self.profiles, &facts) == Pre::Pass {
            self.stats.profile_pass += 1;
            self.insert(p.key, now, p.seq, FlowState::PassThrough, out);
            return Disposition::Pass;
        }
        let payload = p.payload();
        match tls::detect_client_hello(payload) {
            Detect::Mismatch => {
                self.stats.fail(FailReason::NotTls);
                self.insert(p.key, now, p.seq, FlowState::PassThrough, out);
                Disposition::Pass
            }
            Detect::Match { record_len } if record_len > self.cfg.max_buffer as usize => {
                self.stats.fail(FailReason::Overflow);
                self.insert(p.key, now, p.seq, FlowState::PassThrough, out);
                Disposition::Pass
            }
            Detect::Match { record_len }
                if window_len(self.cfg.split_mode, record_len, payload.len()) <= payload.len() =>
            {
                // The whole window is in this packet: split without buffering.
                let window = window_len(self.cfg.split_mode, record_len, payload.len());
                let held = vec![HeldPacket::new(slot.take(), p)];
                let state = self.decide(facts, held, payload, window, payload.len(), out);
                let id = self.insert(p.key, now, p.seq, state, out);
                self.arm_silence(p.key, id, now);
                Disposition::Taken
            }
            _ => {
                let mut stream = Assembler::new(p.seq, self.cfg.max_buffer);
                stream.add(p.seq, payload);
                self.stats.hold(p.bytes.len());
                let collector = Collector {
                    started: now,
                    held: vec![HeldPacket::new(slot.take(), p)],
                    stream,
                    max_payload: payload.len(),
                    first_payload: Some(payload.len()),
                    iface: self.iface,
                };
                let id = self.insert(
                    p.key,
                    now,
                    p.seq,
                    FlowState::Collecting(Box::new(collector)),
                    out,
                );
                let deadline = now.saturating_add(self.cfg.collect_timeout_us);
                self.flows.set_deadline(Timer::Collect, p.key, id, deadline);
                Disposition::Taken
            }
        }
    }

    /// Re-examines a collecting flow after new bytes arrived.
    fn advance(&mut self, key: FlowKey, now: u64, out: &mut Vec<Action<T>>) {
        let mode = self.cfg.split_mode;
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let FlowState::Collecting(c) = &flow.state else {
            return;
        };
        let prefix = c.stream.contiguous();
        let window = match tls::detect_client_hello(prefix) {
            Detect::NeedMore => return,
            Detect::Mismatch => return self.fail_flow(key, FailReason::NotTls, out),
            Detect::Match { record_len } if record_len > self.cfg.max_buffer as usize => {
                return self.fail_flow(key, FailReason::Overflow, out);
            }
            Detect::Match { record_len } => {
                window_len(mode, record_len, c.first_payload.unwrap_or(usize::MAX))
            }
        };
        if prefix.len() < window {
            return;
        }
        let FlowState::Collecting(c) = std::mem::replace(&mut flow.state, FlowState::PassThrough)
        else {
            return;
        };
        let c = *c;
        for h in &c.held {
            self.stats.unhold(h.bytes.len());
        }
        let facts = FlowFacts {
            key,
            iface: c.iface,
        };
        let state = self.decide(
            facts,
            c.held,
            c.stream.contiguous(),
            window,
            c.max_payload,
            out,
        );
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.state = state;
            let id = flow.id;
            self.arm_silence(key, id, now);
        }
    }

    /// Starts the silence timer of a flow whose first record just went out,
    /// when it is watched: no server data by then is a failure. The flow
    /// timeout bounds it (an idle flow is forgotten after that).
    fn arm_silence(&mut self, key: FlowKey, id: u64, now: u64) {
        let silence = self.cfg.auto_silence_us.min(self.cfg.flow_timeout_us);
        let watched = self.flows.get(&key).is_some_and(|f| match &f.state {
            FlowState::Watching(_) => true,
            FlowState::Injected(m) => m.watch.is_some(),
            _ => false,
        });
        if silence > 0 && watched {
            let at = now.saturating_add(silence);
            self.flows.set_deadline(Timer::Silence, key, id, at);
        }
    }

    fn insert(
        &mut self,
        key: FlowKey,
        now: u64,
        first_seq: Seq,
        state: FlowState<T>,
        out: &mut Vec<Action<T>>,
    ) -> u64 {
        while self.flows.len() >= self.cfg.max_flows as usize {
            let Some((_, oldest)) = self.flows.pop_oldest() else {
                break;
            };
            self.stats.evicted += 1;
            if let FlowState::Collecting(c) = oldest.state {
                self.stats.fail(FailReason::Evicted);
                release_all(*c, &mut self.stats, out);
            }
        }
        self.flows.insert(key, now, first_seq, state)
    }

    /// Releases what a collecting flow holds and lets the rest of it pass.
    fn fail_flow(&mut self, key: FlowKey, reason: FailReason, out: &mut Vec<Action<T>>) {
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        if let FlowState::Collecting(_) = flow.state {
            let FlowState::Collecting(c) =
                std::mem::replace(&mut flow.state, FlowState::PassThrough)
            else {
                return;
            };
            self.stats.fail(reason);
            release_all(*c, &mut self.stats, out);
        }
    }

    /// Forgets a flow, releasing what it holds.
    fn remove_flow(&mut self, key: FlowKey, reason: FailReason, out: &mut Vec<Action<T>>) {
        self.fail_flow(key, reason, out);
        self.flows.remove(&key);
    }

    /// Timer call: fails open the flows whose collect-timeout passed,
    /// reports watched flows silent for auto-silence as failed, and
    /// forgets flows idle for longer than the flow timeout. Each call looks
    /// at no more than [`COLLECT_BUDGET`] collect and [`SILENCE_BUDGET`]
    /// silence deadlines and [`EXPIRE_BUDGET`]
    /// idle flows, so it stays short at any table size; a larger backlog (a burst of
    /// flows timing out together) is worked off by the following calls. A
    /// flow last seen at `t` is forgotten by the first call at or after
    /// `t` plus flow-timeout plus flow-timeout / 16 that has budget left for
    /// it. A packet of a flow idle past the flow timeout starts a new flow
    /// whether or not the sweep reached it, and a full table evicts the
    /// least recently seen flow, so a backlog costs memory only.
    pub fn expire(&mut self, now: u64, out: &mut Vec<Action<T>>) {
        self.flows.reset_visits();
        for key in self.flows.due(Timer::Collect, now, COLLECT_BUDGET) {
            self.fail_flow(key, FailReason::Timeout, out);
        }
        for key in self.flows.due(Timer::Silence, now, SILENCE_BUDGET) {
            if self.verdict(key, true) {
                self.stats.auto_silent += 1;
            }
        }
        let timeout = self.cfg.flow_timeout_us;
        for flow in self.flows.sweep_idle(now, timeout, EXPIRE_BUDGET) {
            if let FlowState::Collecting(c) = flow.state {
                self.stats.fail(FailReason::Timeout);
                release_all(*c, &mut self.stats, out);
            }
        }
        self.flows.upkeep();
    }

    /// Flow-table entries the last `expire` call examined (for tests of its
    /// bound).
    #[doc(hidden)]
    pub fn expire_visits(&self) -> u64 {
        self.flows.visits()
    }

    /// Bytes the flow table itself holds now (for tests that memory is
    /// given back after a burst).
    #[doc(hidden)]
    pub fn flow_table_bytes(&self) -> usize {
        self.flows.allocation_bytes()
    }

    /// Releases every held packet and forgets all flows (shutdown).
    pub fn release_all(&mut self, out: &mut Vec<Action<T>>) {
        for flow in self.flows.drain() {
            if let FlowState::Collecting(c) = flow.state {
                release_all(*c, &mut self.stats, out);
            }
        }
    }
}

/// Whether `p` opens a new connection on the tuple of a decided flow (whose
/// SYN was not seen: the rules do not queue SYNs). It must start a
/// ClientHello record, and lie after the flow's first byte (a new connection
/// on a reused tuple gets a larger initial sequence number) — but not inside
/// a split record (a retransmission) nor shortly before the first byte seen
/// (the real start of a flow first seen out of order). Flows still
/// collecting are never restarted.
fn restarts<T>(flow: &Flow<T>, p: &TcpPacket<'_>, max_buffer: u32) -> bool {
    let offset = p.seq.offset_from(flow.first_seq);
    let buffer = i64::from(max_buffer);
    // How far ahead of the flow's first byte a ClientHello is still this
    // connection's: a split or watched flow's stream goes on after its first
    // record, and a second ClientHello there (the answer to a
    // HelloRetryRequest, right after the first record) is a later record of
    // the same connection, which is never touched. A new connection reusing
    // the tuple starts at a random sequence number, so it lands in this range
    // with a chance of about (window + max_buffer) / 2^32.
    let ahead = match &flow.state {
        FlowState::Collecting(_) => return false,
        FlowState::Injected(memo) => i64::from(memo.window) + buffer,
        FlowState::Watching(_) => 2 * buffer,
        FlowState::PassThrough => 1,
    };
    let same_connection = (-buffer..ahead).contains(&offset);
    !same_connection && matches!(tls::detect_client_hello(p.payload()), Detect::Match { .. })
}

/// The number of first-record bytes that are reshaped.
fn window_len(mode: SplitMode, record_len: usize, first_payload: usize) -> usize {
    match mode {
        SplitMode::TlsHello => record_len,
        SplitMode::Immediate => record_len.min(first_payload),
    }
}

fn release_all<T>(c: Collector<T>, stats: &mut Stats, out: &mut Vec<Action<T>>) {
    for h in c.held {
        stats.unhold(h.bytes.len());
        out.push(Action::Release(h.token));
    }
}
