"""Client-controlled text made safe for a log line: a ``%0a`` in a path, or any control byte a
client sends, cannot forge or break a line. Pure (``re`` only)."""

from __future__ import annotations

import re

_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f-\xff]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(raw: bytes | str, limit: int = 200) -> str:
    """``raw`` for a log line: control and non-ASCII bytes escaped, at most ``limit`` chars.
    For what a refused client sent, whose encoding nothing vouches for."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    text = _CONTROL_BYTES.sub(lambda m: b"\\x%02x" % m.group()[0], data[:limit]).decode("ascii")
    return text + ("…" if len(data) > limit else "")


def escape_controls(text: str) -> str:
    """``text`` with its control characters (C0, DEL, C1) as ``\\xNN`` and the rest as it is:
    the access log's path, which the app has already decoded."""
    return _CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


__all__ = ["escape_controls", "printable"]
