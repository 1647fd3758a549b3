"""Where tests start servers: ``spacy-index serve``'s app in process (``asgi_client``) or under
a real uvicorn on 127.0.0.1 (``run_app``), ``http.server`` handlers (``serve_http``, on a
:class:`StoppableHTTPServer`), and where servers run as subprocesses stop (``stop_process``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from spacy_index.server.protocol import protocol_class

# the one import of the server's wiring in tests/servers.py: a move of build_server or
# create_app changes this line only
from spacy_index.server.wiring import build_server, create_app


def build_app(config: Any, *, cache_dir: Path, api_url: str = "http://127.0.0.1:9",
              token: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """``(server, app)`` as ``spacy-index serve`` wires them for ``config``. The default
    ``api_url`` refuses connections: a test that meant no GitHub fails loudly if it asks."""
    server = build_server(config, cache_dir=cache_dir, api_url=api_url, token=token, **kwargs)
    return server, create_app(server)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The ASGI lifespan of ``app``, entered as uvicorn does (startup before the first
    request, shutdown after the last). ``create_app`` wraps Starlette in middleware, so
    ``app.router.lifespan_context`` is not reachable; the protocol is."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                   inbox.get, outbox.put))

    async def step(event: str) -> None:
        await inbox.put({"type": f"lifespan.{event}"})
        got = await outbox.get()
        if got["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(f"lifespan {event} failed: {got}")

    await step("startup")
    try:
        yield
    finally:
        await step("shutdown")
        await task


@contextlib.asynccontextmanager
async def asgi_client(app: Any, base_url: str = "http://test") -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client that calls ``app`` in process (no socket), inside its lifespan."""
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                base_url=base_url) as client:
        yield client


@contextlib.contextmanager
def run_app(app, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
            protocol: str | None = None) -> Iterator[str]:
    """``protocol``: None = the one ``spacy-index serve`` runs (zero-copy files, task-free
    pages, see ``server/protocol.py``); "h11" = uvicorn's stock protocol (the fallback)."""
    http = protocol or protocol_class(getattr(app, "fast", None)) or "auto"
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            lifespan="on", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            backlog=512, timeout_graceful_shutdown=5, http=http, loop="asyncio",
                            proxy_headers=False)  # as `spacy-index serve` runs by default
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if ssl_certfile else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def write_simple_project(root: Path, name: str, files: dict[str, bytes], *, dirname: str | None = None) -> None:
    """A hand-written PEP 503 page (independent of spacy-index's renderers) + the files."""
    page_dir = root / "simple" / (dirname or name)
    page_dir.mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    links = []
    for filename, data in files.items():
        (root / "files" / filename).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        links.append(f'<a href="../../files/{filename}#sha256={sha}">{filename}</a><br>')
    (page_dir / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, *, attempts: int = 400) -> None:
    """Poll ``base/health`` (a server started as a subprocess) until it answers 200."""
    for _ in range(attempts):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/health").status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{base} did not become healthy")


def tls_files(folder: Path) -> tuple[str, str, str]:
    """A throwaway CA and a 127.0.0.1 certificate (trustme): cert, key and CA files."""
    import trustme  # the [test] extra
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    return str(cert_pem), str(key_pem), str(ca_pem)


class StoppableHTTPServer(http.server.ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that really stops: it tracks the open connections, and
    ``server_close()`` shuts them down before it joins their handler threads (a client's idle
    keep-alive connection would otherwise hold its handler, and a join, until the client
    hangs up). Connection errors are not printed: a test server sees clients hang up and its
    own teardown cut connections on purpose."""

    close_timeout: float = 10  #: seconds server_close waits, in all, for the handler threads

    def __init__(self, server_address: Any, handler: Any, bind_and_activate: bool = True) -> None:
        self._conns: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._conns_lock = threading.Lock()
        super().__init__(server_address, handler, bind_and_activate)

    def process_request(self, request: Any, client_address: Any) -> None:
        # like ThreadingMixIn's (daemon threads: they never hold up the interpreter's exit),
        # but tracked for server_close, and named after the serving thread
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"{threading.current_thread().name}-conn")
        with self._conns_lock:
            self._conns.add(request)
            self._handlers = [t for t in self._handlers if t.is_alive()] + [thread]
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        """After ``shutdown()``: end open connections, close the socket, join the handlers."""
        with self._conns_lock:
            conns, handlers = list(self._conns), list(self._handlers)
        for conn in conns:
            with contextlib.suppress(OSError):
                # socket.socket's, not SSLSocket's: that one also drops the TLS state that
                # the handler thread may be using right now
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        super().server_close()
        deadline = time.monotonic() + self.close_timeout
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def serve_http(handler: Any, *, server_class: type[socketserver.BaseServer] | None = None,
               tls: Any = None, name: str = "test-http",
               poll_interval: float = 0.05) -> Iterator[Any]:
    """A ``http.server`` (or ``socketserver``) handler class on 127.0.0.1 (an ephemeral port)
    in a thread named ``name``, its socket wrapped in ``tls`` (an ``ssl.SSLContext``) if
    given; yields the server (``server_class``, default :class:`StoppableHTTPServer`) and
    stops it afterwards. State the handlers share goes in attributes set on the yielded
    server (no client knows its port before). ``shutdown()`` waits for the serving thread's
    next poll: 0.5 s each at the stdlib's default, for every server a test starts."""
    httpd = (server_class or StoppableHTTPServer)(("127.0.0.1", 0), handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(poll_interval,), name=name,
                              daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@contextlib.contextmanager
def serve_handler(handler: Any, *, tls: Any = None) -> Iterator[str]:
    """:func:`serve_http`, yielding its base URL (https with ``tls``)."""
    with serve_http(handler, tls=tls) as httpd:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 grace: float = 10) -> int:
    """Stop a server started as a subprocess: ``sig`` (if it still runs), up to ``grace``
    seconds to exit, then SIGKILL; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited since the poll
            proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
