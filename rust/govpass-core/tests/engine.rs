//! Byte-fixture tests of the engine through its public API: packets in,
//! actions out, with `Engine<u32>` (tokens are packet ids from 0).

mod common;

use std::collections::BTreeMap;

use common::*;
use govpass_core::engine::Disposition;
use govpass_core::{Action, EngineConfig, FailReason, SplitMode, SplitPos};
use proptest::prelude::*;

const ISN: u32 = 1_000_000;

fn cfg() -> EngineConfig {
    EngineConfig::default()
}

fn openssl() -> Vec<u8> {
    fixture("openssl_default.bin")
}

fn chromium() -> Vec<u8> {
    fixture("chromium_sni_late.bin")
}

/// Reassembles `(seq, bytes)` pieces relative to `isn`; panics if two pieces
/// disagree on a byte. Returns offset -> (byte, copies).
fn lay_out(isn: u32, pieces: &[(u32, Vec<u8>)]) -> BTreeMap<u32, (u8, u32)> {
    let mut map: BTreeMap<u32, (u8, u32)> = BTreeMap::new();
    for (seq, bytes) in pieces {
        let off = seq.wrapping_sub(isn);
        for (i, b) in bytes.iter().enumerate() {
            let e = map.entry(off + i as u32).or_insert((*b, 0));
            assert_eq!(e.0, *b, "byte {} differs between copies", off + i as u32);
            e.1 += 1;
        }
    }
    map
}

fn seq_payload(pkt: &[u8]) -> (u32, Vec<u8>) {
    let v = view(pkt);
    (v.seq.0, v.payload().to_vec())
}

// ------------------------------------------------------------ basic splits

#[test]
fn single_packet_hello_becomes_five_bytes_then_the_rest() {
    let hello = openssl();
    let flow = V4::default();
    let orig = flow.packet(ISN, PSH, &hello);
    let mut d = Driver::default_cfg();
    let out = d.take(&orig, 10);
    assert_eq!(shape(&out), "S S D0");
    let s = sends(&out);
    // Exactly the original headers with seq, flags, lengths and checksums
    // adjusted: the builder recomputes those independently.
    assert_eq!(
        s[0],
        &flow.packet(ISN, 0, &hello[..5]),
        "first segment: 5 bytes, no PSH"
    );
    assert_eq!(
        s[1],
        &flow.packet(ISN + 5, PSH, &hello[5..]),
        "second: the rest, PSH"
    );
    let v0 = view(s[0]);
    assert_eq!(v0.flags & (PSH | FIN | SYN | RST), 0);
    assert_eq!(view(s[1]).flags & PSH, PSH);
    // IP id, TTL, ack and window are kept.
    assert_eq!(&s[0][4..6], &orig[4..6]);
    assert_eq!(s[0][8], orig[8]);
    assert_eq!(&s[0][28..32], &orig[28..32]);
    assert_eq!(&s[0][34..36], &orig[34..36]);

    let st = d.engine.stats();
    assert_eq!(
        (st.flows, st.flows_now, st.splits, st.segments),
        (1, 1, 1, 2)
    );
    assert_eq!(st.held_packets_now, 0);
    assert_eq!(st.fail_open.iter().sum::<u64>(), 0);
    d.assert_all_fated();
}

#[test]
fn split_works_across_the_sequence_wrap() {
    let hello = openssl();
    let flow = V4::default();
    let isn = u32::MAX - 2;
    let mut d = Driver::default_cfg();
    let out = d.take(&flow.packet(isn, PSH, &hello), 0);
    let s = sends(&out);
    assert_eq!(view(s[0]).seq.0, isn);
    assert_eq!(view(s[1]).seq.0, 2);
    assert_eq!(s[1], &flow.packet(2, PSH, &hello[5..]));
}

#[test]
fn two_packet_chromium_hello_is_held_then_split_with_its_options() {
    let hello = chromium();
    assert_eq!(hello.len(), 2000);
    let a = V4::default().with_options(ts_option(1000, 7));
    let b = V4::default().with_options(ts_option(1001, 7));
    let p0 = a.packet(ISN, 0, &hello[..1448]);
    let p1 = b.packet(ISN + 1448, PSH, &hello[1448..]);
    let mut d = Driver::default_cfg();

    let out = d.take(&p0, 0);
    assert!(
        out.is_empty(),
        "held while the record is incomplete: {out:?}"
    );
    let st = d.engine.stats();
    assert_eq!(
        (st.held_packets_now, st.held_bytes_now),
        (1, p0.len() as u64)
    );

    let out = d.take(&p1, 100);
    assert_eq!(shape(&out), "S S S D0 D1");
    let s = sends(&out);
    // Segments carry the options of the packet that carried their first byte.
    assert_eq!(s[0], &a.packet(ISN, 0, &hello[..5]));
    assert_eq!(s[1], &a.packet(ISN + 5, 0, &hello[5..1453]));
    assert_eq!(s[2], &b.packet(ISN + 1453, PSH, &hello[1453..]));
    for seg in &s {
        assert!(
            payload(seg).len() <= 1448,
            "no segment exceeds the largest original payload"
        );
        assert_eq!(
            seg[32] >> 4,
            8,
            "a 32-byte TCP header: the options are kept"
        );
        assert_eq!(&seg[40..44], &[1, 1, 8, 10]);
    }
    assert_eq!(&s[0][40..52], &ts_option(1000, 7)[..]);
    assert_eq!(&s[2][40..52], &ts_option(1001, 7)[..]);
    let st = d.engine.stats();
    assert_eq!(
        (
            st.splits,
            st.segments,
            st.held_packets_now,
            st.held_bytes_now
        ),
        (1, 3, 0, 0)
    );
    assert_eq!(
        st.held_packets_peak, 2,
        "the last packet is held until the split"
    );
    d.assert_all_fated();
}

#[test]
fn out_of_order_packets_are_reassembled_before_the_split() {
    let hello = chromium();
    let flow = V4::default();
    let parts = cut(&hello, &[700, 1400]);
    let pkt = |i: usize| flow.packet(ISN + parts[i].0 as u32, 0, &parts[i].1);
    let mut d = Driver::default_cfg();
    assert!(d.take(&pkt(0), 0).is_empty());
    assert!(d.take(&pkt(2), 1).is_empty(), "a piece after a gap waits");
    assert_eq!(d.engine.stats().held_packets_now, 2);
    let out = d.take(&pkt(1), 2);
    // Held packets are dropped in stream order: ids 0 (0..700), 2 (700..1400), 1.
    assert_eq!(shape(&out), "S S S S D0 D2 D1");
    let s = sends(&out);
    let pieces: Vec<(usize, usize)> = s
        .iter()
        .map(|p| {
            let (seq, pl) = seq_payload(p);
            let off = (seq - ISN) as usize;
            assert_eq!(pl, &hello[off..off + pl.len()]);
            (off, off + pl.len())
        })
        .collect();
    // The largest original payload was 700.
    assert_eq!(pieces, vec![(0, 5), (5, 705), (705, 1405), (1405, 2000)]);
    d.assert_all_fated();
}

#[test]
fn a_flow_first_seen_mid_record_fails_open_as_not_tls() {
    let hello = chromium();
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    // The second packet arrives first: its bytes do not start a record.
    assert_ne!(hello[1448], 0x16);
    d.pass(&flow.packet(ISN + 1448, PSH, &hello[1448..]), 0);
    d.pass(&flow.packet(ISN, 0, &hello[..1448]), 1);
    let st = d.engine.stats();
    assert_eq!(st.fail_count(FailReason::NotTls), 1);
    assert_eq!((st.splits, st.flows_now), (0, 1));
}

#[test]
fn not_tls_passes_and_the_flow_stays_pass_through() {
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    d.pass(&flow.packet(ISN, 0, &[]), 0); // a pure ACK creates nothing
    assert_eq!(d.engine.stats().flows_now, 0);
    d.pass(
        &flow.packet(ISN, PSH, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        1,
    );
    let st = d.engine.stats();
    assert_eq!(
        (st.flows, st.flows_now, st.fail_count(FailReason::NotTls)),
        (1, 1, 1)
    );
    // A ClientHello later on the tuple is taken for a new connection reusing
    // it (its SYN is not queued), and split.
    assert_eq!(
        shape(&d.take(&flow.packet(ISN + 27, PSH, &openssl()), 2)),
        "S S D2"
    );
    // A single byte is enough to decide.
    d.pass(&V4::port(1).packet(5, PSH, b"\x17"), 3);
    // Traffic to other ports never creates a flow.
    let other = V4 {
        dport: 8443,
        ..V4::default()
    };
    d.pass(&other.packet(ISN, PSH, &openssl()), 4);
    let st = d.engine.stats();
    assert_eq!(
        (st.flows_now, st.splits, st.packets, st.passed),
        (2, 1, 5, 4)
    );
}

#[test]
fn tcp_fast_open_data_is_never_touched() {
    let mut d = Driver::default_cfg();
    let flow = V4::default();
    d.pass(&flow.packet(ISN, SYN, &openssl()), 0);
    d.pass(&flow.packet(ISN + 518, PSH, b"more"), 1);
    let st = d.engine.stats();
    assert_eq!((st.fail_count(FailReason::SynData), st.splits), (1, 0));
}

// ------------------------------------------------------------- fail-opens

#[test]
fn expire_fires_the_collect_timeout_and_releases_in_arrival_order() {
    let hello = chromium();
    let flow = V4::default();
    let parts = cut(&hello, &[700, 1400]);
    let pkt = |i: usize| flow.packet(ISN + parts[i].0 as u32, 0, &parts[i].1);
    let mut d = Driver::default_cfg();
    d.take(&pkt(0), 1_000);
    d.take(&pkt(2), 2_000);
    assert!(d.expire(250_999).is_empty(), "deadline is started + 250 ms");
    let out = d.expire(251_000);
    assert_eq!(out, vec![Action::Release(0), Action::Release(1)]);
    assert!(d.expire(252_000).is_empty(), "fires once");
    let st = d.engine.stats();
    assert_eq!(st.fail_count(FailReason::Timeout), 1);
    assert_eq!((st.held_packets_now, st.flows_now), (0, 1));
    // The rest of the flow passes.
    d.pass(&pkt(1), 260_000);
    d.assert_all_fated();
}

#[test]
fn a_packet_after_the_collect_deadline_fails_the_flow_without_expire() {
    let hello = chromium();
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    d.take(&flow.packet(ISN, 0, &hello[..1448]), 0);
    let out = d.take(&flow.packet(ISN + 1448, PSH, &hello[1448..]), 250_000);
    assert_eq!(out, vec![Action::Release(0), Action::Release(1)]);
    assert_eq!(d.engine.stats().fail_count(FailReason::Timeout), 1);
    d.assert_all_fated();
}

#[test]
fn fin_or_rst_while_collecting_releases_everything_and_forgets_the_flow() {
    let hello = chromium();
    for (flag, data) in [
        (FIN, &b""[..]),
        (RST, &b""[..]),
        (FIN | PSH, &hello[1448..]),
    ] {
        let flow = V4::default();
        let mut d = Driver::default_cfg();
        d.take(&flow.packet(ISN, 0, &hello[..1448]), 0);
        let out = d.take(&flow.packet(ISN + 1448, flag, data), 10);
        assert_eq!(
            out,
            vec![Action::Release(0), Action::Release(1)],
            "flags {flag:#x}"
        );
        let st = d.engine.stats();
        assert_eq!((st.fail_count(FailReason::FinRst), st.flows_now), (1, 0));
        d.assert_all_fated();
    }
}

#[test]
fn pure_acks_while_collecting_are_accepted_at_once() {
    let hello = chromium();
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    d.take(&flow.packet(ISN, 0, &hello[..1448]), 0);
    assert_eq!(
        d.take(&flow.packet(ISN + 1448, 0, &[]), 1),
        vec![Action::Accept(1)]
    );
    assert_eq!(
        d.engine.stats().held_packets_now,
        1,
        "an accepted packet is not held"
    );
    assert_eq!(
        shape(&d.take(&flow.packet(ISN + 1448, PSH, &hello[1448..]), 2)),
        "S S S D0 D2"
    );
}

#[test]
fn retransmission_after_a_split_is_split_again() {
    let hello = openssl();
    let flow = V4::default();
    let orig = flow.packet(ISN, PSH, &hello);
    let mut d = Driver::default_cfg();
    let first = d.take(&orig, 0);
    let again = d.take(&orig, 200_000);
    assert_eq!(shape(&again), "S S D1");
    assert_eq!(
        sends(&first),
        sends(&again),
        "cut at the same place, same bytes"
    );
    assert_eq!(d.engine.stats().resplits, 1);
    // Data after the record passes.
    d.pass(
        &flow.packet(ISN + 517, PSH, b"\x17\x03\x03\x00\x01x"),
        300_000,
    );
    d.assert_all_fated();
}

#[test]
fn retransmission_of_a_multi_packet_hello_keeps_the_cut() {
    let hello = chromium();
    let flow = V4::default();
    let p0 = flow.packet(ISN, 0, &hello[..1448]);
    let p1 = flow.packet(ISN + 1448, PSH, &hello[1448..]);
    let mut d = Driver::default_cfg();
    d.take(&p0, 0);
    d.take(&p1, 1);
    // The first packet again: cut at 5 again.
    let out = d.take(&p0, 300_000);
    assert_eq!(shape(&out), "S S D2");
    let s = sends(&out);
    assert_eq!(s[0], &flow.packet(ISN, 0, &hello[..5]));
    assert_eq!(s[1], &flow.packet(ISN + 5, 0, &hello[5..1448]));
    // The second packet has no cut inside it: it passes as it is.
    d.pass(&p1, 300_001);
    // A coalesced retransmission of everything is bounded by the original size.
    let big = flow.packet(ISN, PSH, &hello);
    let out = d.take(&big, 300_002);
    assert_eq!(shape(&out), "S S S D4");
    let lens: Vec<usize> = sends(&out).iter().map(|p| payload(p).len()).collect();
    assert_eq!(lens, vec![5, 1448, 547]);
    assert_eq!(d.engine.stats().resplits, 2);
    d.assert_all_fated();
}

#[test]
fn max_held_pkts_exact_limit_splits_and_one_more_fails_open() {
    let hello = chromium();
    let flow = V4::default();
    let config = EngineConfig {
        max_held_pkts: 4,
        ..cfg()
    };
    // Four packets: the limit exactly.
    let parts = cut(&hello, &[500, 1000, 1500]);
    let mut d = Driver::new(config.clone());
    for (off, data) in &parts[..3] {
        assert!(d
            .take(&flow.packet(ISN + *off as u32, 0, data), 0)
            .is_empty());
    }
    let (off, data) = &parts[3];
    let out = d.take(&flow.packet(ISN + *off as u32, PSH, data), 1);
    assert_eq!(d.engine.stats().splits, 1, "{}", shape(&out));
    assert_eq!(d.engine.stats().held_packets_peak, 4);
    d.assert_all_fated();

    // Five packets: the fifth fails the flow open.
    let parts = cut(&hello, &[400, 800, 1200, 1600]);
    let mut d = Driver::new(config);
    for (off, data) in &parts[..4] {
        assert!(d
            .take(&flow.packet(ISN + *off as u32, 0, data), 0)
            .is_empty());
    }
    let (off, data) = &parts[4];
    let out = d.take(&flow.packet(ISN + *off as u32, PSH, data), 1);
    assert_eq!(shape(&out), "R0 R1 R2 R3 R4");
    let st = d.engine.stats();
    assert_eq!(
        (st.splits, st.fail_count(FailReason::TooManyPackets)),
        (0, 1)
    );
    assert_eq!(st.held_packets_peak, 4);
    d.assert_all_fated();
}

#[test]
fn max_buffer_exact_limit_splits_and_one_less_fails_open() {
    let hello = chromium();
    let flow = V4::default();
    let p0 = flow.packet(ISN, 0, &hello[..1448]);
    let p1 = flow.packet(ISN + 1448, PSH, &hello[1448..]);

    // Record length known from the first packet.
    let mut d = Driver::new(EngineConfig {
        max_buffer: 2000,
        ..cfg()
    });
    d.take(&p0, 0);
    assert_eq!(d.take(&p1, 1).len(), 5);
    let mut d = Driver::new(EngineConfig {
        max_buffer: 1999,
        ..cfg()
    });
    d.pass(&p0, 0);
    d.pass(&p1, 1);
    assert_eq!(d.engine.stats().fail_count(FailReason::Overflow), 1);

    // Record length unknown at first (3 bytes): the assembler's own limit.
    let q0 = flow.packet(ISN, 0, &hello[..3]);
    let q1 = flow.packet(ISN + 3, PSH, &hello[3..]);
    let mut d = Driver::new(EngineConfig {
        max_buffer: 2000,
        ..cfg()
    });
    assert!(d.take(&q0, 0).is_empty());
    let out = d.take(&q1, 1);
    assert_eq!(d.engine.stats().splits, 1, "{}", shape(&out));
    let mut d = Driver::new(EngineConfig {
        max_buffer: 1999,
        ..cfg()
    });
    d.take(&q0, 0);
    assert_eq!(shape(&d.take(&q1, 1)), "R0 R1");
    assert_eq!(d.engine.stats().fail_count(FailReason::Overflow), 1);
    d.assert_all_fated();

    // A single-packet record of exactly max-buffer bytes.
    let small = fixture("openssl_tls12.bin");
    let mut d = Driver::new(EngineConfig {
        max_buffer: small.len() as u32,
        ..cfg()
    });
    assert_eq!(shape(&d.take(&flow.packet(ISN, PSH, &small), 0)), "S S D0");
    let mut d = Driver::new(EngineConfig {
        max_buffer: small.len() as u32 - 1,
        ..cfg()
    });
    d.pass(&flow.packet(ISN, PSH, &small), 0);
}

#[test]
fn truncated_packet_fails_the_flow_open_and_is_never_modified() {
    let hello = chromium();
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    d.take(&flow.packet(ISN, 0, &hello[..1448]), 0);
    let full = flow.packet(ISN + 1448, PSH, &hello[1448..]);
    let out = d.take(&full[..300], 1);
    assert_eq!(out, vec![Action::Release(0), Action::Release(1)]);
    assert_eq!(d.engine.stats().fail_count(FailReason::Truncated), 1);
    d.pass(&full, 2);
    // A truncated first packet passes and creates nothing.
    let other = V4::port(50000);
    d.pass(&other.packet(ISN, PSH, &openssl())[..100], 3);
    // Headers cut short too.
    d.pass(&other.packet(ISN, PSH, &openssl())[..30], 4);
    assert_eq!(d.engine.stats().flows_now, 1);
    d.assert_all_fated();
}

#[test]
fn ipv6_with_destination_options_is_split_behind_its_extension_header() {
    let hello = openssl();
    let flow = V6 {
        sport: 40001,
        dest_opts: true,
        options: Vec::new(),
    };
    let mut d = Driver::default_cfg();
    let out = d.take(&flow.packet(ISN, PSH, &hello), 0);
    assert_eq!(shape(&out), "S S D0");
    let s = sends(&out);
    assert_eq!(s[0], &flow.packet(ISN, 0, &hello[..5]));
    assert_eq!(s[1], &flow.packet(ISN + 5, PSH, &hello[5..]));
    assert_eq!(s[0][6], 60, "next header is still destination options");
    assert_eq!(view(s[0]).tcp_offset, 48);

    // Two packets over IPv6 too.
    let flow = V6 {
        sport: 40002,
        dest_opts: true,
        options: Vec::new(),
    };
    let hello = chromium();
    assert!(d.take(&flow.packet(ISN, 0, &hello[..1200]), 1).is_empty());
    let out = d.take(&flow.packet(ISN + 1200, PSH, &hello[1200..]), 2);
    assert_eq!(shape(&out), "S S S D1 D2");
    d.assert_all_fated();
}

#[test]
fn ipv4_options_are_kept_in_every_segment() {
    // Router alert (kind 148, length 4): an IP option etherparse accepts.
    let flow = V4 {
        ip_options: vec![148, 4, 0, 0],
        ..V4::default()
    }
    .with_options(ts_option(5, 6));
    let hello = chromium();
    let mut d = Driver::default_cfg();
    d.take(&flow.packet(ISN, 0, &hello[..1000]), 0);
    let out = d.take(&flow.packet(ISN + 1000, PSH, &hello[1000..]), 1);
    assert_eq!(shape(&out), "S S S D0 D1");
    let s = sends(&out);
    assert_eq!(s[0], &flow.packet(ISN, 0, &hello[..5]));
    assert_eq!(s[1], &flow.packet(ISN + 5, 0, &hello[5..1005]));
    assert_eq!(s[2], &flow.packet(ISN + 1005, PSH, &hello[1005..]));
    assert_eq!(view(s[0]).tcp_offset, 24);
    d.assert_all_fated();
}

#[test]
fn eviction_with_one_flow_releases_the_oldest_collecting_flow() {
    let hello = chromium();
    let a = V4::port(1001);
    let b = V4::port(1002);
    let mut d = Driver::new(EngineConfig {
        max_flows: 1,
        ..cfg()
    });
    assert!(d.take(&a.packet(ISN, 0, &hello[..1448]), 0).is_empty());
    // B evicts A: A's held packet goes out unmodified.
    let out = d.take(&b.packet(ISN, 0, &hello[..1448]), 1);
    assert_eq!(out, vec![Action::Release(0)]);
    let st = d.engine.stats();
    assert_eq!(
        (st.evicted, st.fail_count(FailReason::Evicted), st.flows_now),
        (1, 1, 1)
    );
    // The rest of A is a new flow that is not TLS; it evicts B in turn and
    // follows B's release.
    let out = d.take(&a.packet(ISN + 1448, PSH, &hello[1448..]), 2);
    assert_eq!(out, vec![Action::Release(1), Action::Release(2)]);
    assert_eq!(d.engine.stats().flows_now, 1);
    // A split flow is a tombstone; evicting it releases nothing.
    let c = V4::port(1003);
    assert_eq!(shape(&d.take(&c.packet(ISN, PSH, &openssl()), 3)), "S S D3");
    let e = V4::port(1004);
    assert_eq!(shape(&d.take(&e.packet(ISN, PSH, &openssl()), 4)), "S S D4");
    assert_eq!(d.engine.stats().flows_now, 1);
    d.assert_all_fated();
}

#[test]
fn a_panic_inside_the_engine_fails_open_and_the_engine_goes_on() {
    let hello = chromium();
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    d.take(&flow.packet(ISN, 0, &hello[..1448]), 0);
    d.engine.arm_panic();
    let out = d.take(&flow.packet(ISN + 1448, PSH, &hello[1448..]), 1);
    assert_eq!(out, vec![Action::Release(0), Action::Release(1)]);
    let st = d.engine.stats();
    assert_eq!(st.fail_count(FailReason::Internal), 1);
    assert_eq!((st.held_packets_now, st.flows_now), (0, 0));

    // A panic on a packet with no flow: it simply passes.
    d.engine.arm_panic();
    d.pass(&V4::port(2).packet(ISN, PSH, &openssl()), 2);
    assert_eq!(d.engine.stats().fail_count(FailReason::Internal), 2);

    // The engine works after.
    let out = d.take(&V4::port(3).packet(ISN, PSH, &openssl()), 3);
    assert_eq!(shape(&out), "S S D3");
    let out = d.take(&V4::port(2).packet(ISN, PSH, &openssl()), 4);
    assert_eq!(shape(&out), "S S D4");
    d.assert_all_fated();
}

#[test]
fn one_armed_panic_counts_once() {
    let mut d = Driver::default_cfg();
    d.take(&V4::default().packet(ISN, 0, &chromium()[..1000]), 0);
    d.engine.arm_panic();
    let out = d.take(
        &V4::default().packet(ISN + 1000, 0, &chromium()[1000..1500]),
        1,
    );
    assert_eq!(shape(&out), "R0 R1");
    assert_eq!(d.engine.stats().fail_count(FailReason::Internal), 1);
    d.assert_all_fated();
}

#[test]
fn idle_flows_are_forgotten_after_the_flow_timeout() {
    let config = EngineConfig {
        flow_timeout_us: 1_000_000,
        ..cfg()
    };
    let mut d = Driver::new(config.clone());
    let orig = V4::default().packet(ISN, PSH, &openssl());
    d.take(&orig, 0);
    d.pass(&V4::port(7).packet(ISN, PSH, b"not tls"), 0);
    assert_eq!(d.engine.stats().flows_now, 2);
    assert!(d.expire(500_000).is_empty());
    assert_eq!(d.engine.stats().flows_now, 2);
    assert!(d.expire(999_999).is_empty());
    assert_eq!(
        d.engine.stats().flows_now,
        2,
        "idle for less than the flow timeout"
    );
    // Idle for exactly the flow timeout: forgotten by the next call.
    assert!(d.expire(1_000_000).is_empty());
    assert_eq!(d.engine.stats().flows_now, 0);
    // After that the same bytes are a new flow: split, not re-split.
    d.take(&orig, 1_000_001);
    let st = d.engine.stats();
    assert_eq!((st.splits, st.resplits), (2, 0));

    // Without expire: a packet of an idle flow starts it afresh.
    let mut d = Driver::new(config);
    d.take(&orig, 0);
    d.take(&orig, 500_000);
    d.take(&orig, 1_500_000);
    let st = d.engine.stats();
    assert_eq!((st.splits, st.resplits, st.flows), (2, 1, 2));
}

#[test]
fn idle_sweep_releases_a_collecting_flow_whose_collect_timeout_is_longer() {
    let config = EngineConfig {
        flow_timeout_us: 1_000_000,
        collect_timeout_us: 5_000_000,
        ..cfg()
    };
    let mut d = Driver::new(config);
    d.take(&V4::default().packet(ISN, 0, &chromium()[..1448]), 0);
    assert_eq!(d.expire(1_000_000), vec![Action::Release(0)]);
    assert_eq!(d.engine.stats().flows_now, 0);
    assert!(d.expire(5_000_000).is_empty());
    d.assert_all_fated();
}

#[test]
fn bytes_beyond_the_first_record_go_out_unchanged_once() {
    let hello = openssl();
    let extra = b"\x17\x03\x03\x00\x05early";
    let flow = V4::default();

    // One packet with the record and more.
    let mut all = hello.clone();
    all.extend_from_slice(extra);
    let mut d = Driver::default_cfg();
    let out = d.take(&flow.packet(ISN, PSH, &all), 0);
    assert_eq!(shape(&out), "S S D0 S");
    let s = sends(&out);
    assert_eq!(s[0], &flow.packet(ISN, 0, &hello[..5]));
    assert_eq!(s[1], &flow.packet(ISN + 5, PSH, &hello[5..]));
    assert_eq!(
        s[2],
        &flow.packet(ISN + 517, PSH, extra),
        "tail as in the original"
    );
    d.assert_all_fated();

    // Two packets, the second carrying the record's end and more, plus a
    // third packet wholly beyond the record that arrived early.
    let hello = chromium();
    let mut rest = hello[1448..].to_vec();
    rest.extend_from_slice(extra);
    let p0 = flow.packet(ISN, 0, &hello[..1448]);
    let p1 = flow.packet(ISN + 1448, PSH, &rest);
    let p2 = flow.packet(ISN + 1448 + rest.len() as u32, PSH, b"later");
    let mut d = Driver::default_cfg();
    d.take(&p0, 0);
    d.take(&p2, 1);
    let out = d.take(&p1, 2);
    assert_eq!(shape(&out), "S S S D0 D2 S R1");
    let mut pieces: Vec<(u32, Vec<u8>)> = sends(&out).iter().map(|p| seq_payload(p)).collect();
    pieces.push(seq_payload(&p2));
    let map = lay_out(ISN, &pieces);
    let mut expect = hello.clone();
    expect.extend_from_slice(extra);
    expect.extend_from_slice(b"later");
    assert_eq!(map.len(), expect.len(), "nothing lost");
    for (off, (b, n)) in &map {
        assert_eq!(*b, expect[*off as usize]);
        assert_eq!(*n, 1, "byte {off} sent {n} times");
    }
    assert_eq!(sends(&out)[3], &flow.packet(ISN + 2000, PSH, extra));
    d.assert_all_fated();
}

#[test]
fn immediate_mode_splits_the_first_packet_at_once() {
    let config = EngineConfig {
        split_mode: SplitMode::Immediate,
        ..cfg()
    };
    let hello = chromium();
    let flow = V4::default();
    let mut d = Driver::new(config.clone());
    let out = d.take(&flow.packet(ISN, 0, &hello[..1448]), 0);
    assert_eq!(shape(&out), "S S D0");
    let s = sends(&out);
    assert_eq!(s[0], &flow.packet(ISN, 0, &hello[..5]));
    assert_eq!(
        s[1],
        &flow.packet(ISN + 5, PSH, &hello[5..1448]),
        "last piece gets PSH"
    );
    d.pass(&flow.packet(ISN + 1448, PSH, &hello[1448..]), 1);
    assert_eq!(
        d.engine.stats().held_packets_peak,
        0,
        "nothing is ever held"
    );

    // A single-packet hello is split the same way as in tls-hello mode.
    let mut d = Driver::new(config);
    let out = d.take(&V4::default().packet(ISN, PSH, &openssl()), 0);
    let mut t = Driver::default_cfg();
    let expect = t.take(&V4::default().packet(ISN, PSH, &openssl()), 0);
    assert_eq!(out, expect);
}

#[test]
fn split_positions_on_every_fixture() {
    let positions = vec![SplitPos::Sni(0), SplitPos::MidSld(0), SplitPos::SniEnd(0)];
    for h in hellos() {
        let config = EngineConfig {
            split_positions: positions.clone(),
            ..cfg()
        };
        let mut d = Driver::new(config);
        let flow = V4::default();
        let max = 1448.min(h.bytes.len());
        let mut out = d.take(&flow.packet(ISN, 0, &h.bytes[..max]), 0);
        if max < h.bytes.len() {
            assert!(out.is_empty());
            out = d.take(&flow.packet(ISN + max as u32, PSH, &h.bytes[max..]), 1);
        }
        let mut expect = vec![5usize];
        if let (Some(sni), Some(at)) = (&h.sni, h.sni_offset) {
            assert_eq!(&h.bytes[at..at + sni.len()], sni.as_bytes(), "{}", h.file);
            let labels: Vec<&str> = sni.split('.').collect();
            let sld_index = labels.len().saturating_sub(2);
            let sld_start: usize = at
                + labels[..sld_index]
                    .iter()
                    .map(|l| l.len() + 1)
                    .sum::<usize>();
            expect.extend([at, sld_start + labels[sld_index].len() / 2, at + sni.len()]);
        }
        expect.sort_unstable();
        let starts: Vec<usize> = sends(&out)
            .iter()
            .map(|p| {
                let (seq, pl) = seq_payload(p);
                let off = (seq - ISN) as usize;
                assert_eq!(pl, &h.bytes[off..off + pl.len()], "{}", h.file);
                assert!(pl.len() <= max, "{}", h.file);
                off
            })
            .collect();
        // Every expected cut starts a segment; the rest are size cuts.
        for c in &expect {
            assert!(
                starts.contains(c),
                "{}: no segment at {c}: {starts:?}",
                h.file
            );
        }
        let size_cuts: Vec<&usize> = starts
            .iter()
            .filter(|s| **s != 0 && !expect.contains(s))
            .collect();
        for s in &size_cuts {
            let prev = starts.iter().filter(|p| *p < *s).max().unwrap();
            assert_eq!(**s - prev, max, "{}: unexpected cut at {s}", h.file);
        }
        d.assert_all_fated();
    }
}

#[test]
fn midsld_of_a_two_label_suffix_is_the_second_to_last_label() {
    // "www.sub.example.co.uk": the engine has no public-suffix list, so the
    // second-level label is "co"; this pins that documented behaviour.
    let h = hellos()
        .into_iter()
        .find(|h| h.file == "openssl_co_uk.bin")
        .unwrap();
    let at = h.sni_offset.unwrap();
    let config = EngineConfig {
        split_chunk: 0,
        split_positions: vec![SplitPos::MidSld(0)],
        ..cfg()
    };
    let mut d = Driver::new(config);
    let out = d.take(&V4::default().packet(ISN, PSH, &h.bytes), 0);
    let s = sends(&out);
    assert_eq!(s.len(), 2);
    let cut_at = "www.sub.example.".len() + 1;
    assert_eq!(payload(s[0]).len(), at + cut_at);
}

#[test]
fn positions_outside_the_record_leave_no_cut_and_fail_open() {
    let config = EngineConfig {
        split_chunk: 0,
        split_positions: vec![SplitPos::Sni(0)],
        ..cfg()
    };
    let mut d = Driver::new(config);
    let out = d.take(
        &V4::default().packet(ISN, PSH, &fixture("openssl_no_sni.bin")),
        0,
    );
    assert_eq!(out, vec![Action::Release(0)]);
    assert_eq!(d.engine.stats().fail_count(FailReason::NoCut), 1);
    d.assert_all_fated();
}

#[test]
fn release_all_at_shutdown_gives_back_what_is_held() {
    let mut d = Driver::default_cfg();
    d.take(&V4::port(1).packet(ISN, 0, &chromium()[..1448]), 0);
    d.take(&V4::port(2).packet(ISN, 0, &chromium()[..1000]), 0);
    let mut out = d.release_all();
    out.sort_by_key(|a| match a {
        Action::Release(t) => *t,
        _ => u32::MAX,
    });
    assert_eq!(out, vec![Action::Release(0), Action::Release(1)]);
    assert_eq!(d.engine.stats().flows_now, 0);
    d.assert_all_fated();
}

// --------------------------------------------------------------- property

/// A random delivery of a fixture: cut points, order, duplicates, isn.
#[derive(Debug, Clone)]
struct Delivery {
    fixture: usize,
    isn: u32,
    cuts: Vec<u16>,
    swaps: Vec<(u8, u8)>,
    dups: Vec<u8>,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        0usize..10,
        prop_oneof![
            Just(0u32),
            Just(u32::MAX),
            (u32::MAX - 3000)..=u32::MAX,
            any::<u32>()
        ],
        proptest::collection::vec(any::<u16>(), 0..12),
        proptest::collection::vec((any::<u8>(), any::<u8>()), 0..4),
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(fixture, isn, cuts, swaps, dups)| Delivery {
            fixture,
            isn,
            cuts,
            swaps,
            dups,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_reassembles_to_the_original_bytes(del in delivery()) {
        let all = hellos();
        let h = &all[del.fixture % all.len()];
        let data = &h.bytes;
        let cut_at: Vec<usize> = del.cuts.iter().map(|c| *c as usize % data.len()).collect();
        let parts = cut(data, &cut_at);
        let max_orig = parts.iter().map(|(_, p)| p.len()).max().unwrap();
        let mut order: Vec<usize> = (0..parts.len()).collect();
        for (a, b) in &del.swaps {
            let n = order.len();
            order.swap(*a as usize % n, *b as usize % n);
        }
        for d in &del.dups {
            let n = order.len();
            let pick = order[*d as usize % n];
            order.insert((*d as usize / 3) % (n + 1), pick);
        }
        let flow = V4::default();
        let mut d = Driver::default_cfg();
        let mut originals = Vec::new();
        let mut out_pieces: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut all_actions = Vec::new();
        for (t, i) in order.iter().enumerate() {
            let (off, bytes) = &parts[*i];
            let seq = del.isn.wrapping_add(*off as u32);
            let flags = if off + bytes.len() == data.len() { PSH } else { 0 };
            let pkt = flow.packet(seq, flags, bytes);
            let (disp, out) = d.feed(&pkt, t as u64 * 1000);
            if disp == Disposition::Pass {
                out_pieces.push((seq, bytes.clone()));
            }
            originals.push((seq, bytes.clone()));
            all_actions.extend(out);
        }
        let tail = d.expire(10_000_000);
        all_actions.extend(tail);
        d.assert_all_fated();
        for a in &all_actions {
            match a {
                Action::Send(p) => {
                    let (seq, pl) = seq_payload(p);
                    prop_assert!(pl.len() <= max_orig, "send of {} > {}", pl.len(), max_orig);
                    out_pieces.push((seq, pl));
                    sent.push(p.clone());
                }
                Action::Release(t) | Action::Accept(t) => {
                    out_pieces.push(originals[*t as usize].clone())
                }
                Action::Drop(_) => {}
            }
        }
        let map = lay_out(del.isn, &out_pieces);
        prop_assert_eq!(map.len(), data.len(), "every byte goes out");
        for (off, (b, _)) in &map {
            prop_assert_eq!(*b, data[*off as usize]);
        }
        let st = d.engine.stats();
        if let Some(first) = sent.first() {
            let (seq, pl) = seq_payload(first);
            prop_assert_eq!(seq, del.isn);
            prop_assert_eq!(&pl[..], &data[..5]);
            prop_assert!(st.splits == 1);
        }
        // Whenever the first packet came first and no limit was hit, the
        // record was split.
        if order[0] == 0 && parts.len() <= 32 && order.len() <= 32 {
            prop_assert_eq!(st.splits, 1, "order {:?}", order);
        }
        prop_assert_eq!(st.fail_count(FailReason::Internal), 0);
    }
}
