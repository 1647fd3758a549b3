"""Messages between serve and its page-fetch process (:mod:`.fetch`, :mod:`.fetch_worker`):
a length-prefixed pickle per message on a pipe that only the two of them hold."""

from __future__ import annotations

import os
import pickle
import struct
from typing import IO, Any, NamedTuple

_HEAD = struct.Struct("!Q")
#: response headers a page fetch hands back (lower case); the rest is never looked at
KEPT_HEADERS = ("content-type", "etag", "last-modified")


class Fetched(NamedTuple):
    """An upstream page as fetched: status, final URL (after redirects), the headers in
    :data:`KEPT_HEADERS` that were sent, and the body (decoded, within its cap)."""

    status: int
    url: str
    headers: dict[str, str]
    body: bytes


def write_frame(fd: int, message: Any) -> None:
    """Write one message to ``fd`` whole (blocking)."""
    data = pickle.dumps(message, protocol=5)
    view = memoryview(_HEAD.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(stream: IO[bytes]) -> Any:
    """The next message from ``stream``, or None at its end (the other side is gone)."""
    head = stream.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    (size,) = _HEAD.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


__all__ = ["KEPT_HEADERS", "Fetched", "read_frame", "write_frame"]
