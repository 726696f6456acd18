//! Per-flow state and the flow table.
//!
//! The seed's states map onto this as follows: NEW and SPLIT_READY are
//! transient inside one `process` call; COLLECTING, INJECTED and PASS_THROUGH
//! are [`FlowState`] variants; CLOSED is removal from the table (FIN/RST,
//! idle timeout, eviction).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hashbrown::HashMap;

use crate::packet::{FlowKey, TcpPacket};
use crate::reassembly::Assembler;
use crate::seq::Seq;

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
}

/// A flow passed untouched on behalf of an auto-learning profile, watched
/// for signs that it was blocked.
#[derive(Debug)]
pub struct WatchMemo {
    pub profile: usize,
    pub host: Box<[u8]>,
    /// Sequence number of the ClientHello's first byte.
    pub base: Seq,
    /// Times the ClientHello was sent again.
    pub retrans: u32,
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
}

/// Flows by key, with what is needed to evict the oldest and to find
/// collecting flows whose deadline passed without scanning the table.
pub struct FlowTable<T> {
    pub map: HashMap<FlowKey, Flow<T>, foldhash::fast::RandomState>,
    /// Creation order, for eviction; entries of removed flows are stale and
    /// skipped (matched by id).
    order: VecDeque<(FlowKey, u64)>,
    /// Collect deadlines; stale entries are skipped likewise.
    deadlines: BinaryHeap<Reverse<(u64, u64, FlowKeyOrd)>>,
    next_id: u64,
}

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

impl<T> Default for FlowTable<T> {
    fn default() -> Self {
        FlowTable {
            map: HashMap::with_hasher(foldhash::fast::RandomState::default()),
            order: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            next_id: 0,
        }
    }
}

impl<T> FlowTable<T> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts a new flow and returns its id.
    pub fn insert(&mut self, key: FlowKey, now: u64, first_seq: Seq, state: FlowState<T>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.map.insert(
            key,
            Flow {
                id,
                last_seen: now,
                first_seq,
                state,
            },
        );
        self.order.push_back((key, id));
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, id)| map.get(k).is_some_and(|f| f.id == *id));
        }
        id
    }

    /// Registers the collect deadline of flow `id`.
    pub fn set_deadline(&mut self, key: FlowKey, id: u64, at: u64) {
        self.deadlines.push(Reverse((at, id, FlowKeyOrd(key))));
        self.compact_deadlines();
    }

    /// Drops deadlines of flows that are gone, once they outnumber the live
    /// flows, so the heap stays bounded even when `due` is seldom called.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            let kept: Vec<_> = self
                .deadlines
                .drain()
                .filter(|Reverse((_, id, k))| map.get(&k.0).is_some_and(|f| f.id == *id))
                .collect();
            self.deadlines = kept.into();
        }
    }

    /// Removes and returns the oldest live flow.
    pub fn pop_oldest(&mut self) -> Option<(FlowKey, Flow<T>)> {
        while let Some((key, id)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|f| f.id == id) {
                return self.map.remove(&key).map(|f| (key, f));
            }
        }
        None
    }

    /// Keys of flows whose collect deadline is at or before `now` and that are
    /// still collecting.
    pub fn due(&mut self, now: u64) -> Vec<FlowKey> {
        let mut out = Vec::new();
        while let Some(Reverse((at, id, key))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let live = self
                .map
                .get(&key.0)
                .is_some_and(|f| f.id == id && matches!(f.state, FlowState::Collecting(_)));
            if live {
                out.push(key.0);
            }
        }
        self.compact_deadlines();
        out
    }
}
