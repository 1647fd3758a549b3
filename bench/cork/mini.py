"""The minimal server of bench/cork/ab.py: ``mini.py FILE PORT MODE`` answers every GET on
127.0.0.1:PORT with FILE, by blocking ``sendfile(2)`` in a thread per connection (no asyncio).

MODE: ``cork`` (TCP_CORK after the headers), ``early`` (before them), ``nocork``; a ``2m``
suffix sends in 2 MiB steps instead of 64 MiB; ``delay`` anywhere leaves TCP_NODELAY off."""

import os
import socket
import sys
import threading


def cork(c: socket.socket, on: bool) -> None:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))


def handle(c: socket.socket, path: str, mode: str) -> None:
    size = os.path.getsize(path)
    head = (f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
            "Content-Type: application/zip\r\n\r\n").encode()
    step = (2 << 20) if mode.endswith("2m") else (64 << 20)
    corks = mode.startswith(("cork", "early"))
    f = os.open(path, os.O_RDONLY)
    if "delay" not in mode:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf.split(b"\r\n\r\n", 1)[1]
            if mode.startswith("early"):
                cork(c, True)
            c.sendall(head)
            if mode.startswith("cork"):
                cork(c, True)
            off = 0
            while off < size:
                off += os.sendfile(c.fileno(), f, off, min(size - off, step))
            if corks:
                cork(c, False)
    finally:
        os.close(f)
        c.close()


def main(path: str, port: int, mode: str) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, path, mode), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "cork")
