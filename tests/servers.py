"""Run an ASGI app under a real uvicorn on 127.0.0.1 (ephemeral port), from a thread."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from spacy_index.server.protocol import protocol_class


@contextlib.contextmanager
def run_app(app, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
            protocol: str | None = None) -> Iterator[str]:
    """``protocol``: None = the one ``spacy-index serve`` runs (zero-copy files, task-free
    pages, see ``server/protocol.py``); "h11" = uvicorn's stock protocol (the fallback)."""
    http = protocol or protocol_class(getattr(app, "fast", None)) or "auto"
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            lifespan="on", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            backlog=512, timeout_graceful_shutdown=5, http=http, loop="asyncio")
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
