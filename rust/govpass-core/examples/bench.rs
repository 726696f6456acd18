//! Engine throughput and memory inside Rust, printed as one JSON object.
//!
//!     cargo run --release --example bench [-- --quick]
//!     cargo run --release --example bench -- --expire [FLOWS...]
//!
//! Measures, on whatever core the process runs on (ci/bench_engine.py pins
//! it): pass-through packets/s (packets of flows already in pass-through
//! state, and packets to another port), ClientHello splits/s (each packet
//! the first of a new flow, a 517-byte OpenSSL hello), and bytes of heap per
//! tracked flow, counted by a global allocator, for flows in pass-through
//! state, split flows (tombstones) and collecting flows (one 1448-byte
//! packet held).
//!
//! `--expire` measures instead how long single timer calls stall the packet
//! loop with many tracked flows (default 131072 and 1048576): the slowest
//! `expire()` call while nothing is due, while every flow falls idle at
//! once, and (at the smaller size) while every collecting flow reaches its
//! collect-timeout at once; with the number of calls it took to empty the
//! table, the live heap before the flows came and after they went, and the
//! slowest single `process()` call while the table filled.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use govpass_core::{checksum, Action, Engine, EngineConfig};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const HELLO: &[u8] = include_bytes!("../../../tests/fixtures/hellos/openssl_default.bin");
const CHROMIUM: &[u8] = include_bytes!("../../../tests/fixtures/hellos/chromium_sni_early.bin");

/// An IPv4/TCP packet from 10.x.y.z:sport to 203.0.113.9:dport with the TCP
/// timestamp option and valid checksums.
fn packet(n: u32, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let src = [10, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    let dst = [203, 0, 113, 9];
    let sport = 10_000 + (n % 50_000) as u16;
    let opts = [1u8, 1, 8, 10, 0, 1, 0, 0, 0, 2, 0, 0];
    let tcp_len = 20 + opts.len();
    let total = 20 + tcp_len + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let t = 20;
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&1u32.to_be_bytes());
    p[t + 12] = ((tcp_len / 4) as u8) << 4;
    p[t + 13] = 0x10 | flags;
    p[t + 14..t + 16].copy_from_slice(&502u16.to_be_bytes());
    p[t + 20..t + tcp_len].copy_from_slice(&opts);
    p[t + tcp_len..].copy_from_slice(payload);
    let c = checksum::ipv4_header(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let c = checksum::tcp_ipv4(src, dst, &p[t..]);
    p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    p
}

fn config(max_flows: u32) -> EngineConfig {
    EngineConfig {
        max_flows,
        ..EngineConfig::default()
    }
}

/// Best of `rounds` runs of `f`, which processes `n` items; items per second.
fn best_rate(rounds: usize, n: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = 0f64;
    for _ in 0..rounds {
        let t = Instant::now();
        let done = f();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(done, n);
        best = best.max(n as f64 / secs);
    }
    best
}

/// Packets of `flows` flows that are in pass-through state (their first
/// payload was not TLS) or, with `dport` != 443, of unwatched flows.
fn pass_through_rate(flows: u32, dport: u16, reps: usize, rounds: usize) -> f64 {
    let mut e: Engine<u32> = Engine::new(config(1 << 20)).unwrap();
    let mut out = Vec::new();
    let data: Vec<Vec<u8>> = (0..flows)
        .map(|i| packet(i, dport, 1000, 0x08, b"GET / HTTP/1.1\r\n\r\n"))
        .collect();
    for p in &data {
        e.process(p, 1, || 0, &mut out);
    }
    assert!(out.is_empty());
    let n = data.len() * reps;
    best_rate(rounds, n, || {
        let mut done = 0;
        for _ in 0..reps {
            for p in &data {
                black_box(e.process(black_box(p), 2, || 0, &mut out));
                done += 1;
            }
        }
        done
    })
}

/// Each packet the first of a new flow carrying a whole 517-byte hello.
fn split_rate(flows: u32, rounds: usize) -> f64 {
    let data: Vec<Vec<u8>> = (0..flows)
        .map(|i| packet(i, 443, 1000, 0x08, HELLO))
        .collect();
    let mut out: Vec<Action<u32>> = Vec::new();
    let mut best = 0f64;
    for _ in 0..rounds {
        // A fresh engine per round so every packet is a new flow; the
        // default max_flows (131072) makes later rounds evict, as in steady
        // state.
        let mut e: Engine<u32> = Engine::new(EngineConfig::default()).unwrap();
        let t = Instant::now();
        for (i, p) in data.iter().enumerate() {
            e.process(p, 1, || i as u32, &mut out);
            black_box(&out);
            out.clear();
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(e.stats().splits, u64::from(flows));
        best = best.max(f64::from(flows) / secs);
    }
    best
}

/// Live heap bytes per flow after `n` flows were created by `first`.
fn bytes_per_flow(n: u32, first: impl Fn(u32) -> Vec<u8>) -> (f64, u64) {
    let data: Vec<Vec<u8>> = (0..n).map(&first).collect();
    let mut out: Vec<Action<u32>> = Vec::with_capacity(16);
    let before = live();
    let mut e: Engine<u32> = Engine::new(config(n + 1)).unwrap();
    for (i, p) in data.iter().enumerate() {
        e.process(p, 1, || i as u32, &mut out);
        out.clear();
    }
    let after = live();
    let flows = e.stats().flows_now;
    assert_eq!(flows, u64::from(n));
    drop(black_box(e));
    ((after - before) as f64 / f64::from(n), flows)
}

/// Timings of a series of `expire` calls every `step` us from `from` until
/// `done` says so (or `max_calls`).
struct Calls {
    /// Median and slowest call, and all calls together, in seconds.
    median: f64,
    worst: f64,
    total: f64,
    count: usize,
}

fn expire_calls(
    e: &mut Engine<u32>,
    from: u64,
    step: u64,
    max_calls: usize,
    mut done: impl FnMut(&Engine<u32>) -> bool,
) -> Calls {
    let mut out: Vec<Action<u32>> = Vec::new();
    let mut times = Vec::new();
    let mut now = from;
    while times.len() < max_calls && !done(e) {
        let t = Instant::now();
        e.expire(now, &mut out);
        times.push(t.elapsed().as_secs_f64());
        black_box(&out);
        out.clear();
        now += step;
    }
    let total = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Calls {
        median: times.get(times.len() / 2).copied().unwrap_or(0.0),
        worst: times.last().copied().unwrap_or(0.0),
        total,
        count: times.len(),
    }
}

/// Timer-call stalls with `n` flows created over one second: pass-through
/// flows while none is due, then all of them idle past the flow timeout;
/// with `collecting`, also `n` collecting flows whose collect-timeout passes
/// at once. Calls come every 250 ms, as the daemon's idle tick.
fn expire_stalls(n: u32, collecting: bool) -> String {
    let cfg = EngineConfig {
        max_flows: n,
        ..EngineConfig::default()
    };
    let timeout = cfg.flow_timeout_us;
    let tick = 250_000;
    let heap_before = live();
    let mut e: Engine<u32> = Engine::new(cfg.clone()).unwrap();
    let mut out: Vec<Action<u32>> = Vec::new();
    // The slowest single process() call while the table fills (the hash
    // table's growth rehashes it whole).
    let mut insert_worst = 0f64;
    for i in 0..n {
        let p = packet(i, 443, 1000, 0x08, b"GET / HTTP/1.1\r\n\r\n");
        let now = 1 + u64::from(i) * 1_000_000 / u64::from(n);
        let t = Instant::now();
        e.process(&p, now, || i, &mut out);
        insert_worst = insert_worst.max(t.elapsed().as_secs_f64());
    }
    assert_eq!(e.stats().flows_now, u64::from(n));
    let heap_full = live();
    // Nothing due: 2 s .. 2 s + 8 ticks.
    let idle = expire_calls(&mut e, 2_000_000, tick, 8, |_| false);
    // Everything idle: from flow-timeout + 1.1 s on, until the table is empty.
    let sweep = expire_calls(&mut e, timeout + 1_100_000, tick, 100_000, |e| {
        e.stats().flows_now == 0
    });
    // Large emptied tables are freed on a thread of their own: let it run.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let heap_after = live();
    drop(e);
    let mut fields = format!(
        "\"flows\": {n}, \"idle_worst_ms\": {:.3}, \"sweep_median_ms\": {:.3}, \
         \"sweep_worst_ms\": {:.3}, \"sweep_calls\": {}, \"sweep_total_ms\": {:.1}, \
         \"heap_full_mb\": {:.1}, \"heap_after_mb\": {:.2}, \"insert_worst_ms\": {:.3}",
        idle.worst * 1e3,
        sweep.median * 1e3,
        sweep.worst * 1e3,
        sweep.count,
        sweep.total * 1e3,
        (heap_full - heap_before) as f64 / 1e6,
        (heap_after - heap_before) as f64 / 1e6,
        insert_worst * 1e3,
    );
    if collecting {
        let mut e: Engine<u32> = Engine::new(cfg.clone()).unwrap();
        for i in 0..n {
            let p = packet(i, 443, 1000, 0, &CHROMIUM[..1448]);
            e.process(&p, 1, || i, &mut out);
        }
        assert_eq!(e.stats().held_packets_now, u64::from(n));
        let c = expire_calls(&mut e, 1 + cfg.collect_timeout_us, 50_000, 100_000, |e| {
            e.stats().held_packets_now == 0
        });
        fields += &format!(
            ", \"collect_timeout_median_ms\": {:.3}, \"collect_timeout_worst_ms\": {:.3}, \
             \"collect_timeout_calls\": {}",
            c.median * 1e3,
            c.worst * 1e3,
            c.count
        );
    }
    format!("{{{fields}}}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--expire") {
        let mut sizes: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if sizes.is_empty() {
            sizes = vec![131_072, 1_048_576];
        }
        let small = *sizes.iter().min().unwrap();
        let rows: Vec<String> = sizes
            .iter()
            .map(|n| expire_stalls(*n, *n == small))
            .collect();
        println!("[{}]", rows.join(", "));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, rounds, split_flows, mem_flows) = if quick {
        (20, 2, 50_000, 20_000)
    } else {
        (200, 5, 200_000, 100_000)
    };

    let pt_watched = pass_through_rate(1024, 443, reps, rounds);
    let pt_other = pass_through_rate(1024, 8443, reps, rounds);
    let splits = split_rate(split_flows, rounds);

    let (mem_pass, _) = bytes_per_flow(mem_flows, |i| {
        packet(i, 443, 1000, 0x08, b"GET / HTTP/1.1\r\n\r\n")
    });
    let (mem_injected, _) = bytes_per_flow(mem_flows, |i| packet(i, 443, 1000, 0x08, HELLO));
    let (mem_collecting, _) =
        bytes_per_flow(mem_flows, |i| packet(i, 443, 1000, 0, &CHROMIUM[..1448]));

    println!(
        "{{\"pass_through_pps\": {pt_watched:.0}, \"other_port_pps\": {pt_other:.0}, \
         \"splits_per_s\": {splits:.0}, \"split_flows\": {split_flows}, \
         \"mem_flows\": {mem_flows}, \"bytes_per_flow_pass_through\": {mem_pass:.1}, \
         \"bytes_per_flow_injected\": {mem_injected:.1}, \
         \"bytes_per_flow_collecting\": {mem_collecting:.1}, \"reps\": {reps}, \"rounds\": {rounds}}}"
    );
}
