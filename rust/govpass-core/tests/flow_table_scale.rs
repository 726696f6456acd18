//! Timer calls with many tracked flows: each `expire` examines a bounded
//! number of flows, idle flows are still forgotten within flow-timeout plus
//! flow-timeout / 16, collect-timeouts of a burst all fire, and the table
//! gives its memory back once the burst is gone.

mod common;

use common::*;
use govpass_core::engine::{COLLECT_BUDGET, EXPIRE_BUDGET};
use govpass_core::EngineConfig;

const T: u64 = 1_000_000;
const G: u64 = T / 16;

fn config(max_flows: u32) -> EngineConfig {
    EngineConfig {
        flow_timeout_us: T,
        max_flows,
        ..EngineConfig::default()
    }
}

/// Pass-through flow number `i` (first payload not TLS).
fn plain(i: u32) -> Vec<u8> {
    let mut f = V4::port(1024 + (i % 60_000) as u16);
    f.src = [198, 51, (100 + i / 60_000) as u8, 2];
    f.packet(1, PSH, b"GET / HTTP/1.1\r\n\r\n")
}

fn flows(d: &Driver) -> u64 {
    d.engine.stats().flows_now
}

#[test]
fn expire_examines_a_bounded_number_of_flows() {
    let n = 3 * EXPIRE_BUDGET as u32 + 100;
    let mut d = Driver::new(config(n));
    for i in 0..n {
        d.pass(&plain(i), 1);
    }
    // Nothing is due: the call looks at the oldest flow only.
    d.expire(T / 2);
    assert!(
        d.engine.expire_visits() <= 1,
        "{}",
        d.engine.expire_visits()
    );
    assert_eq!(flows(&d), u64::from(n));
    // Everything is due: one call forgets one budget's worth, the following
    // calls the rest.
    d.expire(T + 1);
    assert!(d.engine.expire_visits() <= (COLLECT_BUDGET + EXPIRE_BUDGET) as u64);
    assert_eq!(flows(&d), u64::from(n) - EXPIRE_BUDGET as u64);
    let mut calls = 1;
    while flows(&d) > 0 {
        d.expire(T + 1 + calls);
        assert!(d.engine.expire_visits() <= (COLLECT_BUDGET + EXPIRE_BUDGET) as u64);
        calls += 1;
    }
    assert_eq!(calls, 4);
}

#[test]
fn idle_flows_are_forgotten_at_the_timeout_boundary() {
    let mut d = Driver::new(config(100));
    let a = plain(1);
    let b = plain(2);
    d.pass(&a, 0);
    d.pass(&b, 10);
    d.expire(T - 1);
    assert_eq!(flows(&d), 2);
    // A is idle for exactly the flow timeout; B is not yet.
    d.expire(T);
    assert_eq!(flows(&d), 1);
    d.expire(T + 9);
    assert_eq!(flows(&d), 1);
    d.expire(T + 10);
    assert_eq!(flows(&d), 0);
}

#[test]
fn a_flow_seen_again_is_kept_and_the_slack_is_bounded() {
    let mut d = Driver::new(config(100));
    let a = plain(1);
    let b = plain(2);
    let c = plain(3);
    d.pass(&a, 0);
    d.pass(&b, 10);
    d.pass(&c, 20);
    // A is seen again soon (it stays first in the recency list), C after
    // more than flow-timeout / 16 (it moves to the end).
    d.pass(&a, G / 2);
    d.pass(&c, G + 20);
    // B is idle from T + 10 on, but stays behind A until A is idle too:
    // never more than flow-timeout / 16 late.
    d.expire(T + 10);
    assert_eq!(flows(&d), 3, "A (seen at G/2) still blocks");
    d.expire(T + G / 2 - 1);
    assert_eq!(flows(&d), 3);
    d.expire(T + G / 2);
    assert_eq!(flows(&d), 1, "A and B forgotten, C kept");
    d.expire(T + G + 19);
    assert_eq!(flows(&d), 1);
    d.expire(T + G + 20);
    assert_eq!(flows(&d), 0);
}

#[test]
fn a_full_table_evicts_the_least_recently_seen_flow() {
    let mut d = Driver::new(config(2));
    d.pass(&plain(1), 0);
    d.pass(&plain(2), 1);
    d.pass(&plain(1), G + 1); // flow 1 is the most recent now
    d.pass(&plain(3), G + 2); // evicts flow 2
    assert_eq!(d.engine.stats().evicted, 1);
    // Flow 1 is still known: its next packet continues it (a first packet
    // of an unknown flow would count a new flow).
    let before = d.engine.stats().flows;
    d.pass(&plain(1), G + 3);
    assert_eq!(d.engine.stats().flows, before);
    d.pass(&plain(2), G + 4);
    assert_eq!(d.engine.stats().flows, before + 1, "flow 2 was forgotten");
}

#[test]
fn a_burst_of_collect_timeouts_fires_over_bounded_calls() {
    let hello = fixture("chromium_sni_late.bin");
    let n = 2 * COLLECT_BUDGET as u32 + 500;
    let mut d = Driver::new(config(n));
    for i in 0..n {
        let mut f = V4::port(1024 + (i % 60_000) as u16);
        f.src = [198, 51, 100, (i / 60_000) as u8];
        assert!(d.take(&f.packet(1, 0, &hello[..1000]), 1).is_empty());
    }
    let timeout = EngineConfig::default().collect_timeout_us;
    let mut released = Vec::new();
    for call in 0..3 {
        let out = d.expire(1 + timeout + call);
        assert!(d.engine.expire_visits() <= (COLLECT_BUDGET + EXPIRE_BUDGET) as u64);
        released.push(out.len());
    }
    assert_eq!(released, vec![COLLECT_BUDGET, COLLECT_BUDGET, 500]);
    d.assert_all_fated();
}

#[test]
fn memory_is_given_back_after_a_burst() {
    let n = 40_000u32;
    let mut d = Driver::new(config(n));
    let small = d.engine.flow_table_bytes();
    for i in 0..n {
        d.pass(&plain(i), 1);
    }
    let full = d.engine.flow_table_bytes();
    assert!(full >= n as usize * 40, "{full} bytes for {n} flows");
    // Most of the burst goes idle; a few flows stay active.
    for i in 0..n / 4 {
        d.pass(&plain(i), T / 2);
    }
    let mut now = T + 2;
    while flows(&d) > u64::from(n / 4) {
        d.expire(now);
        now += 1;
    }
    // A quarter left: no shrink yet (hysteresis).
    assert_eq!(d.engine.flow_table_bytes(), full);
    for i in 0..100 {
        d.pass(&plain(i), now);
    }
    now = now.max(T / 2 + T) + 1;
    while flows(&d) > 100 {
        d.expire(now);
        now += 1;
    }
    // The shrink moves the flows left over the following timer calls.
    for _ in 0..64 {
        d.expire(now);
        now += 1;
    }
    let after = d.engine.flow_table_bytes();
    assert!(after * 8 <= full, "{after} bytes after a burst of {full}");
    assert!(small <= after);
}
