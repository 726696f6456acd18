"""The --strategy auto learner: steps per host, unfixable hosts, the state file,
and the profiles workers build from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from govpass.strategy import Strategy, ladder
from govpass.strategy_learner import (
    DEFAULT_SCOPE,
    NEW,
    UNFIXABLE,
    ProfileMixer,
    StrategyBook,
    StrategyFeed,
    StrategyKeeper,
    StrategyLearner,
    build_profiles,
    default_part,
    load_learner,
    parse_scopes,
    parse_state,
    steps_of,
)

START = Strategy(5)
STEPS = steps_of(START, ladder(("1", "2", "5")))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def learner(**kw: object) -> tuple[StrategyLearner, list[str], Clock]:
    logs: list[str] = []
    clock = Clock()
    return StrategyLearner(STEPS, 600.0, logs.append, clock, **kw), logs, clock  # type: ignore[arg-type]


def fail(lr: StrategyLearner, host: str) -> bool:
    return lr.observe(lr.profile_of(host), host, True)


def ok(lr: StrategyLearner, host: str) -> bool:
    return lr.observe(lr.profile_of(host), host, False)


def test_steps_start_with_the_configured_split_then_no_split_without_duplicates() -> None:
    assert [s.label if s else None for s in STEPS] == ["5", None, "1", "2"]


def test_a_failing_host_climbs_the_ladder_and_a_success_keeps_its_step() -> None:
    lr, _, _ = learner()
    assert lr.profile_of("a.example") == NEW
    assert ok(lr, "a.example") is False
    assert lr.hosts == {}  # working with the configured split: nothing to keep
    assert fail(lr, "a.example")
    assert lr.profile_of("a.example") == "strategy:none"
    assert fail(lr, "a.example")
    assert lr.profile_of("a.example") == "strategy:1"
    assert ok(lr, "a.example") is False
    assert lr.profile_of("a.example") == "strategy:1"
    assert lr.counts() == {"1": 1}


def test_a_verdict_about_an_earlier_step_is_ignored() -> None:
    lr, _, _ = learner()
    fail(lr, "a.example")
    assert lr.observe(NEW, "a.example", True) is False  # a flow started before the change
    assert lr.profile_of("a.example") == "strategy:none"
    assert lr.stats()["strategy_stale"] == 1


def test_a_host_that_worked_unsplit_goes_back_to_no_split_when_a_split_fails() -> None:
    lr, _, _ = learner()
    fail(lr, "b.example")  # -> none
    ok(lr, "b.example")  # works unsplit
    lr.hosts["b.example"].step = 2  # later moved to a split (e.g. by a restart's state)
    assert fail(lr, "b.example")
    assert lr.profile_of("b.example") == "strategy:none"


def test_a_lucky_unsplit_pass_does_not_trap_the_host_between_none_and_one_split() -> None:
    """A name that straddled a packet boundary passed unsplit once; from then on no
    split fails as well: the host goes on up the ladder, not back and forth."""
    lr, _, _ = learner()
    fail(lr, "d.example")  # 5 -> none
    ok(lr, "d.example")  # a lucky pass unsplit
    fail(lr, "d.example")  # none -> 1
    assert lr.profile_of("d.example") == "strategy:1"
    assert fail(lr, "d.example")  # 1 -> 2: no split failed since the pass
    assert lr.profile_of("d.example") == "strategy:2"
    assert lr.hosts["d.example"].plain_ok is False


def test_back_at_no_split_a_failure_resumes_after_the_split_it_left() -> None:
    lr, _, _ = learner()
    fail(lr, "e.example")  # -> none
    ok(lr, "e.example")  # works unsplit
    lr.hosts["e.example"].step = 2  # later at "1" (e.g. a restart's state)
    fail(lr, "e.example")  # "1" fails: back to none
    assert lr.profile_of("e.example") == "strategy:none"
    fail(lr, "e.example")  # none fails as well: on after "1", not "1" again
    assert lr.profile_of("e.example") == "strategy:2"
    fail(lr, "e.example")
    assert lr.profile_of("e.example") == UNFIXABLE


def test_a_host_failing_everywhere_is_unfixable_for_a_while_and_logged_once() -> None:
    lr, logs, clock = learner()
    for _ in range(len(STEPS)):
        assert fail(lr, "c.example")
    assert lr.profile_of("c.example") == UNFIXABLE
    assert [m for m in logs if "c.example" in m and "unfixable" in m] != []
    n = len(logs)
    assert lr.observe(UNFIXABLE, "c.example", True) is False  # no thrashing
    assert fail(lr, "c.example") is False
    assert len(logs) == n
    assert lr.stats()["strategy_unfixable"] == 1
    clock.now += 599
    assert lr.expire() is False
    clock.now += 2
    assert lr.expire() is True
    assert lr.profile_of("c.example") == NEW


@pytest.mark.parametrize("bad", ["", "bad name.example", "x\x1b[31m.example", "a" * 300])
def test_invalid_host_names_are_never_kept(bad: str) -> None:
    lr, logs, _ = learner()
    assert lr.observe(NEW, bad, True) is False
    assert lr.hosts == {}
    assert lr.stats()["strategy_rejected"] == 1
    assert all("\x1b" not in m for m in logs)


def test_the_number_of_hosts_is_bounded() -> None:
    lr, _, _ = learner(max_hosts=3)
    for i in range(10):
        fail(lr, f"h{i}.example")
    assert len(lr.hosts) == 3


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    lr, _, _ = learner()
    fail(lr, "a.example")
    fail(lr, "a.example")
    for _ in range(len(STEPS)):
        fail(lr, "c.example")
    path = tmp_path / "strategies.json"
    lr.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    again, logs, _ = learner()
    load_learner(path, again, logs.append)
    assert again.profile_of("a.example") == "strategy:1"
    assert again.profile_of("c.example") == UNFIXABLE
    assert len(logs) == 1 and logs[0].startswith("strategy auto: 2 host(s) from")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"govpass": "strategies", "version": 99, "hosts": {}}',
        '{"other": "tool"}',
        "\xff\xfe",
    ],
)
def test_a_bad_or_foreign_state_file_is_ignored_with_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "strategies.json"
    path.write_bytes(b"\xff\xfe" if content == "\xff\xfe" else content.encode())
    lr, logs, _ = learner()
    load_learner(path, lr, logs.append)
    assert lr.hosts == {}
    assert len(logs) == 1 and logs[0].startswith("strategy auto: ignoring state file")


def test_a_symlinked_state_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"govpass": "strategies", "version": 1, "hosts": {}}))
    link = tmp_path / "strategies.json"
    link.symlink_to(target)
    lr, logs, _ = learner()
    load_learner(link, lr, logs.append)
    assert len(logs) == 1 and "ignoring" in logs[0]


def test_invalid_entries_of_a_state_file_are_skipped() -> None:
    data = {
        "govpass": "strategies",
        "version": 1,
        "hosts": {
            "good.example": {"strategy": "2,midsld", "plain_ok": True},
            "bad name": {"strategy": "1"},
            "UPPER.example": {"strategy": "1"},
            "x.example": {"strategy": "rm -rf /"},
            "y.example": {"strategy": "1", "unfixable_until": "soon"},
            "z.example": "1",
        },
    }
    assert parse_state(data) == {"good.example": ("2,midsld", True, None)}


def test_a_strategy_no_longer_in_the_ladder_is_dropped_on_load() -> None:
    lr, _, _ = learner()
    data = {"govpass": "strategies", "version": 1, "hosts": {"a.example": {"strategy": "8"}}}
    assert lr.load(data) == 0


def test_profiles_list_each_host_at_its_strategy_and_watch_it() -> None:
    hosts = {
        "a.example": ("1", False, None),
        "b.example": ("none", True, None),
        "c.example": ("5", False, 2000.0),
        "d.example": ("5", False, 10.0),  # its unfixable time is over
    }
    profiles = build_profiles(hosts, START, now=1000.0)
    names = [p.name for p in profiles]
    assert names == [UNFIXABLE, "strategy:1", "strategy:none", NEW]
    by = {p.name: p for p in profiles}
    assert by[UNFIXABLE].watch is False
    assert by["strategy:1"].watch and by["strategy:1"].action == "split"
    assert by["strategy:none"].action == "pass" and by["strategy:none"].watch
    assert by[NEW].watch and by[NEW].action == "split"


def test_feed_reloads_a_changed_state_file(tmp_path: Path) -> None:
    path = tmp_path / "strategies.json"
    applied: list[list[str]] = []
    mixer = ProfileMixer([default_part(START)], lambda ps: applied.append([p.name for p in ps]))
    feed = StrategyFeed(path, mixer.learned)
    feed.poll()
    feed.take()
    assert applied == [[NEW]]
    lr, _, _ = learner()
    fail(lr, "a.example")
    lr.save(path)
    feed.poll()
    feed.take()
    assert applied[-1] == ["strategy:none", NEW]
    feed.poll()
    feed.take()  # unchanged: nothing new
    assert len(applied) == 2
    path.write_text("garbage")
    feed.poll()
    feed.take()
    assert len(applied) == 2 and feed.failures == 1


def test_keeper_writes_on_change_and_takes_in_a_file_changed_from_outside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "strategies.json"
    logs: list[str] = []
    keeper = StrategyKeeper(path, {DEFAULT_SCOPE: START}, ladder(("1", "2")), 600.0, logs.append)
    assert path.exists() and parse_state(json.loads(path.read_text())) == {}
    assert "strategy auto: steps 5, none, 1, 2" in logs[-1]
    assert keeper.scopes() == {DEFAULT_SCOPE: {}}
    # A verdict about the configured split moves the host; the file says so at once.
    assert keeper.observe([(NEW, "a.example", True)])
    assert parse_state(json.loads(path.read_text()))["a.example"][0] == "none"
    assert keeper.scopes()[DEFAULT_SCOPE]["a.example"][0] == "none"
    assert not keeper.observe([(NEW, "a.example", True)])  # stale: an earlier step
    assert not keeper.tick()  # its own write is no outside change
    path.unlink()  # `govpass strategy clear`
    assert keeper.tick()
    assert keeper.scopes() == {DEFAULT_SCOPE: {}} and path.exists()
    assert keeper.stats()["counts"] == {}


# ------------------------------------------------------------- profiles and scopes

# What `--strategy auto` wrote before profiles could learn: one top-level "hosts".
OLD_STATE = (
    '{"govpass": "strategies", "hosts": {"a.example": {"strategy": "1"}, '
    '"b.example": {"plain_ok": true, "strategy": "none"}, '
    '"c.example": {"strategy": "5", "unfixable_until": 4000000000.0}}, "version": 1}\n'
)


def book(*scopes: str) -> StrategyBook:
    return StrategyBook({s: START for s in scopes}, ladder(("1", "2", "5")), 600.0, None, Clock())


def test_an_old_state_file_is_the_top_level_scope_and_is_written_back_alike(
    tmp_path: Path,
) -> None:
    path = tmp_path / "strategies.json"
    path.write_text(OLD_STATE)
    b = book(DEFAULT_SCOPE)
    load_learner(path, b)
    lr = b.learners[DEFAULT_SCOPE]
    assert lr.profile_of("a.example") == "strategy:1"
    assert lr.profile_of("b.example") == "strategy:none"
    assert lr.profile_of("c.example") == UNFIXABLE
    b.save(path)
    assert json.loads(path.read_text()) == json.loads(OLD_STATE)  # no "profiles" added
    assert parse_state(json.loads(path.read_text()))["a.example"] == ("1", False, None)


def test_auto_profiles_share_one_state_file_and_learn_apart(tmp_path: Path) -> None:
    b = book("eu", "ru")
    assert b.owns("ru:strategy:new") and not b.owns("strategy:new") and not b.owns("ru")
    assert b.observe("ru:strategy:new", "x.example", True)  # 5 failed: -> none
    assert b.observe("ru:strategy:none", "x.example", True)  # -> 1
    assert not b.observe("eu:strategy:none", "x.example", True)  # eu has not moved it: stale
    assert not b.observe("us:strategy:new", "x.example", True)  # no such auto profile
    assert b.learners["ru"].profile_of("x.example") == "ru:strategy:1"
    assert b.learners["eu"].profile_of("x.example") == "eu:strategy:new"
    assert b.counts() == {"ru:1": 1}
    assert b.stats()["strategy_stale"] == 1
    path = tmp_path / "strategies.json"
    b.save(path)
    data = json.loads(path.read_text())
    assert data["hosts"] == {} and data["profiles"] == {"ru": {"x.example": {"strategy": "1"}}}
    # Read back by a daemon whose only auto profile is eu: ru's hosts are kept as they are.
    again = book("eu")
    load_learner(path, again)
    again.save(path)
    assert json.loads(path.read_text())["profiles"]["ru"] == {"x.example": {"strategy": "1"}}


def test_profile_names_and_hosts_of_a_state_file_are_checked() -> None:
    data = {
        "govpass": "strategies",
        "version": 1,
        "hosts": {},
        "profiles": {
            "ru": {"x.example": {"strategy": "1"}, "bad name": {"strategy": "1"}},
            "bad:name": {"y.example": {"strategy": "1"}},
            "\x1b[31m": {"y.example": {"strategy": "1"}},
            "eu": "not a table",
        },
    }
    assert parse_scopes(data) == {DEFAULT_SCOPE: {}, "ru": {"x.example": ("1", False, None)}}


def _first_segment(profiles: list[Any], dst: str = "203.0.113.9") -> int | None:
    """Size of the first segment the engine sends for a one-packet hello of
    blocked.example to `dst`; None when it passes the hello whole."""
    from govpass import SEND, Engine
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    eng = Engine()
    eng.set_profiles(profiles)
    hello = (Path(__file__).parent / "fixtures" / "hellos" / "openssl_default.bin").read_bytes()
    pkt = IP(src="198.51.100.2", dst=dst) / TCP(sport=40000, dport=443, seq=1, flags="PA")
    actions = eng.process(bytes(pkt / Raw(hello)), 1000.0) or []
    sends = [a for a in actions if a.kind == SEND]
    return len(bytes(IP(sends[0].packet)[TCP].payload)) if sends else None


def test_an_auto_profile_applies_what_it_learned_within_its_own_filters() -> None:
    from govpass._core import HostList, IpSet
    from govpass.targeting import Part, ProfileSpec, engine_profiles

    ru = Part(
        ProfileSpec(name="ru", split_chunk=5, strategy="auto", state_key="ru"),
        {"hosts": [HostList(["blocked.example"])], "ips": [IpSet(["203.0.113.0/28"])]},
    )
    rest = Part(ProfileSpec(name="rest", split_chunk=3), {})
    learned = {
        "ru": {"blocked.example": ("1", False, None), "gone.example": ("2", False, None)},
        "eu": {"blocked.example": ("2", False, None)},  # another profile's: not ru's
    }
    profiles = engine_profiles([ru, rest], learned)
    # gone.example left ru's host list: its strategy no longer applies
    assert [p.name for p in profiles] == ["ru:strategy:1", "ru:strategy:new", "rest"]
    assert [p.watch for p in profiles] == [True, True, False]
    assert _first_segment(profiles) == 1  # learned by ru
    assert _first_segment(profiles, "203.0.113.200") == 3  # outside ru's addresses: rest
    assert _first_segment(engine_profiles([ru, rest])) == 5  # nothing learned yet
