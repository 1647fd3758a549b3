"""Minimal threaded blocking-sendfile HTTP server: GET any path -> the one file."""
import os, socket, sys, threading
path, port = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "cork"
size = os.path.getsize(path)
head = (f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/zip\r\n\r\n").encode()
def handle(c):
    f = os.open(path, os.O_RDONLY)
    if "delay" not in mode: c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d: return
                buf += d
            buf = buf.split(b"\r\n\r\n", 1)[1]
            cork = mode.startswith(("cork", "early"))
            step = (2 << 20) if mode.endswith("2m") else (64 << 20)
            if mode.startswith("early"): c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            c.sendall(head)
            if mode.startswith("cork"): c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            off = 0
            while off < size:
                off += os.sendfile(c.fileno(), f, off, min(size - off, step))
            if cork: c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    finally:
        os.close(f); c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
