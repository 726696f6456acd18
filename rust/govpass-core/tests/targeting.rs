//! Profiles through the engine: list mode, pass profiles, per-profile
//! strategies, and auto-learning verdicts.

mod common;

use std::sync::Arc;

use common::*;
use govpass_core::engine::Disposition;
use govpass_core::targeting::{HostSet, IpSet, Profile, ProfileAction, Strategy};
use govpass_core::{Action, EngineConfig, SplitPos};

const ISN: u32 = 7_000;

fn split(chunk: u32, positions: Vec<SplitPos>) -> ProfileAction {
    ProfileAction::Split(Strategy { chunk, positions })
}

fn hosts(names: &[&str]) -> Vec<Arc<HostSet>> {
    vec![Arc::new(HostSet::parse(names.iter().copied()).unwrap())]
}

fn driver(profiles: Vec<Profile>) -> Driver {
    let mut d = Driver::new(EngineConfig::default());
    d.engine.set_profiles(profiles).unwrap();
    d
}

fn list_mode() -> Vec<Profile> {
    let mut listed = Profile::catch_all("blocked", split(5, vec![]));
    listed.hosts = hosts(&["blocked.example", "co.uk"]);
    vec![listed, Profile::catch_all("rest", ProfileAction::Pass)]
}

#[test]
fn list_mode_splits_listed_names_only() {
    let mut d = driver(list_mode());
    let out = d.take(
        &V4::port(1000).packet(ISN, PSH, &fixture("openssl_default.bin")),
        1,
    );
    assert_eq!(shape(&out), "S S D0");
    let unlisted = fixture("openssl_single_label.bin"); // SNI "intranet"
    let out = d.take(&V4::port(1001).packet(ISN, PSH, &unlisted), 2);
    assert_eq!(shape(&out), "R1");
    let out = d.take(
        &V4::port(1002).packet(ISN, PSH, &fixture("openssl_no_sni.bin")),
        3,
    );
    assert_eq!(shape(&out), "R2");
    let out = d.take(
        &V4::port(1003).packet(ISN, PSH, &fixture("openssl_co_uk.bin")),
        4,
    );
    assert_eq!(shape(&out), "S S D3");
    let s = d.engine.stats();
    assert_eq!((s.splits, s.profile_pass), (2, 2));
    d.assert_all_fated();
}

#[test]
fn list_decision_waits_for_a_hello_spanning_two_packets() {
    let mut d = driver(list_mode());
    let hello = fixture("chromium_sni_late.bin"); // SNI past byte 1460
    let v4 = V4::port(2000);
    let out = d.take(&v4.packet(ISN, 0, &hello[..1448]), 1);
    assert!(out.is_empty());
    let out = d.take(&v4.packet(ISN + 1448, PSH, &hello[1448..]), 2);
    assert_eq!(shape(&out), "S S S D0 D1");
    d.assert_all_fated();
}

#[test]
fn pass_profile_by_address_is_decided_without_collecting() {
    let mut local = Profile::catch_all("local", ProfileAction::Pass);
    local.ips = vec![Arc::new(IpSet::parse(["203.0.113.0/24"]).unwrap())];
    let mut d = driver(vec![local, Profile::catch_all("rest", split(5, vec![]))]);
    let hello = fixture("chromium_sni_late.bin");
    d.pass(&V4::port(3000).packet(ISN, 0, &hello[..1448]), 1);
    d.pass(&V4::port(3000).packet(ISN + 1448, PSH, &hello[1448..]), 2);
    let other = V4 {
        dst: [198, 51, 100, 77],
        ..V4::port(3001)
    };
    assert_eq!(
        shape(&d.take(&other.packet(ISN, PSH, &fixture("openssl_default.bin")), 3)),
        "S S D2"
    );
    assert_eq!(d.engine.stats().profile_pass, 1);
}

#[test]
fn each_profile_cuts_with_its_own_strategy() {
    let mut a = Profile::catch_all("a", split(2, vec![SplitPos::MidSld(0)]));
    a.hosts = hosts(&["blocked.example"]);
    let mut d = driver(vec![a, Profile::catch_all("b", split(9, vec![]))]);
    let hello = fixture("openssl_default.bin"); // "blocked.example" at 127: sld "blocked"
    let out = d.take(&V4::port(4000).packet(ISN, PSH, &hello), 1);
    let sizes: Vec<usize> = sends(&out).iter().map(|p| payload(p).len()).collect();
    assert_eq!(sizes, vec![2, 128, hello.len() - 130]);
    let out = d.take(
        &V4::port(4001).packet(ISN, PSH, &fixture("openssl_co_uk.bin")),
        2,
    );
    let sizes: Vec<usize> = sends(&out).iter().map(|p| payload(p).len()).collect();
    assert_eq!(sizes[0], 9);
}

fn auto_profiles() -> Vec<Profile> {
    let mut auto = Profile::catch_all("auto", split(5, vec![]));
    auto.auto = true;
    auto.hosts = hosts(&["learned.example"]);
    vec![auto, Profile::catch_all("rest", ProfileAction::Pass)]
}

#[test]
fn auto_profile_reports_a_retransmitted_hello_as_a_failure() {
    let mut d = driver(auto_profiles());
    let pkt = V4::port(5000).packet(ISN, PSH, &fixture("openssl_default.bin"));
    assert_eq!(shape(&d.take(&pkt, 1)), "R0");
    assert_eq!(d.engine.stats().watched, 1);
    d.pass(&pkt, 2);
    d.pass(&pkt, 3);
    assert!(d.engine.take_events().is_empty());
    d.pass(&pkt, 4);
    let events = d.engine.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].host, "blocked.example");
    assert_eq!(events[0].profile, "auto");
    assert!(events[0].failed);
    d.pass(&pkt, 5); // no second verdict for the same flow
    assert!(d.engine.take_events().is_empty());
}

fn reply(of: &V4) -> V4 {
    V4 {
        src: of.dst,
        dst: of.src,
        sport: of.dport,
        dport: of.sport,
        ..of.clone()
    }
}

#[test]
fn auto_profile_reads_inbound_rst_and_data() {
    let mut d = driver(auto_profiles());
    let hello = fixture("openssl_default.bin");
    let blocked = V4::port(5100);
    d.take(&blocked.packet(ISN, PSH, &hello), 1);
    d.pass(&reply(&blocked).packet(900, RST, b""), 2);
    let ok = V4::port(5101);
    d.take(&ok.packet(ISN, PSH, &hello), 3);
    d.pass(&reply(&ok).packet(900, PSH, &[0x16, 3, 3, 0, 1, 2]), 4);
    let events = d.engine.take_events();
    let verdicts: Vec<bool> = events.iter().map(|e| e.failed).collect();
    assert_eq!(verdicts, vec![true, false]);
    let s = d.engine.stats();
    assert_eq!((s.auto_failures, s.auto_successes), (1, 1));
}

#[test]
fn learned_names_are_split_and_profiles_can_change_at_run_time() {
    let mut d = driver(auto_profiles());
    let pkt = |port| V4::port(port).packet(ISN, PSH, &fixture("openssl_default.bin"));
    assert_eq!(shape(&d.take(&pkt(6000), 1)), "R0");
    let mut learned = auto_profiles();
    learned[0].hosts = hosts(&["learned.example", "blocked.example"]);
    d.engine.set_profiles(learned).unwrap();
    let (disp, out) = d.feed(&pkt(6001), 2);
    assert_eq!(disp, Disposition::Taken);
    assert!(
        matches!(out.last(), Some(Action::Drop(1))),
        "{}",
        shape(&out)
    );
}

#[test]
fn invalid_profile_strategy_is_rejected() {
    let mut d = Driver::new(EngineConfig::default());
    let err = d
        .engine
        .set_profiles(vec![Profile::catch_all("x", split(0, vec![]))])
        .unwrap_err();
    assert_eq!(err.field, "split-chunk");
}

fn watching(action: ProfileAction) -> Vec<Profile> {
    let mut p = Profile::catch_all("strategy:1", action);
    p.watch = true;
    vec![p]
}

#[test]
fn watching_profile_reports_verdicts_for_flows_it_splits() {
    let mut d = driver(watching(split(1, vec![])));
    let hello = fixture("openssl_default.bin");
    let blocked = V4::port(7000);
    let out = d.take(&blocked.packet(ISN, PSH, &hello), 1);
    assert_eq!(shape(&out), "S S D0");
    assert_eq!(d.engine.stats().watched, 1);
    // Retransmissions are split again and counted.
    for t in 2..=4 {
        let (_, out) = d.feed(&blocked.packet(ISN, PSH, &hello), t);
        assert!(!sends(&out).is_empty());
    }
    let events = d.engine.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].profile.as_str(), events[0].host.as_str()),
        ("strategy:1", "blocked.example")
    );
    assert!(events[0].failed);
    let ok = V4::port(7001);
    d.take(&ok.packet(ISN, PSH, &hello), 5);
    d.pass(&reply(&ok).packet(900, PSH, &[0x16, 3, 3, 0, 1, 2]), 6);
    d.pass(&reply(&ok).packet(906, PSH, &[0x16, 3, 3, 0, 1, 2]), 7);
    let events = d.engine.take_events();
    assert_eq!(
        events.iter().map(|e| e.failed).collect::<Vec<_>>(),
        vec![false]
    );
}

#[test]
fn a_verdict_names_the_profile_the_flow_started_under() {
    // The learner swaps the profiles while flows of the old ones are still
    // watched (Chromium opens two connections at once): a verdict about one
    // of them names the old profile, not whichever now sits at its index.
    let mut d = driver(watching(split(1, vec![])));
    let hello = fixture("openssl_default.bin");
    let old = V4::port(7050);
    d.take(&old.packet(ISN, PSH, &hello), 1);
    let mut moved = Profile::catch_all("strategy:2,midsld", split(2, vec![SplitPos::MidSld(0)]));
    moved.watch = true;
    d.engine.set_profiles(vec![moved]).unwrap();
    d.pass(&reply(&old).packet(900, RST, b""), 2);
    let events = d.engine.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].profile, "strategy:1");
    let new = V4::port(7051);
    d.take(&new.packet(ISN, PSH, &hello), 3);
    d.pass(&reply(&new).packet(900, RST, b""), 4);
    assert_eq!(d.engine.take_events()[0].profile, "strategy:2,midsld");
}

#[test]
fn watching_pass_profile_watches_unsplit_flows() {
    let mut d = driver(watching(ProfileAction::Pass));
    let hello = fixture("openssl_default.bin");
    let flow = V4::port(7100);
    assert_eq!(shape(&d.take(&flow.packet(ISN, PSH, &hello), 1)), "R0");
    d.pass(&reply(&flow).packet(900, RST, b""), 2);
    let events = d.engine.take_events();
    assert_eq!(events.len(), 1);
    assert!(events[0].failed);
}

const SECOND: u64 = 1_000_000;

fn silence_driver(profiles: Vec<Profile>, cfg: EngineConfig) -> Driver {
    let mut d = Driver::new(cfg);
    d.engine.set_profiles(profiles).unwrap();
    d
}

fn verdicts(d: &mut Driver) -> Vec<bool> {
    d.engine.take_events().iter().map(|e| e.failed).collect()
}

#[test]
fn silence_after_a_split_hello_is_one_failure() {
    let mut d = driver(watching(split(1, vec![])));
    let flow = V4::port(8000);
    d.take(
        &flow.packet(ISN, PSH, &fixture("openssl_default.bin")),
        SECOND,
    );
    // The censor dropped the second segment: the first was acknowledged,
    // nothing else comes back.
    d.pass(&reply(&flow).packet(900, ACK, b""), SECOND + 10);
    d.expire(SECOND + 4 * SECOND - 1);
    assert!(verdicts(&mut d).is_empty());
    d.expire(SECOND + 4 * SECOND);
    let events = d.engine.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].host, "blocked.example");
    assert!(events[0].failed);
    let s = d.engine.stats();
    assert_eq!((s.auto_failures, s.auto_silent), (1, 1));
    d.expire(20 * SECOND);
    // Reported once; data after the verdict changes nothing.
    d.pass(
        &reply(&flow).packet(900, PSH, &[0x16, 3, 3, 0, 1, 2]),
        21 * SECOND,
    );
    assert!(verdicts(&mut d).is_empty());
}

#[test]
fn server_data_before_the_silence_ends_cancels_it() {
    let mut d = driver(watching(split(1, vec![])));
    let flow = V4::port(8100);
    d.take(
        &flow.packet(ISN, PSH, &fixture("openssl_default.bin")),
        SECOND,
    );
    d.pass(
        &reply(&flow).packet(900, PSH, &[0x16, 3, 3, 0, 1, 2]),
        4 * SECOND,
    );
    d.expire(30 * SECOND);
    assert_eq!(verdicts(&mut d), vec![false]);
    assert_eq!(d.engine.stats().auto_silent, 0);
}

#[test]
fn silence_counts_for_flows_passed_unsplit_and_can_be_turned_off() {
    let hello = fixture("openssl_default.bin");
    let mut d = driver(auto_profiles());
    assert_eq!(
        shape(&d.take(&V4::port(8200).packet(ISN, PSH, &hello), SECOND)),
        "R0"
    );
    d.expire(5 * SECOND);
    assert_eq!(verdicts(&mut d), vec![true]);
    let off = EngineConfig {
        auto_silence_us: 0,
        ..EngineConfig::default()
    };
    let mut d = silence_driver(auto_profiles(), off);
    d.take(&V4::port(8201).packet(ISN, PSH, &hello), SECOND);
    d.expire(25 * SECOND);
    assert!(verdicts(&mut d).is_empty());
    assert_eq!(d.engine.stats().auto_silent, 0);
}

#[test]
fn silence_longer_than_the_flow_timeout_ends_with_it() {
    let cfg = EngineConfig {
        flow_timeout_us: SECOND,
        auto_silence_us: 10 * SECOND,
        ..EngineConfig::default()
    };
    let mut d = silence_driver(watching(split(1, vec![])), cfg);
    d.take(
        &V4::port(8300).packet(ISN, PSH, &fixture("openssl_default.bin")),
        SECOND,
    );
    d.expire(2 * SECOND - 1);
    assert!(verdicts(&mut d).is_empty());
    d.expire(2 * SECOND);
    assert_eq!(verdicts(&mut d), vec![true]);
}

#[test]
fn a_collected_hello_starts_its_silence_when_it_goes_out() {
    let mut d = driver(watching(split(1, vec![])));
    let hello = fixture("chromium_sni_late.bin");
    let flow = V4::port(8400);
    d.take(&flow.packet(ISN, 0, &hello[..1448]), SECOND);
    let sent = SECOND + 200_000;
    d.take(&flow.packet(ISN + 1448, PSH, &hello[1448..]), sent);
    d.expire(sent + 4 * SECOND - 1);
    assert!(verdicts(&mut d).is_empty());
    d.expire(sent + 4 * SECOND);
    assert_eq!(verdicts(&mut d), vec![true]);
}

#[test]
fn resending_a_later_part_of_a_split_hello_counts_as_retransmission() {
    let mut d = driver(watching(split(1, vec![])));
    let hello = fixture("openssl_default.bin");
    let flow = V4::port(8500);
    d.take(&flow.packet(ISN, PSH, &hello), 1);
    // The first byte was acknowledged; the kernel resends the rest.
    for t in 2..=3 {
        d.feed(&flow.packet(ISN + 1, PSH, &hello[1..]), t);
        assert!(verdicts(&mut d).is_empty());
    }
    d.feed(&flow.packet(ISN + 1, PSH, &hello[1..]), 4);
    assert_eq!(verdicts(&mut d), vec![true]);
    assert_eq!(d.engine.stats().auto_silent, 0);
    // Data after the record is not a retransmission.
    let other = V4::port(8501);
    d.take(&other.packet(ISN, PSH, &hello), 5);
    let next = ISN + hello.len() as u32;
    for t in 6..=9 {
        d.feed(&other.packet(next, PSH, &[0x17, 3, 3, 0, 1, 0]), t);
    }
    assert!(verdicts(&mut d).is_empty());
}

#[test]
fn a_record_resent_in_two_packets_counts_once_per_round() {
    let mut d = driver(watching(split(1, vec![])));
    let hello = fixture("chromium_sni_late.bin");
    let flow = V4::port(8600);
    let (head, tail) = (
        flow.packet(ISN, 0, &hello[..1448]),
        flow.packet(ISN + 1448, PSH, &hello[1448..]),
    );
    d.take(&head, 1);
    d.take(&tail, 2);
    for t in [3, 5] {
        d.feed(&head, t);
        d.feed(&tail, t + 1);
    }
    assert!(verdicts(&mut d).is_empty());
    d.feed(&head, 7);
    assert_eq!(verdicts(&mut d), vec![true]);
}

#[test]
fn silence_verdicts_are_worked_off_within_the_budget() {
    use govpass_core::engine::{COLLECT_BUDGET, EXPIRE_BUDGET, SILENCE_BUDGET};
    let mut d = driver(auto_profiles());
    let hello = fixture("openssl_default.bin");
    let n = SILENCE_BUDGET + 7;
    for i in 0..n {
        let flow = V4::port(10_000 + i as u16);
        d.take(&flow.packet(ISN, PSH, &hello), SECOND);
    }
    d.expire(5 * SECOND);
    let bound = (COLLECT_BUDGET + SILENCE_BUDGET + EXPIRE_BUDGET) as u64;
    assert!(d.engine.expire_visits() <= bound);
    assert_eq!(d.engine.take_events().len(), SILENCE_BUDGET);
    d.expire(5 * SECOND + 1);
    assert_eq!(d.engine.take_events().len(), 7);
    assert_eq!(d.engine.stats().auto_silent, n as u64);
}

#[test]
fn resending_the_rest_of_a_split_hello_counts_as_a_failure() {
    // A censor that drops only the segment with the name: the server acknowledges
    // the first segment, and the stack resends the hello from byte 5 on.
    let mut d = driver(watching(split(5, vec![])));
    let hello = fixture("openssl_default.bin");
    let flow = V4::port(7200);
    assert_eq!(shape(&d.take(&flow.packet(ISN, PSH, &hello), 1)), "S S D0");
    for t in 2..=4 {
        d.feed(&flow.packet(ISN + 5, PSH, &hello[5..]), t);
    }
    let events = d.engine.take_events();
    assert_eq!(events.len(), 1);
    assert!(events[0].failed);
}

#[test]
fn data_after_the_hello_is_not_a_retransmission() {
    let mut d = driver(watching(split(5, vec![])));
    let hello = fixture("openssl_default.bin");
    let flow = V4::port(7201);
    d.take(&flow.packet(ISN, PSH, &hello), 1);
    let after = ISN + hello.len() as u32;
    for t in 2..=5 {
        d.feed(&flow.packet(after, PSH, b"GET / HTTP/1.1\r\n\r\n"), t);
    }
    assert!(d.engine.take_events().is_empty());
}
