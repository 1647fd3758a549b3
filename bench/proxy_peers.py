"""The peers of bench/proxy.py (devpi-server, proxpi) as processes on 127.0.0.1, what their
logs say, and what the real upstream looks like from this machine."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from harness.env import CA_BUNDLE, server_env, tls_env
from harness.logs import GUNICORN_FORMAT
from harness.procfs import children
from harness.servers import ManagedProcess
from harness.util import free_port, wait_http
from proxy_report import DEVPI_PRELOAD, PYPI

DEVPI_REMOTE_RE = re.compile(r"reading remote: URL\('https?://([^/']+)")


def client_env() -> dict[str, str]:
    """pip / pip-tools / uv: no config file, no PIP_*/UV_* from the machine, no cache."""
    from tests.clients import clean_env

    return tls_env(clean_env())


def probe_upstream() -> dict:
    """What the upstream looks like from here (a mirror or proxy may differ from pypi.org):
    validators and PEP 658/714 metadata on the spaCy page, JSON and HTML."""
    import ssl

    import httpx

    ctx = ssl.create_default_context(cafile=CA_BUNDLE if Path(CA_BUNDLE).exists() else None)
    out: dict = {}
    try:
        with httpx.Client(verify=ctx, trust_env=False, timeout=60) as c:
            for kind, accept in (("json", "application/vnd.pypi.simple.v1+json"),
                                 ("html", "text/html")):
                t = time.monotonic()
                r = c.get(PYPI + "spacy/", headers={"Accept": accept})
                info = {"status": r.status_code, "seconds": round(time.monotonic() - t, 3),
                        "bytes": len(r.content), "etag": r.headers.get("etag"),
                        "last_modified": r.headers.get("last-modified"),
                        "cache_control": r.headers.get("cache-control")}
                if kind == "json" and r.status_code == 200:
                    files = r.json().get("files", [])
                    info["files"] = len(files)
                    info["with_core_metadata"] = sum(
                        1 for f in files if f.get("core-metadata") or f.get("dist-info-metadata"))
                elif r.status_code == 200:
                    info["with_core_metadata"] = len(re.findall(
                        r"data-(?:core|dist-info)-metadata", r.text))
                out[kind] = info
    except httpx.HTTPError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


@contextlib.contextmanager
def start_devpi(venv: Path, serverdir: Path, log_dir: Path):
    """devpi-server with a fresh server dir; yields (index URL, pids callable)."""
    env = server_env()
    bin_ = venv / "bin"
    subprocess.run([str(bin_ / "devpi-init"), "--serverdir", str(serverdir), "--root-passwd",
                    "bench"], env=env, check=True, capture_output=True, timeout=180)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mp = ManagedProcess([str(bin_ / "devpi-server"), "--serverdir", str(serverdir), "--host",
                         "127.0.0.1", "--port", str(port)], env=env,
                        log_path=log_dir / f"devpi-{port}.log")
    try:
        wait_http(url + "/+api", timeout=120, proc=mp.proc)
        # The first page of a fresh devpi mirror also loads PyPI's whole project list (~40 MB,
        # 10+ s): a once-per-server cost, done here for an unrelated project and timed apart.
        import httpx

        t = time.monotonic()
        httpx.get(f"{url}/root/pypi/+simple/{DEVPI_PRELOAD}/", timeout=300, trust_env=False,
                  headers={"Accept": "text/html"}).raise_for_status()
        mp.preload = time.monotonic() - t  # type: ignore[attr-defined]
        yield f"{url}/root/pypi/+simple/", (lambda: [mp.pid, *children(mp.pid)]), mp
    finally:
        mp.stop()


@contextlib.contextmanager
def start_proxpi(venv: Path, cache: Path, log_dir: Path):
    env = server_env()
    env.update(PROXPI_INDEX_URL=PYPI, PROXPI_CACHE_DIR=str(cache), PROXPI_LOGGING_LEVEL="WARNING")
    cache.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mp = ManagedProcess([str(venv / "bin" / "gunicorn"), "--workers", "1", "--threads", "64",
                         "--bind", f"127.0.0.1:{port}", "--timeout", "300", "--access-logfile",
                         "-", "--access-logformat", GUNICORN_FORMAT, "proxpi.server:app"], env=env, log_path=log_dir / f"proxpi-{port}.log")
    try:
        wait_http(url + "/health", timeout=60, proc=mp.proc)
        yield f"{url}/index/", (lambda: [mp.pid, *children(mp.pid)]), mp
    finally:
        mp.stop()


def devpi_counts(text: str) -> dict:
    """devpi-server's log: requests, and remote reads (upstream fetches) by host."""
    remote = Counter(DEVPI_REMOTE_RE.findall(text))
    return {"requests": len(re.findall(r"\[req\d+\] (?:GET|HEAD) ", text)),
            "remote_reads": dict(remote)}
