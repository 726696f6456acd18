"""Text that came from a packet (or any other hostile source) made safe to show.

Two jobs, kept here so every place that turns untrusted bytes into text does it
the same way:

* :func:`host_name`: the name a ClientHello carries, accepted only when it is a
  DNS host name (ASCII letters, digits, hyphens and dots), so what govpass
  learns and writes to a list is always one well-formed list entry;
* :func:`text` / :func:`markup`: any string escaped for one log line, a
  terminal or a rich table: control characters (C0, DEL, C1: ESC, CR, LF, BEL
  included), bidi overrides and other invisible or unassigned code points come
  out as ``\\xNN`` / ``\\uNNNN``, and the length is bounded. Printable text,
  backslashes included, is left alone, so escaping twice changes nothing.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME = 253  # RFC 1035: 255 octets on the wire, 253 characters written out
MAX_LABEL = 63
DEFAULT_LIMIT = 200  # characters of one untrusted value in a log line or a cell
ELLIPSIS = "\u2026"

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)
# Categories never shown raw: controls, format characters (bidi overrides,
# zero-width joiners), surrogates, private use, unassigned, line/paragraph
# separators, and spaces other than the plain one (they pass for a space).
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def host_name(raw: str) -> str | None:
    """`raw` as a DNS host name (lower-cased, without a trailing dot), or None
    when it is not one: labels of 1-63 letters, digits and hyphens, not starting
    or ending with a hyphen, at most 253 characters in all."""
    name = raw.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME:
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def _escape_char(ch: str) -> str:
    if ch == " " or unicodedata.category(ch) not in _HIDDEN:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def text(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` (a str, or anything printable with str()) as one line of visible
    characters, at most `limit` long (cut ones end with an ellipsis)."""
    s = value if isinstance(value, str) else str(value)
    out: list[str] = []
    size = 0
    for ch in s:  # stops soon after `limit`: a 10 MB value costs no more than a short one
        piece = _escape_char(ch)
        out.append(piece)
        size += len(piece)
        if size > limit:
            break
    else:
        return "".join(out)
    while out and size > limit - 1:  # whole escapes only, then the ellipsis
        size -= len(out.pop())
    return "".join(out) + ELLIPSIS


def markup(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """:func:`text`, also safe inside rich markup (a cell, a caption, console.print)."""
    from rich.markup import escape

    return escape(text(value, limit))


def quoted(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """:func:`text` in quotes, for naming a rejected value in a message."""
    return f'"{text(value, limit)}"'
