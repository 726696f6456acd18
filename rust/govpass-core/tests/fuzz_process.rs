//! The fuzz harness of `rust/fuzz` on stable Rust: the same `run` over
//! random bytes and over random structured scripts, for a bounded number of
//! cases, plus a replay of the committed seed corpus (which is where
//! crashes found by cargo-fuzz go once fixed).

#[path = "../../fuzz/src/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::cell::RefCell;

use govpass_core::{FailReason, Stats};
use harness::{Hello, Mangle, Script};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_keep_the_invariants(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        harness::run(&data);
    }
}

/// One flow's delivery of a hello: cut points, and which pieces are
/// duplicated, mangled or carry FIN/RST/SYN.
#[derive(Debug, Clone)]
struct FlowPlan {
    flow: u8,
    hello: u8,
    cuts: Vec<u16>,
    options: u8,
    special: Vec<(u8, u8)>,
}

#[derive(Debug, Clone)]
struct Plan {
    /// Flows' packets round-robin instead of one flow after the other, so
    /// that many flows collect at once (and the table overflows).
    interleave: bool,
    mode: u8,
    positions: u8,
    flows: Vec<FlowPlan>,
    swaps: Vec<(u8, u8)>,
    steps: Vec<u16>,
    extra: Vec<(u8, u16, Vec<u8>)>,
}

fn flow_plan() -> impl Strategy<Value = FlowPlan> {
    (
        0u8..12,
        0u8..3,
        proptest::collection::vec(any::<u16>(), 0..6),
        prop_oneof![Just(0u8), Just(2), Just(3)],
        proptest::collection::vec((any::<u8>(), any::<u8>()), 0..3),
    )
        .prop_map(|(flow, hello, cuts, options, special)| FlowPlan {
            flow,
            hello,
            cuts,
            options,
            special,
        })
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u8>(),
        proptest::collection::vec(flow_plan(), 1..11),
        proptest::collection::vec((any::<u8>(), any::<u8>()), 0..8),
        proptest::collection::vec(any::<u16>(), 0..8),
        proptest::collection::vec(
            (
                0u8..4,
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..6,
        ),
    )
        .prop_map(
            |(interleave, mode, positions, flows, swaps, steps, extra)| Plan {
                interleave,
                mode,
                positions,
                flows,
                swaps,
                steps,
                extra,
            },
        )
}

/// One packet or timer call of a plan, before encoding.
#[derive(Debug, Clone)]
enum Item {
    Piece {
        flow: u8,
        hello: Hello,
        start: u16,
        len: u16,
        flags: u8,
        options: u8,
        mangle: Mangle,
    },
    Expire {
        step: u16,
        long: bool,
    },
    Raw(Vec<u8>),
    Ack {
        flow: u8,
        off: u16,
        flags: u8,
    },
}

fn encode(p: &Plan) -> Vec<u8> {
    let mut per_flow: Vec<Vec<Item>> = Vec::new();
    for (i, f) in p.flows.iter().enumerate() {
        // Interleaved plans use distinct flows: up to 10 watched at once.
        let flow = if p.interleave { i as u8 } else { f.flow };
        let hello = [Hello::Short, Hello::Mid, Hello::Long][usize::from(f.hello)];
        let n = hello.len();
        let mut points: Vec<usize> = f.cuts.iter().map(|c| usize::from(*c) % n).collect();
        points.extend([0, n]);
        points.sort_unstable();
        points.dedup();
        let mut pieces: Vec<Item> = points
            .windows(2)
            .map(|w| Item::Piece {
                flow,
                hello,
                start: w[0] as u16,
                len: (w[1] - w[0]) as u16,
                flags: if w[1] == n { PSH | ACK } else { ACK },
                options: f.options,
                mangle: Mangle::None,
            })
            .collect();
        for (which, what) in &f.special {
            let i = usize::from(*which) % pieces.len();
            let mut dup = pieces[i].clone();
            if let Item::Piece { flags, mangle, .. } = &mut dup {
                match what % 8 {
                    0 => *flags |= FIN,
                    1 => *flags |= RST,
                    2 => *flags |= SYN,
                    3 => *mangle = Mangle::Truncate(u16::from(*what) * 7),
                    4 => *mangle = Mangle::Flip(vec![(*what, 0x5a)]),
                    5 => *mangle = Mangle::Pad,
                    _ => {}
                }
            }
            pieces.insert(usize::from(*what) % (pieces.len() + 1), dup);
        }
        per_flow.push(pieces);
    }
    let mut items: Vec<Item> = Vec::new();
    if p.interleave {
        let longest = per_flow.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            items.extend(per_flow.iter().filter_map(|f| f.get(i).cloned()));
        }
    } else {
        items = per_flow.into_iter().flatten().collect();
    }
    for (kind, v, bytes) in &p.extra {
        let item = match kind {
            0 => Item::Expire {
                step: *v,
                long: v % 3 == 0,
            },
            1 => Item::Raw(bytes.clone()),
            2 => Item::Ack {
                flow: (*v % 12) as u8,
                off: v >> 4,
                flags: ACK,
            },
            _ => Item::Ack {
                flow: (*v % 12) as u8,
                off: v >> 4,
                flags: ACK | FIN,
            },
        };
        let at = usize::from(*v) % (items.len() + 1);
        items.insert(at, item);
    }
    let n = items.len();
    for (a, b) in &p.swaps {
        items.swap(usize::from(*a) % n, usize::from(*b) % n);
    }
    let mut s = Script::new(p.mode, p.positions, 1);
    for (i, item) in items.into_iter().enumerate() {
        let step = p.steps.get(i).copied().unwrap_or(500) % 20_000;
        match item {
            Item::Piece {
                flow,
                hello,
                start,
                len,
                flags,
                options,
                mangle,
            } => {
                s.hello_piece(step, flow, hello, start, len, flags, options, mangle);
            }
            Item::Expire { step, long } => {
                s.expire(step, long);
            }
            Item::Raw(bytes) => {
                s.raw(step, &bytes);
            }
            Item::Ack { flow, off, flags } => {
                s.data(step, flow, off, flags, &[]);
            }
        }
    }
    // Timers at the end, so that collect timeouts and idle sweeps fire.
    s.expire(0xffff, false)
        .expire(0xffff, true)
        .expire(0xffff, true);
    s.into_bytes()
}

fn add(total: &mut Stats, st: &Stats) {
    total.flows += st.flows;
    total.splits += st.splits;
    total.resplits += st.resplits;
    total.segments += st.segments;
    total.evicted += st.evicted;
    for (t, s) in total.fail_open.iter_mut().zip(st.fail_open) {
        *t += s;
    }
}

#[test]
fn structured_scripts_keep_the_invariants_and_reach_every_path() {
    let total = RefCell::new(Stats::default());
    // GOVPASS_FUZZ_CASES raises the bound for a longer hunt.
    let cases = std::env::var("GOVPASS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut runner = TestRunner::new(Config {
        cases: cases.unwrap_or(2000),
        ..Config::default()
    });
    let result = runner.run(&plan(), |p| {
        let st = harness::run(&encode(&p));
        add(&mut total.borrow_mut(), &st);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = total.into_inner();
    eprintln!("structured totals: {t:?}");
    assert!(t.splits > 500, "splits {}", t.splits);
    assert!(t.resplits > 0 && t.evicted > 0 && t.segments > t.splits);
    for reason in FailReason::ALL {
        if reason == FailReason::Internal {
            assert_eq!(t.fail_count(reason), 0);
        } else {
            assert!(
                t.fail_count(reason) > 0,
                "no script reached fail-open {reason:?}"
            );
        }
    }
}

#[test]
fn seed_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/process");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let st = harness::run(&data);
        assert_eq!(st.fail_count(FailReason::Internal), 0, "{}", path.display());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn a_plain_split_script_splits() {
    // Sanity check of the script format itself.
    let mut s = Script::new(0, 0, 1);
    s.hello_piece(10, 0, Hello::Short, 0, 186, PSH | ACK, 0, Mangle::None);
    let st = harness::run(s.as_bytes());
    assert_eq!((st.splits, st.segments), (1, 2));
    let mut s = Script::new(0, 0x80, 1);
    s.hello_piece(10, 9, Hello::Long, 0, 1448, ACK, 2, Mangle::None);
    s.hello_piece(10, 9, Hello::Long, 1448, 552, PSH | ACK, 2, Mangle::None);
    let st = harness::run(s.as_bytes());
    assert_eq!((st.splits, st.segments), (1, 3));
}

/// The committed seed corpus of the cargo-fuzz target is exactly what the
/// script builders below produce (so it cannot silently go stale). With
/// `GOVPASS_WRITE_SEEDS=1` the files are (re)written instead.
#[test]
fn seed_corpus_is_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/process");
    let write = std::env::var_os("GOVPASS_WRITE_SEEDS").is_some();
    let mut seeds: Vec<(&str, Script)> = Vec::new();
    for (name, hello, mode, positions) in [
        ("split_short", Hello::Short, 0, 0),
        ("split_mid_positions", Hello::Mid, 0, 0b0000_0111),
        ("split_short_immediate", Hello::Short, 1, 0),
    ] {
        let mut s = Script::new(mode, positions, 1);
        s.hello_piece(
            10,
            0,
            hello,
            0,
            hello.len() as u16,
            PSH | ACK,
            0,
            Mangle::None,
        );
        s.hello_piece(
            10,
            0,
            hello,
            0,
            hello.len() as u16,
            PSH | ACK,
            0,
            Mangle::None,
        );
        seeds.push((name, s));
    }
    let mut s = Script::new(0, 0x80, 1);
    s.hello_piece(10, 9, Hello::Long, 0, 1448, ACK, 2, Mangle::None)
        .data(5, 9, 1448, ACK, &[])
        .hello_piece(10, 9, Hello::Long, 1448, 552, PSH | ACK, 2, Mangle::None)
        .expire(100, false);
    seeds.push(("split_long_v6_two_packets", s));
    let mut s = Script::new(0, 0x80, 1);
    s.hello_piece(10, 1, Hello::Long, 0, 700, ACK, 0, Mangle::None)
        .hello_piece(10, 1, Hello::Long, 1400, 600, PSH | ACK, 0, Mangle::None)
        .hello_piece(10, 1, Hello::Long, 700, 700, ACK, 0, Mangle::None);
    seeds.push(("out_of_order", s));
    let mut s = Script::new(0x30, 0x80, 1);
    s.hello_piece(10, 2, Hello::Long, 0, 1000, ACK, 0, Mangle::None)
        .expire(0xffff, true)
        .hello_piece(10, 3, Hello::Long, 0, 1000, ACK, 0, Mangle::None)
        .data(10, 3, 1000, ACK | FIN, &[]);
    seeds.push(("timeout_and_fin", s));
    let mut s = Script::new(0, 0x80, 1);
    s.hello_piece(10, 4, Hello::Long, 0, 1000, ACK, 3, Mangle::None)
        .hello_piece(
            10,
            4,
            Hello::Long,
            1000,
            1000,
            PSH | ACK,
            3,
            Mangle::Truncate(300),
        );
    seeds.push(("truncated", s));
    let mut s = Script::new(0, 0, 1);
    for flow in 0..11 {
        s.hello_piece(10, flow, Hello::Mid, 0, 100, ACK, 0, Mangle::None);
    }
    s.raw(1, &[0x45, 0, 0, 20])
        .data(1, 5, 0, ACK | PSH, b"GET / HTTP/1.1\r\n");
    seeds.push(("eviction", s));
    for (name, s) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, s.as_bytes()).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                committed,
                s.as_bytes(),
                "seed {name} is stale: GOVPASS_WRITE_SEEDS=1"
            );
        }
    }
}
