//! Cutting the first record into segments, and cutting retransmissions of a
//! split record the same way again.

use crate::engine::{Action, Disposition, Engine, Slot};
use crate::flow::{HeldPacket, SplitMemo};
use crate::packet::{flags, FlowKey, TcpPacket};
use crate::plan;
use crate::segment::{self, Tail};
use crate::stats::{FailReason, Stats};

impl<T> Engine<T> {
    /// Cuts the first `window` bytes of `stream` (which starts at the flow's
    /// first byte) into segments and decides the fate of every held packet.
    /// Returns `None` (after releasing everything) when no cut applies.
    /// Cuts the first `window` bytes of `stream` (which starts at the flow's
    /// first byte) at `cuts` and into pieces no larger than the flow's own
    /// largest payload, and decides the fate of every held packet. Returns
    /// `None` (after releasing everything) when no cut falls inside the window.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn split(
        &mut self,
        key: FlowKey,
        mut held: Vec<HeldPacket<T>>,
        stream: &[u8],
        window: usize,
        max_payload: usize,
        cuts: Vec<u32>,
        out: &mut Vec<Action<T>>,
    ) -> Option<SplitMemo> {
        let w = window as u32;
        if cuts.is_empty() {
            self.stats.fail(FailReason::NoCut);
            out.extend(held.into_iter().map(|h| Action::Release(h.token)));
            return None;
        }
        let base = held[0].seq;
        let seg_limit = self.cfg.max_seg_payload.min(max_payload as u32);
        held.sort_by_key(|h| h.seq.offset_from(base));
        let offset = |h: &HeldPacket<T>| h.seq.offset_from(base);
        let ranges = plan::pieces(0, w, &cuts, seg_limit);
        let last = ranges.len() - 1;
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
            out.push(Action::Send(segment::build(
                &carrier.view(key),
                base.plus(a),
                bytes,
                tail,
            )));
            self.stats.segments += 1;
        }
        // Originals inside the window are replaced; bytes beyond the window
        // go out unchanged, in stream order.
        for h in held {
            let off = offset(&h);
            let end = off + h.payload_len() as i64;
            if end <= i64::from(w) {
                out.push(Action::Drop(h.token));
            } else if off >= i64::from(w) {
                out.push(Action::Release(h.token));
            } else {
                let view = h.view(key);
                let skip = (i64::from(w) - off) as usize;
                let seg = segment::build(&view, base.plus(w), &view.payload()[skip..], Tail::Last);
                out.push(Action::Drop(h.token));
                out.push(Action::Send(seg));
                self.stats.segments += 1;
            }
        }
        self.stats.splits += 1;
        Some(SplitMemo {
            base,
            window: w,
            cuts: cuts.into_boxed_slice(),
            seg_limit,
        })
    }
}

/// A packet of an already split flow: when it carries bytes of the split
/// record (a retransmission), it is cut at the same places again.
pub(super) fn resplit<T, F>(
    memo: &SplitMemo,
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
    if len == 0 || start < 0 || start >= window || p.has(flags::SYN) {
        return Disposition::Pass;
    }
    let (s, e) = (start as u32, (start + len) as u32);
    let mut cuts: Vec<u32> = memo.cuts.to_vec();
    cuts.push(memo.window);
    let ranges = plan::pieces(s, e, &cuts, memo.seg_limit);
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
