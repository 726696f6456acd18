//! Choosing a flow's profile once its first record is complete (the host
//! name is known then), and the auto-learning watch of flows passed on
//! behalf of an auto profile.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::split::SplitPlan;
use crate::engine::{Action, Engine};
use crate::flow::{FlowState, HeldPacket, WatchMemo};
use crate::packet::{flags, FlowKey, TcpPacket};
use crate::plan;
use crate::stats::FailReason;
use crate::targeting::{select, Choice, FlowFacts, ProfileAction};

/// What to do with a flow whose first record is complete.
pub(super) enum Outcome {
    /// With the profile's name and the host name to watch for, when the
    /// profile watches.
    Split(SplitPlan, Option<(Box<str>, Box<[u8]>)>),
    NoCut,
    Pass,
    Watch {
        profile: Box<str>,
        host: Box<[u8]>,
    },
}

/// An auto-learning verdict about one flow's host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoEvent {
    /// Name of the auto profile the flow was watched for.
    pub profile: String,
    pub host: String,
    /// True: looked blocked (hello or a part of it retransmitted, RST, no
    /// server data within auto-silence); false: it worked.
    pub failed: bool,
}

impl<T: Send + 'static> Engine<T> {
    /// The first record is complete: choose the profile (now that the host
    /// name is known) and split, pass, or pass and watch.
    pub(super) fn decide(
        &mut self,
        facts: FlowFacts,
        mut held: Vec<HeldPacket<T>>,
        stream: &[u8],
        window: usize,
        max_payload: usize,
        out: &mut Vec<Action<T>>,
    ) -> FlowState<T> {
        let base = held[0].seq;
        held.sort_by_key(|h| h.seq.offset_from(base));
        let watched = u32::try_from(window).unwrap_or(u32::MAX);
        // Everything that could fail runs here, while the tokens stay in
        // `held`: a panic releases them instead of losing them.
        let planned = catch_unwind(AssertUnwindSafe(|| {
            self.plan_first_record(facts, &held, stream, window, max_payload)
        }));
        let release = |held: Vec<HeldPacket<T>>, out: &mut Vec<Action<T>>| {
            out.extend(held.into_iter().map(|h| Action::Release(h.token)));
        };
        match planned {
            Err(_) => {
                self.stats.fail(FailReason::Internal);
                release(held, out);
                FlowState::PassThrough
            }
            Ok(Outcome::Split(plan, watch)) => {
                let mut memo = self.emit_split(held, plan, out);
                if let Some((profile, host)) = watch {
                    self.stats.watched += 1;
                    memo.watch = Some(Box::new(WatchMemo::new(profile, host, base, watched)));
                }
                FlowState::Injected(Box::new(memo))
            }
            Ok(Outcome::NoCut) => {
                self.stats.fail(FailReason::NoCut);
                release(held, out);
                FlowState::PassThrough
            }
            Ok(Outcome::Pass) => {
                self.stats.profile_pass += 1;
                release(held, out);
                FlowState::PassThrough
            }
            Ok(Outcome::Watch { profile, host }) => {
                self.stats.watched += 1;
                release(held, out);
                FlowState::Watching(Box::new(WatchMemo::new(profile, host, base, watched)))
            }
        }
    }

    /// Chooses the profile (the host name is known now) and, for a split,
    /// works out every segment. Moves no token.
    fn plan_first_record(
        &self,
        facts: FlowFacts,
        held: &[HeldPacket<T>],
        stream: &[u8],
        window: usize,
        max_payload: usize,
    ) -> Outcome {
        if self
            .panic_in_plan
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("armed panic in plan");
        }
        let record = &stream[..window];
        let span = if self.needs_host {
            plan::host_span(record)
        } else {
            None
        };
        let host = span.map(|h| &record[h.start as usize..(h.start + h.len) as usize]);
        match select(&self.profiles, &facts, host) {
            Choice::Split(i) => {
                let ProfileAction::Split(strategy) = &self.profiles[i].action else {
                    unreachable!("select returns Split only for split profiles");
                };
                let cuts =
                    plan::cut_points(strategy.chunk, &strategy.positions, span, window as u32);
                let watch = match host {
                    Some(h) if self.profiles[i].watch => {
                        Some((self.profiles[i].name.as_str().into(), h.into()))
                    }
                    _ => None,
                };
                match self.plan_split(facts.key, held, stream, window, max_payload, cuts) {
                    Some(plan) => Outcome::Split(plan, watch),
                    None => Outcome::NoCut,
                }
            }
            Choice::Pass => Outcome::Pass,
            Choice::Watch(profile) => Outcome::Watch {
                profile: self.profiles[profile].name.as_str().into(),
                host: host.unwrap_or_default().into(),
            },
        }
    }

    /// An inbound packet (from a watched port) of a flow watched for an
    /// auto-learning profile: a RST means blocked, data means it works.
    pub(super) fn inbound(&mut self, p: &TcpPacket<'_>) {
        let k = p.key;
        let key = FlowKey {
            src: k.dst,
            dst: k.src,
            sport: k.dport,
            dport: k.sport,
            v6: k.v6,
        };
        let Some(flow) = self.flows.get(&key) else {
            return;
        };
        match &flow.state {
            FlowState::Watching(_) => {}
            FlowState::Injected(m) if m.watch.is_some() => {}
            _ => return,
        }
        if p.has(flags::RST) {
            self.verdict(key, true);
        } else if p.payload_len() > 0 {
            self.verdict(key, false);
        }
    }

    /// Reports an auto-learning verdict for a watched flow and stops
    /// watching it; false when the flow was not watched (nothing reported).
    pub(super) fn verdict(&mut self, key: FlowKey, failed: bool) -> bool {
        let Some(flow) = self.flows.get_mut(&key) else {
            return false;
        };
        let w = match &mut flow.state {
            FlowState::Injected(memo) => match memo.watch.take() {
                Some(w) => w,
                None => return false,
            },
            FlowState::Watching(_) => {
                match std::mem::replace(&mut flow.state, FlowState::PassThrough) {
                    FlowState::Watching(w) => w,
                    _ => return false,
                }
            }
            _ => return false,
        };
        if failed {
            self.stats.auto_failures += 1;
        } else {
            self.stats.auto_successes += 1;
        }
        self.events.push(AutoEvent {
            profile: w.profile.into_string(),
            host: String::from_utf8_lossy(&w.host).into_owned(),
            failed,
        });
        true
    }
}
