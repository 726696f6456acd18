"""The probe's decisions against a scripted network (no sockets)."""

from __future__ import annotations

from collections.abc import Callable

from govpass.probe.attempt import ALERT, FREEZE, OK, RST, TIMEOUT, Outcome
from govpass.probe.diagnose import ADDRESS_BLOCK, FROZEN, NOT_BLOCKED, SNI_BLOCK, diagnose
from govpass.probe.search import FIXED, UNFIXABLE, VARIANTS, Control, Searcher, Try
from govpass.probe.search import OK as VERDICT_OK
from govpass.strategy import DEFAULT_LADDER, Strategy

BLOCKED, ALLOWED, ADDR = "blocked.example", "allowed.example", "203.0.113.2"
Rule = Callable[[str, str, Strategy | None, str, str], bool]


class Net:
    """Answers attempts with ``rule(addr, sni, strategy, hello, version)``; logs them."""

    def __init__(self, rule: Rule, fail: str = TIMEOUT) -> None:
        self.rule = rule
        self.fail = fail
        self.log: list[tuple[str, Strategy | None, str, str]] = []

    def __call__(self, t: Try) -> Outcome:
        self.log.append((t.sni, t.strategy, t.hello, t.version))
        if self.rule(t.addr, t.sni, t.strategy, t.hello, t.version):
            return Outcome(OK, received=100 if t.fetch else 0)
        return Outcome(self.fail)


def searcher(net: Net, controls: tuple[Control, ...] = (Control(ALLOWED, ADDR),)) -> Searcher:
    return Searcher(net, DEFAULT_LADDER, tries=3, controls=controls, other_sni=ALLOWED)


def tspu(addr: str, sni: str, s: Strategy | None, hello: str, version: str) -> bool:
    return sni != BLOCKED or (s is not None and 1 <= s.chunk <= 2)


def test_diagnose_rules() -> None:
    ok, rst, alert = Outcome(OK), Outcome(RST), Outcome(ALERT)
    assert diagnose([ok, ok], []).block == NOT_BLOCKED
    assert diagnose([rst, rst], [ok, ok]).block == SNI_BLOCK
    assert diagnose([rst, rst], [alert, alert]).block == SNI_BLOCK  # a TLS server answered
    d = diagnose([rst, Outcome(TIMEOUT)], [Outcome(TIMEOUT)])
    assert d.block == ADDRESS_BLOCK and d.reason.startswith("address blocked")
    f = diagnose([ok, ok, Outcome(FREEZE, received=17 * 1024)], [])
    assert f.block == FROZEN and "freezes after 17 KB" in f.reason and "16-20 KB" in f.reason


def test_unblocked_host_is_ok_and_not_split() -> None:
    net = Net(lambda *a: True)
    res = searcher(net).run(ALLOWED, ADDR)
    assert res.verdict == VERDICT_OK and res.strategy is None
    assert all(s is None for _, s, _, _ in net.log)


def test_tspu_needs_a_tiny_first_segment() -> None:
    res = searcher(Net(tspu)).run(BLOCKED, ADDR)
    assert res.verdict == FIXED and res.strategy == Strategy(1)
    assert [t.result for t in res.tried] == ["works"]


def test_a_strategy_counts_only_when_every_variant_works_every_try() -> None:
    calls = {"n": 0}

    def flaky(addr: str, sni: str, s: Strategy | None, hello: str, version: str) -> bool:
        if sni != BLOCKED:
            return True
        if s == Strategy(1):
            calls["n"] += 1
            return calls["n"] != 7  # one failure among the tries
        if s == Strategy(2):
            return hello == "classic"  # the post-quantum-size hello fails
        return s == Strategy(5)

    net = Net(flaky)
    res = searcher(net).run(BLOCKED, ADDR)
    assert res.strategy == Strategy(5)
    assert [(t.strategy.label, t.result) for t in res.tried] == [
        ("1", "fails"), ("2", "fails"), ("5", "works"),
    ]  # fmt: skip
    variants_of_5 = {(h, v) for sni, s, h, v in net.log if s == Strategy(5) and sni == BLOCKED}
    assert variants_of_5 == set(VARIANTS)


def test_a_strategy_that_breaks_the_control_is_not_chosen() -> None:
    def picky(addr: str, sni: str, s: Strategy | None, hello: str, version: str) -> bool:
        small_first = s is not None and (s.chunk or 99) < 8
        if sni == ALLOWED:
            return not small_first  # this server resets first segments under 8 bytes
        return s is not None  # first-packet DPI: any split gets through

    res = searcher(Net(picky)).run(BLOCKED, ADDR)
    assert res.verdict == FIXED and res.strategy == Strategy(8)
    broke = [t.strategy.label for t in res.tried if t.result == "breaks-control"]
    assert broke == ["1", "2", "5"]


def test_only_control_breaking_strategies_is_unfixable() -> None:
    def only_tiny(addr: str, sni: str, s: Strategy | None, hello: str, version: str) -> bool:
        tiny = s is not None and 1 <= s.chunk <= 2
        return not tiny if sni == ALLOWED else tiny

    res = searcher(Net(only_tiny)).run(BLOCKED, ADDR)
    assert res.verdict == UNFIXABLE and "break an unblocked server" in res.reason


def test_reassembling_censor_is_unfixable() -> None:
    res = searcher(Net(lambda a, sni, *r: sni != BLOCKED)).run(BLOCKED, ADDR)
    assert res.verdict == UNFIXABLE
    assert res.reason == "every split-only strategy failed: the censor reassembles"
    assert len(res.tried) == len(DEFAULT_LADDER)


def test_address_block_skips_the_ladder() -> None:
    net = Net(lambda *a: False, fail=RST)
    res = searcher(net, controls=()).run(BLOCKED, ADDR)
    assert res.verdict == UNFIXABLE and res.reason == "address blocked"
    assert res.tried == [] and all(s is None for _, s, _, _ in net.log)


def test_residual_block_is_waited_out_and_bounded() -> None:
    """After a hit the whole address fails for a while (the GFW's residual block)."""
    state = {"blocked_for": 0}
    slept: list[float] = []

    def gfw(addr: str, sni: str, s: Strategy | None, hello: str, version: str) -> bool:
        if state["blocked_for"] > 0:
            state["blocked_for"] -= 1
            return False
        if sni == BLOCKED and s != Strategy(2):
            state["blocked_for"] = 3  # the next attempts fail whatever they send
            return False
        return True

    s = Searcher(Net(gfw), DEFAULT_LADDER, tries=1, other_sni=ALLOWED, sleep=slept.append)
    res = s.run(BLOCKED, ADDR)
    assert res.verdict == FIXED and res.strategy == Strategy(2)
    assert any(step == "residual" for step, _ in res.steps)
    assert slept and sum(slept) <= s.max_wait

    slept.clear()
    hit = {"yes": False}

    def never_clears(addr: str, sni: str, st: Strategy | None, hello: str, version: str) -> bool:
        if sni == BLOCKED and st is not None:
            hit["yes"] = True  # from the first split try on, the address stays blocked
        return sni != BLOCKED and not hit["yes"]

    always = Searcher(
        Net(never_clears),
        DEFAULT_LADDER,
        tries=1,
        other_sni=ALLOWED,
        max_wait=40,
        sleep=slept.append,
    )
    res = always.run(BLOCKED, ADDR)
    assert res.verdict == UNFIXABLE
    assert sum(slept) == 40  # bounded in all, not per strategy


def test_usable_controls_drop_blocked_ones() -> None:
    s = searcher(Net(lambda a, sni, *r: sni != BLOCKED))
    good, notes = s.usable_controls([Control(BLOCKED, ADDR), Control(ALLOWED, ADDR)])
    assert good == [Control(ALLOWED, ADDR)]
    assert notes and BLOCKED in notes[0]


def test_a_tls12_only_server_is_judged_on_tls12() -> None:
    """Its TLS 1.3 tries fail whatever the censor does: they must not sink every strategy."""

    def tls12_only(addr: str, sni: str, s: Strategy | None, hello: str, version: str) -> bool:
        return version != "1.3" and tspu(addr, sni, s, hello, version)

    s = searcher(Net(tls12_only, fail=ALERT), controls=())
    s.controls, _ = s.usable_controls([Control(ALLOWED, ADDR)])
    assert [v for _, v in s.controls[0].variants] == ["1.2", "1.2"]
    res = s.run(BLOCKED, ADDR)
    assert res.verdict == FIXED and res.strategy == Strategy(1), res
    assert any(step == "variants" and "TLS 1.2" in text for step, text in res.steps)
