"""One host from start to verdict: diagnosis, then the ladder, then the control check.

Everything that touches the network goes through a :data:`Tryer` (one
:class:`Try`: address, name, strategy or None for unsplit, hello size, TLS version,
bytes to fetch), so the logic here runs in unit tests against a scripted network.

A strategy counts only when every variant (classic and post-quantum-size hello, TLS
1.3 and 1.2) works on every try, each on a fresh source port. A strategy that works
for the host is then tried against each control host (unblocked servers): if it breaks
one, it is reported and not chosen. Residual blocking (the GFW blocks the 3-tuple for
90-180 s after a hit): when a strategy fails, a canary (another name on the same
address, unsplit, which worked at the start) is tried; when it fails too, the probe
waits, bounded by ``max_wait`` in all, and tries the strategy again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from govpass.probe.attempt import (
    ANY_VERSION,
    CLASSIC,
    FETCH_BYTES,
    HELLO_SIZES,
    TLS_VERSIONS,
    Outcome,
)
from govpass.probe.diagnose import (
    ADDRESS_BLOCK,
    FROZEN,
    NOT_BLOCKED,
    Diagnosis,
    diagnose,
    summary,
)
from govpass.strategy import Strategy

OK, FIXED, UNFIXABLE = "ok", "fixed", "unfixable"
PENDING = "pending"  # diagnosed as blocked by name; the ladder decides
Variant = tuple[str, str]  # (hello size, TLS version)
VARIANTS: tuple[Variant, ...] = tuple((h, v) for v in TLS_VERSIONS for h in HELLO_SIZES)
RESIDUAL_STEP = 15.0  # seconds between canary checks while a residual block lasts


@dataclass(frozen=True)
class Try:
    """One attempt to make: ``strategy`` None is unsplit; ``version`` "any" lets the
    server pick TLS 1.2 or 1.3 (the unsplit diagnosis), the ladder names one."""

    addr: str
    sni: str
    strategy: Strategy | None = None
    hello: str = CLASSIC
    version: str = ANY_VERSION
    fetch: int = 0


Tryer = Callable[[Try], Outcome]


@dataclass(frozen=True)
class Control:
    """An unblocked host that candidate strategies must not break."""

    name: str
    addr: str
    variants: tuple[Variant, ...] = VARIANTS  # what it speaks unsplit


@dataclass
class Tried:
    strategy: Strategy
    result: str  # "works", "fails", "breaks-control"
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {
            "strategy": self.strategy.flags,
            "label": self.strategy.label,
            "result": self.result,
            "detail": self.detail,
        }


@dataclass
class HostResult:
    host: str
    addr: str | None
    verdict: str = UNFIXABLE
    strategy: Strategy | None = None
    reason: str = ""
    steps: list[tuple[str, str]] = field(default_factory=list)  # (step, what it saw)
    tried: list[Tried] = field(default_factory=list)

    def step(self, name: str, text: str) -> None:
        self.steps.append((name, text))


@dataclass
class Searcher:
    tryer: Tryer
    ladder: Sequence[Strategy]
    tries: int = 3
    controls: Sequence[Control] = ()
    other_sni: str = "www.example.com"
    max_wait: float = 180.0
    sleep: Callable[[float], None] = lambda s: None
    on_progress: Callable[[str], None] = lambda s: None
    _waited: float = 0.0

    # -- the steps ---------------------------------------------------------------------

    def unsplit(self, addr: str, sni: str, fetch: bool) -> list[Outcome]:
        """``tries`` unsplit handshakes, the last one also fetching."""
        out = []
        for i in range(self.tries):
            last = fetch and i == self.tries - 1
            out.append(self.tryer(Try(addr, sni, fetch=FETCH_BYTES if last else 0)))
        return out

    def works(
        self, addr: str, sni: str, strategy: Strategy, variants: Sequence[Variant] = VARIANTS
    ) -> tuple[bool, str]:
        """Every variant on every try; the first failure ends it."""
        for n in range(self.tries):
            for hello, version in variants:
                o = self.tryer(Try(addr, sni, strategy, hello, version))
                if not o.ok:
                    return False, f"{hello} TLS {version}, try {n + 1}: {o.kind} {o.detail}".strip()
        return True, f"{len(variants)} hello variants x {self.tries} tries ok"

    def speaks(self, addr: str, sni: str) -> tuple[Variant, ...]:
        """The variants a server handshakes unsplit (a TLS 1.2-only server fails every
        TLS 1.3 try whatever the censor does: those tries would prove nothing)."""
        ok = tuple(v for v in VARIANTS if self.tryer(Try(addr, sni, None, *v)).ok)
        return ok or VARIANTS

    def residual(self, addr: str) -> bool:
        """Whether the address itself fails now (a residual block); waits it out,
        bounded, and says whether it cleared."""
        if self.tryer(Try(addr, self.other_sni)).answered:
            return False
        while self._waited < self.max_wait:
            step = min(RESIDUAL_STEP, self.max_wait - self._waited)
            self.on_progress(f"residual block on {addr}: waiting {step:.0f} s")
            self.sleep(step)
            self._waited += step
            if self.tryer(Try(addr, self.other_sni)).answered:
                return True
        return False

    def check_controls(self, strategy: Strategy) -> str:
        """The first control host this strategy breaks, with how ("" if none)."""
        for c in self.controls:
            ok, detail = self.works(c.addr, c.name, strategy, c.variants)
            if not ok:
                return f"{c.name}: {detail}"
        return ""

    # -- the whole host -------------------------------------------------------------------

    def run(self, host: str, addr: str) -> HostResult:
        """Diagnosis, then (for a block by name) the ladder."""
        res, diag = self.diagnose(host, addr)
        return self.fix(res, diag) if res.verdict == PENDING else res

    def diagnose(self, host: str, addr: str) -> tuple[HostResult, Diagnosis]:
        """The unsplit steps. The verdict is final unless it is :data:`PENDING`
        (blocked by name: :meth:`fix` runs the ladder)."""
        res = HostResult(host, addr, PENDING)
        # Another name on the same address first: after the host's own blocked
        # attempts a residual block would make the address look blocked.
        self.on_progress(f"{host}: another name on {addr}")
        other = self.unsplit(addr, self.other_sni, fetch=False)
        self.on_progress(f"{host}: unsplit")
        base = self.unsplit(addr, host, fetch=True)
        res.step("other name", f"{self.other_sni} on the same address: {summary(other)}")
        diag = diagnose(base, other)
        res.step("unsplit", diag.reason)
        if diag.block == NOT_BLOCKED:
            res.verdict, res.reason = OK, diag.reason
        elif diag.block in (FROZEN, ADDRESS_BLOCK):
            self._unfixable(res, diag)
        return res, diag

    def fix(self, res: HostResult, diag: Diagnosis) -> HostResult:
        """The ladder for a host blocked by name (the address answers other names)."""
        host, addr = res.host, res.addr
        assert addr is not None
        variants = self.speaks(addr, self.other_sni)
        if variants != VARIANTS:
            shown = ", ".join(f"{h} TLS {v}" for h, v in variants)
            res.step("variants", f"the server speaks only {shown} here: tried those")
        for strategy in self.ladder:
            self.on_progress(f"{host}: {strategy.label}")
            ok, detail = self.works(addr, host, strategy, variants)
            if not ok and self.residual(addr):
                res.step("residual", f"residual block after {strategy.label}; waited, retrying")
                ok, detail = self.works(addr, host, strategy, variants)
            if not ok:
                res.tried.append(Tried(strategy, "fails", detail))
                continue
            broken = self.check_controls(strategy)
            if broken:
                res.tried.append(Tried(strategy, "breaks-control", f"breaks {broken}"))
                continue
            res.tried.append(Tried(strategy, "works", detail))
            res.verdict, res.strategy = FIXED, strategy
            res.reason = f"{diag.reason}; fixed by {strategy.flags}"
            res.step("ladder", f"{strategy.label} works")
            return res
        breaking = [t for t in res.tried if t.result == "breaks-control"]
        if breaking:
            why = (
                f"only strategies that break an unblocked server work "
                f"({', '.join(t.strategy.label for t in breaking)})"
            )
        else:
            why = "every split-only strategy failed: the censor reassembles"
        res.verdict, res.reason = UNFIXABLE, why
        res.step("ladder", why)
        return res

    def _unfixable(self, res: HostResult, diag: Diagnosis) -> HostResult:
        res.verdict = UNFIXABLE
        res.reason = diag.reason.split(":")[0] if diag.block == ADDRESS_BLOCK else diag.reason
        res.step("diagnosis", "splitting cannot help: " + diag.reason)
        return res

    def usable_controls(self, candidates: Sequence[Control]) -> tuple[list[Control], list[str]]:
        """Control hosts that work unsplit on every try; notes for the others."""
        good, notes = [], []
        for c in candidates:
            outcomes = self.unsplit(c.addr, c.name, fetch=False)
            if all(o.ok for o in outcomes):
                good.append(Control(c.name, c.addr, self.speaks(c.addr, c.name)))
            else:
                notes.append(f"control {c.name} fails unsplit itself; not used")
        return good, notes
