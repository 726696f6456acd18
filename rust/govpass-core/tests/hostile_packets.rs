//! Packets an attacker or an odd stack may send: IPv6 headers that declare
//! no payload, retransmissions with flags or options the original lacked.
//! Whatever comes in, a generated packet carries only flags that make sense
//! for a piece of a stream and never exceeds max-seg-payload + 40 bytes.

mod common;

use common::*;
use govpass_core::engine::Disposition;
use govpass_core::{Action, EngineConfig};
use proptest::prelude::*;

const ISN: u32 = 5_000;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

fn v6() -> V6 {
    V6 {
        sport: 41000,
        dest_opts: false,
        options: Vec::new(),
    }
}

/// TCP options of `len` bytes (a multiple of 4): timestamps padded with NOPs.
fn options(len: usize) -> Vec<u8> {
    let mut o = if len >= 12 {
        ts_option(7, 9)
    } else {
        Vec::new()
    };
    o.resize(len, 1);
    o
}

#[test]
fn ipv6_payload_length_zero_passes_untouched() {
    let hello = fixture("chromium_sni_late.bin"); // 2000 bytes
    let mut d = Driver::default_cfg();
    let mut whole = v6().packet(ISN, PSH, &hello[..1538]);
    whole[4..6].copy_from_slice(&[0, 0]);
    // Whole, and cut short by the capture (600 of its bytes): the header
    // declares no payload, so nothing of it may be taken or replaced.
    d.pass(&whole, 1);
    d.pass(&whole[..600], 2);
    let st = d.engine.stats();
    assert_eq!((st.splits, st.segments, st.held_packets_now), (0, 0, 0));
    // A jumbo hop-by-hop option does not make it acceptable either.
    let body = v6().packet(ISN, PSH, &fixture("openssl_default.bin"));
    let mut jumbo = body[..40].to_vec();
    jumbo[4..6].copy_from_slice(&[0, 0]);
    jumbo[6] = 0;
    jumbo.extend_from_slice(&[6, 0, 0xc2, 4]);
    jumbo.extend_from_slice(&((8 + body.len() - 40) as u32).to_be_bytes());
    jumbo.extend_from_slice(&body[40..]);
    d.pass(&jumbo, 3);
    assert_eq!(d.engine.stats().splits, 0);
}

#[test]
fn retransmission_with_rst_urg_or_syn_passes_untouched() {
    let hello = fixture("openssl_default.bin");
    let flow = V4::default();
    for (i, extra) in [RST, URG, SYN, RST | URG, FIN | RST]
        .into_iter()
        .enumerate()
    {
        let mut d = Driver::default_cfg();
        let flow = V4::port(flow.sport + i as u16);
        assert_eq!(shape(&d.take(&flow.packet(ISN, PSH, &hello), 0)), "S S D0");
        d.pass(&flow.packet(ISN, PSH | extra, &hello), 200_000);
        assert_eq!(d.engine.stats().resplits, 0, "flags {extra:#x}");
    }
}

#[test]
fn hello_with_urgent_data_fails_open() {
    let hello = fixture("chromium_sni_late.bin");
    let mut d = Driver::default_cfg();
    d.pass(&V4::port(42000).packet(ISN, PSH | URG, &hello[..517]), 0);
    // Urgent data in a later packet of a record being collected.
    let flow = V4::port(42001);
    assert!(d.take(&flow.packet(ISN, 0, &hello[..1000]), 1).is_empty());
    let (disp, out) = d.feed(&flow.packet(ISN + 1000, PSH | URG, &hello[1000..]), 2);
    assert_eq!(disp, Disposition::Taken);
    assert_eq!(shape(&out), "R1 R2");
    assert_eq!(d.engine.stats().splits, 0);
    d.assert_all_fated();
}

#[test]
fn retransmission_with_fin_keeps_fin_on_the_last_piece() {
    let hello = fixture("openssl_default.bin");
    let mut d = Driver::default_cfg();
    d.take(&V4::default().packet(ISN, PSH, &hello), 0);
    let out = d.take(&V4::default().packet(ISN, PSH | FIN, &hello), 200_000);
    let f: Vec<u8> = sends(&out).iter().map(|p| view(p).flags).collect();
    assert_eq!(f, vec![ACK, ACK | PSH | FIN]);
    assert_eq!(d.engine.stats().flows_now, 0, "FIN ends the flow");
}

#[test]
fn resplit_segments_keep_psh_last_and_cwr_first() {
    let hello = fixture("openssl_default.bin");
    let flow = V4::default();
    let mut d = Driver::default_cfg();
    d.take(&flow.packet(ISN, PSH, &hello), 0);
    let out = d.take(&flow.packet(ISN, PSH | ECE | CWR, &hello), 200_000);
    let f: Vec<u8> = sends(&out).iter().map(|p| view(p).flags).collect();
    assert_eq!(f, vec![ACK | ECE | CWR, ACK | ECE | PSH]);
}

#[test]
fn retransmission_with_longer_options_stays_within_the_bound() {
    let hello = fixture("chromium_sni_late.bin");
    let mut d = Driver::default_cfg();
    let plain = V4::default();
    d.take(&plain.packet(ISN, 0, &hello[..1460]), 0);
    d.take(&plain.packet(ISN + 1460, PSH, &hello[1460..]), 1);
    // The same bytes again in one packet with 40 bytes of TCP options.
    let long = plain.with_options(options(40));
    let out = d.take(&long.packet(ISN, PSH, &hello), 300_000);
    let sizes: Vec<usize> = sends(&out).iter().map(|p| p.len()).collect();
    assert!(sizes.iter().all(|s| *s <= 1500), "{sizes:?}");
    let total: usize = sends(&out).iter().map(|p| payload(p).len()).sum();
    assert_eq!(total, hello.len());
}

/// Every packet in `out` is within the bound and carries only flags that a
/// piece of a stream may carry; PSH and FIN only on the last of a run.
fn check_sends(out: &[Action<u32>], max_seg_payload: u32) -> Result<(), TestCaseError> {
    let sent = sends(out);
    for (i, p) in sent.iter().enumerate() {
        prop_assert!(
            p.len() <= max_seg_payload as usize + 40,
            "packet of {} bytes (limit {})",
            p.len(),
            max_seg_payload + 40
        );
        let f = view(p).flags;
        prop_assert_eq!(f & (SYN | RST | URG), 0, "flags {:#x}", f);
        prop_assert!(f & ACK != 0);
        let last = i + 1 == sent.len();
        prop_assert!(last || f & FIN == 0, "FIN before the last segment");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A first record over one or two packets, then retransmissions with
    /// other option lengths, flags and packet boundaries: no generated
    /// packet exceeds max-seg-payload + 40.
    #[test]
    fn every_generated_packet_fits_max_seg_payload_plus_40(
        ipv6 in any::<bool>(),
        max_seg_payload in prop_oneof![Just(1460u32), 40u32..1600],
        first_opts in 0usize..=10,
        first_cut in 0usize..2000,
        retrans in proptest::collection::vec(
            (0usize..=10, 0usize..2000, 1usize..2000, any::<u8>()), 1..5),
    ) {
        let hello = fixture("chromium_sni_late.bin");
        let cfg = EngineConfig { max_seg_payload, ..EngineConfig::default() };
        let mut d = Driver::new(cfg);
        let packet = |opts: usize, seq: u32, flags: u8, bytes: &[u8]| {
            if ipv6 {
                V6 { options: options(opts * 4), ..v6() }.packet(seq, flags, bytes)
            } else {
                V4::default().with_options(options(opts * 4)).packet(seq, flags, bytes)
            }
        };
        let mut now = 0;
        let pieces: Vec<(usize, usize)> = if first_cut == 0 {
            vec![(0, hello.len())]
        } else {
            vec![(0, first_cut), (first_cut, hello.len())]
        };
        for (a, b) in pieces {
            let flags = if b == hello.len() { PSH } else { 0 };
            let (_, out) = d.feed(&packet(first_opts, ISN + a as u32, flags, &hello[a..b]), now);
            check_sends(&out, max_seg_payload)?;
            now += 1;
        }
        for (opts, start, len, flags) in retrans {
            let end = (start + len).min(hello.len());
            let flags = flags & (PSH | FIN | RST | URG | ECE | CWR);
            let (_, out) = d.feed(&packet(opts, ISN + start as u32, flags, &hello[start..end]), now);
            check_sends(&out, max_seg_payload)?;
            now += 100_000;
        }
        d.release_all();
        d.assert_all_fated();
    }
}
