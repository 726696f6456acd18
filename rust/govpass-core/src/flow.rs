//! Per-flow state and the flow table.
//!
//! The seed's states map onto this as follows: NEW and SPLIT_READY are
//! transient inside one `process` call; COLLECTING, INJECTED and PASS_THROUGH
//! are [`FlowState`] variants; CLOSED is removal from the table (FIN/RST,
//! idle timeout, eviction).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::packet::{FlowKey, TcpPacket};
use crate::reassembly::Assembler;
use crate::seq::Seq;
use crate::stepped_map::SteppedMap;

/// A packet the engine holds, with the offsets its view needs.
#[derive(Debug)]
pub struct HeldPacket<T> {
    pub token: T,
    pub bytes: Vec<u8>,
    pub tcp_offset: usize,
    pub payload_offset: usize,
    pub seq: Seq,
    pub flags: u8,
}

impl<T> HeldPacket<T> {
    pub fn new(token: T, p: &TcpPacket<'_>) -> Self {
        HeldPacket {
            token,
            bytes: p.bytes.to_vec(),
            tcp_offset: p.tcp_offset,
            payload_offset: p.payload_offset,
            seq: p.seq,
            flags: p.flags,
        }
    }

    pub fn view(&self, key: FlowKey) -> TcpPacket<'_> {
        TcpPacket {
            bytes: &self.bytes,
            tcp_offset: self.tcp_offset,
            payload_offset: self.payload_offset,
            key,
            seq: self.seq,
            flags: self.flags,
        }
    }

    pub fn payload_len(&self) -> usize {
        self.bytes.len() - self.payload_offset
    }
}

/// A flow whose first record is still incomplete.
#[derive(Debug)]
pub struct Collector<T> {
    pub started: u64,
    /// Held packets in arrival order.
    pub held: Vec<HeldPacket<T>>,
    pub stream: Assembler,
    /// Largest TCP payload among the flow's packets.
    pub max_payload: usize,
    /// Payload length of the packet that carried the first stream byte
    /// (immediate mode splits only that much).
    pub first_payload: Option<usize>,
    /// Interface index the flow leaves by (0: unknown), for profile filters.
    pub iface: u32,
}

/// What is remembered of a split flow: enough to split retransmissions of
/// the record the same way.
#[derive(Debug)]
pub struct SplitMemo {
    pub base: Seq,
    pub window: u32,
    pub cuts: Box<[u32]>,
    pub seg_limit: u32,
    /// Set when the flow's profile watches: its verdict is still to come.
    pub watch: Option<Box<WatchMemo>>,
}

/// A flow passed untouched on behalf of an auto-learning profile, or split
/// by a watching profile, watched for signs that it was blocked.
#[derive(Debug)]
pub struct WatchMemo {
    /// Name of the profile the flow was watched for, kept with the flow: the
    /// profiles may be replaced before the verdict comes.
    pub profile: Box<str>,
    pub host: Box<[u8]>,
    /// Sequence number of the ClientHello's first byte.
    pub base: Seq,
    /// Bytes of the first record from `base` (a packet starting inside
    /// them was sent before).
    pub window: u32,
    /// Times the ClientHello, or a part of it, was sent again.
    pub retrans: u32,
    /// Offset from `base` of the last packet counted in `retrans`: the
    /// kernel resends from its first unacknowledged byte, so a packet that
    /// starts at or before it begins the next round (the rest of a round
    /// counts once).
    pub last_resent: Option<u32>,
}

impl WatchMemo {
    pub fn new(profile: Box<str>, host: Box<[u8]>, base: Seq, window: u32) -> Self {
        WatchMemo {
            profile,
            host,
            base,
            window,
            retrans: 0,
            last_resent: None,
        }
    }

    /// Counts a payload packet of the watched flow; true when it is the
    /// `limit`-th round of retransmissions of the first record.
    pub fn resent(&mut self, seq: Seq, limit: u32) -> bool {
        let offset = seq.offset_from(self.base);
        let Ok(offset) = u32::try_from(offset) else {
            return false;
        };
        if offset >= self.window {
            return false;
        }
        let new_round = self.last_resent.is_none_or(|last| offset <= last);
        self.last_resent = Some(offset);
        if new_round {
            self.retrans += 1;
        }
        new_round && self.retrans >= limit
    }
}

#[derive(Debug)]
pub enum FlowState<T> {
    Collecting(Box<Collector<T>>),
    Injected(Box<SplitMemo>),
    Watching(Box<WatchMemo>),
    PassThrough,
}

#[derive(Debug)]
pub struct Flow<T> {
    pub id: u64,
    pub last_seen: u64,
    /// Sequence number of the flow's first payload byte seen.
    pub first_seq: Seq,
    pub state: FlowState<T>,
    /// Neighbours in the table's recency list.
    older: Option<FlowKey>,
    newer: Option<FlowKey>,
    /// When the flow was last moved to the newest end of that list.
    queued: u64,
}

impl<T> Flow<T> {
    /// Records a packet at `now`. True when the flow is due to move to the
    /// newest end of its table's recency list ([`FlowTable::requeue`]).
    #[inline]
    pub fn seen(&mut self, now: u64, requeue_us: u64) -> bool {
        self.last_seen = now;
        now.saturating_sub(self.queued) >= requeue_us
    }
}

/// Most idle flows one timer call examines (and forgets). Forgetting a flow
/// that holds nothing costs a few hash-table operations, so a call stays
/// within about a millisecond whatever the table size; a larger backlog is
/// worked off by the following calls.
pub const EXPIRE_BUDGET: usize = 2048;

/// Most collect deadlines one timer call examines. Each may release a
/// collecting flow's held packets and free its buffers, a few times dearer
/// than forgetting an idle flow, hence the smaller number.
pub const COLLECT_BUDGET: usize = 1024;

/// Most silence deadlines one timer call examines. Each may report a
/// verdict (an event with the host name), about as dear as a collect
/// deadline.
pub const SILENCE_BUDGET: usize = 1024;

/// Below this many slots the table is not shrunk (its memory is negligible).
const MIN_SHRINK_CAPACITY: usize = 4096;

/// Most flows a shrink of the deadline heap copies (in one go).
const MAX_SHRINK_LEN: usize = 4096;

/// Buckets of a resize under way that one timer call moves (besides those
/// every insert moves): a resize ends even when no flow is added, at a cost
/// of well under a millisecond per call.
const TIMER_MOVE: usize = 4096;

/// Flows by key, kept in a recency list (least recently seen first) so that
/// evicting the oldest and forgetting idle flows look only at the flows
/// concerned, and with a heap of collect deadlines so that collecting flows
/// whose deadline passed are found without scanning the table.
///
/// The recency list is coarse: a flow moves to the newest end only when
/// `requeue_us` passed since it last moved, so a packet costs no list work
/// in the common case, and a flow idle for the flow timeout is forgotten at
/// most `requeue_us` late (see [`FlowTable::sweep_idle`]).
pub struct FlowTable<T> {
    /// Grows and shrinks a few flows per call ([`SteppedMap`]): no single
    /// call rehashes a million flows.
    map: SteppedMap<FlowKey, Flow<T>>,
    oldest: Option<FlowKey>,
    newest: Option<FlowKey>,
    /// Deadlines by [`Timer`]; entries of flows that are gone or no longer
    /// in the timer's state are stale and skipped (matched by id).
    deadlines: [BinaryHeap<Deadline>; 2],
    next_id: u64,
    requeue_us: u64,
    /// Entries examined by timer calls since `reset_visits`.
    visits: u64,
}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The first record must be complete by then.
    Collect = 0,
    /// A watched flow must have seen server data by then.
    Silence = 1,
}

/// A deadline: (when, flow id, flow key), earliest first.
type Deadline = Reverse<(u64, u64, FlowKeyOrd)>;

/// FlowKey ordered only so it can sit in the deadline heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKeyOrd(FlowKey);

impl PartialOrd for FlowKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FlowKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let a = &self.0;
        let b = &other.0;
        (a.src, a.dst, a.sport, a.dport, a.v6).cmp(&(b.src, b.dst, b.sport, b.dport, b.v6))
    }
}

impl<T: Send + 'static> FlowTable<T> {
    /// An empty table whose recency list is refreshed at most every
    /// `requeue_us` per flow.
    pub fn new(requeue_us: u64) -> Self {
        FlowTable {
            map: SteppedMap::default(),
            oldest: None,
            newest: None,
            deadlines: [BinaryHeap::new(), BinaryHeap::new()],
            next_id: 0,
            requeue_us,
            visits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of the table's own allocation (the flows' boxed states and
    /// held packets not included).
    pub fn allocation_bytes(&self) -> usize {
        let heaps: usize = self.deadlines.iter().map(BinaryHeap::capacity).sum();
        self.map.allocation_size() + heaps * std::mem::size_of::<Deadline>()
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow<T>> {
        self.map.get(key)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow<T>> {
        self.map.get_mut(key)
    }

    /// Inserts a new flow (replacing any flow of that key) and returns its id.
    pub fn insert(&mut self, key: FlowKey, now: u64, first_seq: Seq, state: FlowState<T>) -> u64 {
        self.remove(&key);
        self.next_id += 1;
        let id = self.next_id;
        self.map.insert(
            key,
            Flow {
                id,
                last_seen: now,
                first_seq,
                state,
                older: None,
                newer: None,
                queued: now,
            },
        );
        self.link_newest(key);
        id
    }

    /// Removes a flow.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow<T>> {
        let flow = self.map.remove(key)?;
        self.unlink(flow.older, flow.newer);
        Some(flow)
    }

    /// How long a flow stays put in the recency list after it moved.
    pub fn requeue_us(&self) -> u64 {
        self.requeue_us
    }

    /// Moves flow `key` to the newest end of the recency list (after
    /// [`Flow::seen`] said it is due to).
    pub fn requeue(&mut self, key: &FlowKey, now: u64) {
        let newest = self.newest == Some(*key);
        let Some(flow) = self.map.get_mut(key) else {
            return;
        };
        flow.queued = now;
        if !newest {
            let (older, newer) = (flow.older.take(), flow.newer.take());
            self.unlink(older, newer);
            self.link_newest(*key);
        }
    }

    /// Makes `key` (in the map, unlinked) the newest flow of the list.
    fn link_newest(&mut self, key: FlowKey) {
        let prev = self.newest.replace(key);
        match prev.and_then(|p| self.map.get_mut(&p)) {
            Some(p) => p.newer = Some(key),
            None => self.oldest = Some(key),
        }
        if let Some(f) = self.map.get_mut(&key) {
            f.older = prev;
            f.newer = None;
        }
    }

    /// Joins the neighbours of a flow taken out of the list (with no
    /// older neighbour its newer one is the oldest flow now, and so on).
    fn unlink(&mut self, older: Option<FlowKey>, newer: Option<FlowKey>) {
        match older.and_then(|k| self.map.get_mut(&k)) {
            Some(o) => o.newer = newer,
            None => self.oldest = newer,
        }
        match newer.and_then(|k| self.map.get_mut(&k)) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
    }

    /// Registers a deadline of flow `id`. Entries left by flows that left
    /// the timer's state are dropped when they reach the top of the heap
    /// (two at most per call, so this never scans), and by `due`.
    pub fn set_deadline(&mut self, timer: Timer, key: FlowKey, id: u64, at: u64) {
        self.deadlines[timer as usize].push(Reverse((at, id, FlowKeyOrd(key))));
        for _ in 0..2 {
            match self.deadlines[timer as usize].peek() {
                Some(Reverse((_, id, k))) if !self.is_live(timer, &k.0, *id) => {
                    self.deadlines[timer as usize].pop();
                }
                _ => break,
            }
        }
    }

    /// Whether flow `key` is still flow `id` and in the state `timer` is for.
    fn is_live(&self, timer: Timer, key: &FlowKey, id: u64) -> bool {
        self.map.get(key).is_some_and(|f| {
            f.id == id
                && match (&f.state, timer) {
                    (FlowState::Collecting(_), Timer::Collect) => true,
                    (FlowState::Watching(_), Timer::Silence) => true,
                    (FlowState::Injected(m), Timer::Silence) => m.watch.is_some(),
                    _ => false,
                }
        })
    }

    /// Removes and returns the least recently seen flow.
    pub fn pop_oldest(&mut self) -> Option<(FlowKey, Flow<T>)> {
        let key = self.oldest?;
        self.remove(&key).map(|f| (key, f))
    }

    /// Keys of flows still in the state of `timer` whose deadline is at or
    /// before `now`, looking at no more than `budget` heap entries (the rest
    /// wait for the next call).
    pub fn due(&mut self, timer: Timer, now: u64, budget: usize) -> Vec<FlowKey> {
        let mut out = Vec::new();
        for _ in 0..budget {
            let Some(Reverse((at, id, key))) = self.deadlines[timer as usize].peek().copied()
            else {
                break;
            };
            if at > now {
                break;
            }
            self.deadlines[timer as usize].pop();
            self.visits += 1;
            if self.is_live(timer, &key.0, id) {
                out.push(key.0);
            }
        }
        out
    }

    /// Removes, oldest first, flows not seen for `timeout` by `now`, at most
    /// `budget` of them. The list is in order of `queued`, and a flow is
    /// seen at most `requeue_us` after it was queued; so once the oldest
    /// flow is not idle, every idle flow behind it turns idle within
    /// `requeue_us`: a flow last seen at `t` is gone by the first call at or
    /// after `t + timeout + requeue_us` that finds fewer than `budget`
    /// removals ahead of it.
    pub fn sweep_idle(&mut self, now: u64, timeout: u64, budget: usize) -> Vec<Flow<T>> {
        let mut out = Vec::new();
        while out.len() < budget {
            let Some(key) = self.oldest else { break };
            self.visits += 1;
            let idle = self
                .map
                .get(&key)
                .is_some_and(|f| f.last_seen.saturating_add(timeout) <= now);
            if !idle {
                break;
            }
            out.extend(self.remove(&key));
        }
        out
    }

    /// The timer's share of table upkeep: moves part of a resize under way,
    /// and gives memory back after a burst: the table shrinks to twice what
    /// it holds once it holds less than an eighth of its room (moving the
    /// flows over the following calls), the deadline heap likewise once it
    /// holds at most `MAX_SHRINK_LEN` entries. Growth doubles at full, so a
    /// table shrinks only after losing three quarters of what it last grew
    /// to: no flapping.
    pub fn upkeep(&mut self) {
        self.map.step(TIMER_MOVE);
        let (len, cap) = (self.map.len(), self.map.capacity());
        if cap > MIN_SHRINK_CAPACITY && len * 8 < cap {
            self.map.shrink_to((len * 2).max(MIN_SHRINK_CAPACITY / 2));
        }
        for heap in &mut self.deadlines {
            let (len, cap) = (heap.len(), heap.capacity());
            if cap > MIN_SHRINK_CAPACITY && len * 8 < cap && len <= MAX_SHRINK_LEN {
                heap.shrink_to((len * 2).max(MIN_SHRINK_CAPACITY / 2));
            }
        }
    }

    /// Entries examined by `due` and `sweep_idle` since `reset_visits`.
    pub fn visits(&self) -> u64 {
        self.visits
    }

    pub fn reset_visits(&mut self) {
        self.visits = 0;
    }

    /// Removes every flow.
    pub fn drain(&mut self) -> impl Iterator<Item = Flow<T>> + '_ {
        self.oldest = None;
        self.newest = None;
        self.deadlines.iter_mut().for_each(BinaryHeap::clear);
        self.map.drain().map(|(_, f)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> FlowKey {
        FlowKey {
            src: [i; 16],
            dst: [0; 16],
            sport: 1,
            dport: 443,
            v6: false,
        }
    }

    /// The recency list holds every flow once, from oldest to newest, in
    /// order of `queued`, with consistent back links.
    fn check_list(t: &FlowTable<u32>) {
        let mut seen = Vec::new();
        let mut prev: Option<FlowKey> = None;
        let mut cur = t.oldest;
        while let Some(k) = cur {
            let f = &t.map.get(&k).unwrap();
            assert_eq!(f.older, prev);
            if let Some(p) = prev {
                assert!(t.map.get(&p).unwrap().queued <= f.queued);
            }
            assert!(f.last_seen.saturating_sub(f.queued) < t.requeue_us.max(1));
            seen.push(k);
            prev = Some(k);
            cur = f.newer;
        }
        assert_eq!(t.newest, prev);
        assert_eq!(seen.len(), t.map.len());
    }

    proptest! {
        #[test]
        fn recency_list_stays_consistent(ops in proptest::collection::vec((0u8..5, 0u8..12, 0u64..40), 1..200)) {
            let mut t: FlowTable<u32> = FlowTable::new(10);
            let mut now = 0;
            for (op, k, dt) in ops {
                now += dt;
                let k = key(k);
                match op {
                    0 => {
                        t.insert(k, now, Seq(0), FlowState::PassThrough);
                    }
                    1 => {
                        if let Some(f) = t.map.get_mut(&k) {
                            if f.seen(now, t.requeue_us) {
                                t.requeue(&k, now);
                            }
                        }
                    }
                    2 => {
                        t.remove(&k);
                    }
                    3 => {
                        // Unlimited budget: nothing idle for the timeout
                        // plus requeue_us is left.
                        t.sweep_idle(now, 50, usize::MAX);
                        for f in t.map.values() {
                            prop_assert!(f.last_seen + 50 + 10 > now);
                        }
                    }
                    _ => {
                        let before = t.len();
                        let gone = t.sweep_idle(now, 50, 3);
                        prop_assert!(gone.len() <= 3);
                        prop_assert_eq!(t.len(), before - gone.len());
                        for f in &gone {
                            prop_assert!(f.last_seen + 50 <= now);
                        }
                    }
                }
                check_list(&t);
            }
            while t.pop_oldest().is_some() {
                check_list(&t);
            }
            prop_assert!(t.oldest.is_none() && t.newest.is_none());
        }
    }
}
