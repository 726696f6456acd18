//! A panic inside the engine never loses a held packet; segment limits with large packets.

mod common;

use common::*;
use govpass_core::{EngineConfig, FailReason};

#[test]
fn panic_while_planning_a_split_releases_every_held_packet() {
    let hello = fixture("chromium_sni_late.bin");
    let flow = V4::port(7000);
    let mut d = Driver::new(EngineConfig::default());
    assert!(d.take(&flow.packet(10, 0, &hello[..1448]), 1).is_empty());
    d.engine.arm_panic_in_plan();
    let out = d.take(&flow.packet(10 + 1448, PSH, &hello[1448..]), 2);
    assert_eq!(shape(&out), "R0 R1");
    assert_eq!(d.engine.stats().fail_count(FailReason::Internal), 1);
    d.assert_all_fated();
    // The engine keeps working.
    let out = d.take(
        &V4::port(7001).packet(10, PSH, &fixture("openssl_default.bin")),
        3,
    );
    assert_eq!(shape(&out), "S S D2");
}

#[test]
fn panic_while_planning_a_single_packet_split_releases_it() {
    let mut d = Driver::new(EngineConfig::default());
    d.engine.arm_panic_in_plan();
    let out = d.take(
        &V4::port(7100).packet(10, PSH, &fixture("openssl_default.bin")),
        1,
    );
    assert_eq!(shape(&out), "R0");
    d.assert_all_fated();
}

/// A large offloaded (GSO) packet: segments stay within max-seg-payload + 40
/// bytes even with TCP timestamps, and follow the flow's payload otherwise.
#[test]
fn segments_of_a_large_packet_fit_the_mtu_with_options() {
    let hello = fixture("chromium_sni_late.bin"); // 2000 bytes in one packet
    let flow = V4::port(7200).with_options(ts_option(1, 2));
    let mut d = Driver::new(EngineConfig::default());
    let out = d.take(&flow.packet(10, PSH, &hello), 1);
    let sizes: Vec<usize> = sends(&out).iter().map(|p| p.len()).collect();
    assert!(sizes.iter().all(|s| *s <= 1500), "{sizes:?}");
    let payloads: Vec<usize> = sends(&out).iter().map(|p| payload(p).len()).collect();
    assert_eq!(payloads, vec![5, 1448, 2000 - 1453]);
}

/// The server closed first and the client reused its port at once: the new
/// connection's SYN was not queued, but its ClientHello (at a new sequence
/// number) is split like any first ClientHello, within the flow timeout.
#[test]
fn a_new_connection_on_a_reused_tuple_is_split_again() {
    let hello = fixture("openssl_default.bin");
    let flow = V4::port(7300);
    let mut d = Driver::new(EngineConfig::default());
    assert_eq!(
        shape(&d.take(&flow.packet(1_000, PSH, &hello), 1)),
        "S S D0"
    );
    // A retransmission of the first hello is re-split, not restarted.
    assert_eq!(
        shape(&d.take(&flow.packet(1_000, PSH, &hello), 2)),
        "S S D1"
    );
    assert_eq!(
        shape(&d.take(&flow.packet(900_000, PSH, &hello), 3)),
        "S S D2"
    );
    let s = d.engine.stats();
    assert_eq!((s.flows, s.splits, s.resplits), (2, 2, 1));
    // Also after a flow that was passed as not TLS.
    let other = V4::port(7301);
    d.pass(&other.packet(5, PSH, b"GET / HTTP/1.1\r\n\r\n"), 4);
    assert_eq!(
        shape(&d.take(&other.packet(77_777, PSH, &hello), 5)),
        "S S D4"
    );
}

/// A second ClientHello right after the first record (a client answering a
/// HelloRetryRequest) is a later record of the same connection: it passes
/// untouched, whether it starts a packet or not.
#[test]
fn a_second_hello_after_the_first_record_is_not_split() {
    let hello = fixture("openssl_default.bin");
    let flow = V4::port(7400);
    let mut d = Driver::new(EngineConfig::default());
    assert_eq!(
        shape(&d.take(&flow.packet(1_000, PSH, &hello), 1)),
        "S S D0"
    );
    let next = 1_000 + u32::try_from(hello.len()).unwrap();
    d.pass(&flow.packet(next, PSH, &hello), 2);
    d.pass(&flow.packet(next + 6, PSH, &hello), 3); // after a ChangeCipherSpec record
    let s = d.engine.stats();
    assert_eq!((s.flows, s.splits), (1, 1));
}
