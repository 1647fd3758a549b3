"""The client process of :func:`harness.clients.drain`: ``python -S bench/harness/sink.py sink
URL ...`` (standard library only, so that ``-S`` keeps its start-up small)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time

#: the sinks a client process can use (curl is its own process)
PY_SINKS = ("trunc", "splice", "recv")
_SINK_CL = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")


def sink_fetch(url: str, count: int, *, sink: str, fresh: bool, start: float,
               timeout: float) -> dict:
    """Client side of :func:`drain` (runs in its own process): ``count`` GETs of ``url``, on
    a new connection each (``fresh``) or on one keep-alive connection, bodies discarded by
    ``sink``. Timed from ``start`` (CLOCK_MONOTONIC, shared by all client processes) to the
    last byte; CPU = this process's utime+stime over the same span (``os.times``)."""
    import fcntl
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    req = (f"GET {u.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-sink\r\n"
           "Accept-Encoding: identity\r\n\r\n").encode()
    step = (4 << 20) if sink == "trunc" else (1 << 20)
    buf = memoryview(bytearray(step))
    devnull = os.open(os.devnull, os.O_WRONLY)
    rd, wr = os.pipe()
    with contextlib.suppress(OSError):  # F_SETPIPE_SZ: a 1 MiB pipe, fewer splice() calls
        fcntl.fcntl(wr, 1031, 1 << 20)
    statuses: list[int] = []
    total = calls = connections = 0
    sock: socket.socket | None = None
    deadline = start + timeout
    while time.monotonic() < start:
        time.sleep(min(0.005, max(0.0, start - time.monotonic())))
    c0, t0 = os.times(), time.monotonic()
    for _ in range(count):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: over {timeout}s")
        if sock is None or fresh:
            if sock is not None:
                sock.close()
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.settimeout(None)  # blocking (splice needs it); the parent enforces the timeout
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections += 1
        sock.sendall(req)
        head = _read_head(sock)
        statuses.append(int(head.split(b" ", 2)[1]))
        m = _SINK_CL.search(head)
        if m is None:
            raise ValueError(f"no Content-Length in {head[:300]!r}")
        n, k = _discard(sock, int(m.group(1)), sink, buf, (rd, wr, devnull))
        total += n
        calls += k
    t1, c1 = time.monotonic(), os.times()
    if sock is not None:
        sock.close()
    return {"bytes": total, "start": t0, "end": t1, "statuses": statuses, "calls": calls,
            "connections": connections, "cpu": (c1.user + c1.system) - (c0.user + c0.system)}


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:  # peek, so that no body byte is read here
        peek = sock.recv(4096, socket.MSG_PEEK)
        if not peek:
            raise ConnectionError("connection closed before the headers ended")
        end = (head + peek).find(b"\r\n\r\n")
        head += sock.recv(len(peek) if end < 0 else end + 4 - len(head))
    return head


def _discard(sock: socket.socket, left: int, sink: str, buf: memoryview,
             pipe: tuple[int, int, int]) -> tuple[int, int]:
    """Drop ``left`` body bytes by ``sink``; (bytes, calls)."""
    rd, wr, devnull = pipe
    fd, step, flags = sock.fileno(), len(buf), socket.MSG_TRUNC | socket.MSG_WAITALL
    total = calls = 0
    while left:
        calls += 1
        if sink == "trunc":
            n = sock.recv_into(buf, min(left, step), flags)
        elif sink == "splice":
            n = os.splice(fd, wr, min(left, step))
            k = n
            while k:
                k -= os.splice(rd, devnull, k)
        else:
            n = sock.recv_into(buf, min(left, step))
        if n <= 0:
            raise ConnectionError(f"connection closed with {left} bytes to go")
        left -= n
        total += n
    return total, calls


def _main(argv: list[str]) -> int:
    """``python -S bench/harness/sink.py sink URL --count N --sink trunc [--fresh] --start T``: the
    client process of :func:`drain`; prints one JSON line."""
    import argparse

    ap = argparse.ArgumentParser(prog="bench/harness/sink.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sink")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--sink", choices=PY_SINKS, default="trunc")
    p.add_argument("--fresh", action="store_true", help="a new connection per download")
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args(argv)
    out = sink_fetch(a.url, a.count, sink=a.sink, fresh=a.fresh,
                     start=a.start or time.monotonic(), timeout=a.timeout)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0



if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
