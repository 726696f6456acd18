//! Cutting the first record into segments, and cutting retransmissions of a
//! split record the same way again.

use crate::engine::{Action, Disposition, Engine, Slot};
use crate::flow::{HeldPacket, SplitMemo};
use crate::packet::{flags, FlowKey, TcpPacket};
use crate::plan;
use crate::segment::{self, Tail};
use crate::stats::Stats;

/// What becomes of one held packet when its flow is split.
pub(super) enum Fate {
    /// All its bytes are in the window: replaced by the window's segments.
    Drop,
    /// All its bytes lie beyond the window: it goes out unchanged.
    Release,
    /// It straddles the window's end: replaced, and its bytes beyond the
    /// window go out in these segments.
    DropAndSend(Vec<Vec<u8>>),
}

/// A split worked out in full before any held packet's token is moved, so a
/// panic while building it cannot lose a token.
pub(super) struct SplitPlan {
    /// The window's segments, in order.
    pub sends: Vec<Vec<u8>>,
    /// One fate per held packet, in the order of the (sorted) held list.
    pub fates: Vec<Fate>,
    pub memo: SplitMemo,
}

impl<T: Send + 'static> Engine<T> {
    /// Cuts the first `window` bytes of `stream` (which starts at the flow's
    /// first byte) at `cuts` and into pieces no larger than the flow's own
    /// largest payload, and decides the fate of every held packet. `held`
    /// must be sorted by sequence number. `None` when no cut falls inside
    /// the window.
    pub(super) fn plan_split(
        &self,
        key: FlowKey,
        held: &[HeldPacket<T>],
        stream: &[u8],
        window: usize,
        max_payload: usize,
        cuts: Vec<u32>,
    ) -> Option<SplitPlan> {
        let w = window as u32;
        if cuts.is_empty() {
            return None;
        }
        let base = held[0].seq;
        // Every piece fits the longest headers among the packets it may be
        // built from (each carrier's and each straddling packet's own), so no
        // generated packet outgrows max-seg-payload + 40 (1500 by default),
        // even when the original was a large offloaded (GSO) packet. When not
        // one byte fits (tiny max-seg-payload, long IPv6 extension headers),
        // nothing is split: the flow fails open.
        let longest = held.iter().map(|h| h.payload_offset).max()?;
        let cap = segment::payload_cap(self.cfg.max_seg_payload, longest);
        if cap == 0 {
            return None;
        }
        let seg_limit = cap.min(max_payload as u32).max(1);
        let offset = |h: &HeldPacket<T>| h.seq.offset_from(base);
        let ranges = plan::pieces(0, w, &cuts, seg_limit);
        let last = ranges.len() - 1;
        let mut sends = Vec::with_capacity(ranges.len());
        for (i, (a, b)) in ranges.into_iter().enumerate() {
            // Headers (options included) come from the packet that carried
            // the segment's first byte.
            let carrier = held
                .iter()
                .find(|h| (offset(h)..offset(h) + h.payload_len() as i64).contains(&i64::from(a)))
                .unwrap_or(&held[0]);
            let tail = if i == last {
                Tail::LastPush
            } else {
                Tail::Inner
            };
            let bytes = &stream[a as usize..b as usize];
            sends.push(segment::build(
                &carrier.view(key),
                base.plus(a),
                bytes,
                tail,
            ));
        }
        // Originals inside the window are replaced; bytes beyond the window
        // go out unchanged (cut only to respect the segment limit).
        let fates = held
            .iter()
            .map(|h| {
                let off = offset(h);
                let end = off + h.payload_len() as i64;
                if end <= i64::from(w) {
                    return Fate::Drop;
                }
                if off >= i64::from(w) {
                    return Fate::Release;
                }
                let view = h.view(key);
                let payload = view.payload();
                let tail = plan::pieces(w, end as u32, &[], seg_limit);
                let last = tail.len() - 1;
                let segments = tail
                    .into_iter()
                    .enumerate()
                    .map(|(i, (a, b))| {
                        let from = (i64::from(a) - off) as usize;
                        let to = (i64::from(b) - off) as usize;
                        let flags = if i == last { Tail::Last } else { Tail::Inner };
                        segment::build(&view, base.plus(a), &payload[from..to], flags)
                    })
                    .collect();
                Fate::DropAndSend(segments)
            })
            .collect();
        let memo = SplitMemo {
            base,
            window: w,
            cuts: cuts.into_boxed_slice(),
            seg_limit,
            watch: None,
        };
        Some(SplitPlan { sends, fates, memo })
    }

    /// Carries out a split plan: moves each held packet's token into its
    /// action, in stream order after the window's segments.
    pub(super) fn emit_split(
        &mut self,
        held: Vec<HeldPacket<T>>,
        plan: SplitPlan,
        out: &mut Vec<Action<T>>,
    ) -> SplitMemo {
        self.stats.segments += plan.sends.len() as u64;
        out.extend(plan.sends.into_iter().map(Action::Send));
        for (h, fate) in held.into_iter().zip(plan.fates) {
            match fate {
                Fate::Drop => out.push(Action::Drop(h.token)),
                Fate::Release => out.push(Action::Release(h.token)),
                Fate::DropAndSend(segments) => {
                    out.push(Action::Drop(h.token));
                    self.stats.segments += segments.len() as u64;
                    out.extend(segments.into_iter().map(Action::Send));
                }
            }
        }
        self.stats.splits += 1;
        plan.memo
    }
}

/// A packet of an already split flow: when it carries bytes of the split
/// record (a retransmission), it is cut at the same places again.
///
/// A retransmission carrying SYN, RST or URG passes untouched: no cut keeps
/// those meaningful (a RST copied onto every segment aborts the connection
/// at the first one, an urgent pointer would count from the wrong sequence
/// number), and a connection being reset gains nothing from a split. FIN
/// marks the end of the packet's bytes, so it is kept on the last piece
/// only, and the hello stays split even when the client closes at once
/// (passing it whole would show the host name after all). Its pieces are bounded by the flow's
/// segment limit and by what fits its own headers, which may be longer
/// than the original's (more TCP options).
pub(super) fn resplit<T, F>(
    memo: &SplitMemo,
    max_seg_payload: u32,
    p: &TcpPacket<'_>,
    slot: &mut Slot<F>,
    stats: &mut Stats,
    out: &mut Vec<Action<T>>,
) -> Disposition
where
    F: FnOnce() -> T,
{
    let len = p.payload_len() as i64;
    let start = p.seq.offset_from(memo.base);
    let window = i64::from(memo.window);
    let refused = flags::SYN | flags::RST | flags::URG;
    if len == 0 || start < 0 || start >= window || p.has(refused) {
        return Disposition::Pass;
    }
    let cap = segment::payload_cap(max_seg_payload, p.payload_offset);
    if cap == 0 {
        return Disposition::Pass;
    }
    let (s, e) = (start as u32, (start + len) as u32);
    let mut cuts: Vec<u32> = memo.cuts.to_vec();
    cuts.push(memo.window);
    let ranges = plan::pieces(s, e, &cuts, memo.seg_limit.min(cap));
    if ranges.len() <= 1 {
        return Disposition::Pass;
    }
    let last = ranges.len() - 1;
    let payload = p.payload();
    for (i, (a, b)) in ranges.into_iter().enumerate() {
        let tail = if i == last { Tail::Last } else { Tail::Inner };
        let bytes = &payload[(a - s) as usize..(b - s) as usize];
        out.push(Action::Send(segment::build(
            p,
            memo.base.plus(a),
            bytes,
            tail,
        )));
        stats.segments += 1;
    }
    out.push(Action::Drop(slot.take()));
    stats.resplits += 1;
    Disposition::Taken
}
