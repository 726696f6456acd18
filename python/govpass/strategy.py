"""Split strategies as values: one first-segment size plus cut positions.

A :class:`Strategy` is what ``--split-chunk`` and ``--split-pos`` say, validated by
the same parsers as those settings (``govpass.config``) and by the engine itself.
It prints as ``govpass run`` flags and as the keys of a ``[[profile]]`` table, so
``govpass probe`` and the daemon's adaptive mode share one spelling.

The short text form used in ladders is ``CHUNK[,POS...]`` or ``POS[,POS...]``:
``"1"`` (first segment of 1 byte), ``"midsld"`` (chunk 0, one cut inside the
second-level name), ``"2,midsld"``, ``"1,sni+1"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from govpass._core import Profile
from govpass.errors import ConfigError
from govpass.settings import BY_NAME, DEFAULT_LADDER_TEXT

if TYPE_CHECKING:
    from govpass.config import Config


@dataclass(frozen=True)
class Strategy:
    """``chunk``: size of the first segment (0: positions only); ``positions``: cuts."""

    chunk: int
    positions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, chunk: Any, positions: Any = ()) -> Strategy:
        """From setting values (ints, strings, lists); a bad value raises the
        settings' own one-line :class:`ConfigError`."""
        size: int = BY_NAME["split-chunk"].parse(chunk)
        pos: tuple[str, ...] = BY_NAME["split-pos"].parse(
            list(positions) if isinstance(positions, tuple) else positions
        )
        Profile("strategy", split_chunk=size, split_positions=list(pos))
        return cls(size, pos)

    @classmethod
    def from_text(cls, text: str) -> Strategy:
        """``"2,midsld"`` / ``"1"`` / ``"sni+1"``: a leading number is the chunk."""
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ConfigError(
                f"invalid strategy {text!r} (accepted: CHUNK[,POS...] or POS[,POS...], "
                "e.g. 1, 2,midsld, sni+1)",
                field="strategy",
            )
        if items[0].isdigit():
            return cls.parse(items[0], items[1:])
        return cls.parse(0, items)

    @property
    def label(self) -> str:
        """The short text form (inverse of :meth:`from_text`)."""
        if self.chunk == 0:
            return ",".join(self.positions)
        return ",".join([str(self.chunk), *self.positions])

    def argv(self) -> list[str]:
        """``govpass run`` arguments that select this strategy."""
        out = ["--split-chunk", str(self.chunk)]
        if self.positions:
            out += ["--split-pos", ",".join(self.positions)]
        return out

    @property
    def flags(self) -> str:
        return " ".join(self.argv())

    def profile_keys(self) -> dict[str, int | list[str]]:
        """The keys of a ``[[profile]]`` table (or ``[govpass]``) for this strategy."""
        keys: dict[str, int | list[str]] = {"split-chunk": self.chunk}
        if self.positions:
            keys["split-pos"] = list(self.positions)
        return keys


def ladder(texts: Sequence[str] = DEFAULT_LADDER_TEXT) -> tuple[Strategy, ...]:
    """Strategies from their text forms, in order, without duplicates."""
    out: list[Strategy] = []
    for text in texts:
        s = Strategy.from_text(text)
        if s not in out:
            out.append(s)
    return tuple(out)


DEFAULT_LADDER: tuple[Strategy, ...] = ladder()
# What `govpass run` does without split flags.
DEFAULT = Strategy(BY_NAME["split-chunk"].default, BY_NAME["split-pos"].default)


def config_start(config: Config) -> Strategy:
    """The configured split: where --strategy auto starts every host."""
    return Strategy(config.split_chunk, tuple(config.split_pos))
