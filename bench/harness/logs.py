"""Readers of the servers' logs: the new part of a growing log file, serve's access log
(and its httpx lines), and proxpi's gunicorn access log."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from .util import fmt_bytes

ACCESS_RE = re.compile(r"^(GET|HEAD|POST) (\S+) (\d{3}) (\d+)B (\S+) ([\d.]+)s$")
HTTPX_RE = re.compile(r'HTTP Request: (\w+) (\S+) "HTTP/[\d.]+ (\d{3})')
GUNICORN_FORMAT = '"%(r)s" %(s)s %(B)s %(L)s'
GUNICORN_RE = re.compile(r'^"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-) ([\d.]+)$', re.M)


class LogTail:
    """The part of a growing log file written since the last ``take()``."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def skip(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def take(self, settle: float = 1.5) -> str:
        # serve writes its access log in batches, at most 1 s late; the peers right away
        time.sleep(settle)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data.decode(errors="replace")


def serve_counts(text: str) -> dict:
    """Summary of serve's access-log and httpx lines."""
    files = Counter()
    meta = Counter()
    pages = Counter()
    miss_bytes = whole_files = 0
    busy = page_secs = 0.0
    slow: list[tuple[float, str, str]] = []
    upstream = Counter()
    for line in text.splitlines():
        line = line.strip()
        m = ACCESS_RE.match(line)
        if m:
            method, path, status, nbytes, cache, secs = m.groups()
            nbytes, secs = int(nbytes), float(secs)
            slow.append((secs, f"{method} {path}", f"{status} {cache} {fmt_bytes(nbytes)}"))
            if path != "/health":
                busy += secs
            if path.startswith("/files/"):
                bucket = meta if path.endswith(".metadata") else files
                bucket[cache] += 1
                if cache.startswith("miss"):
                    miss_bytes += nbytes
                if not path.endswith(".metadata") and method == "GET" and status == "200":
                    whole_files += 1
            elif path.startswith("/simple/"):
                pages[status] += 1
                page_secs += secs
            continue
        m = HTTPX_RE.search(line)
        if m:
            method, url, status = m.groups()
            host = re.sub(r"^https?://([^/]+).*$", r"\1", url)
            if host.startswith("127.0.0.1"):
                host = "fake-github"
            upstream[f"{host} {method} {status}"] += 1
    slow.sort(reverse=True)
    return {
        "files": dict(files), "metadata": dict(meta), "pages": dict(pages),
        "file_misses": sum(v for k, v in files.items() if k.startswith("miss")),
        "metadata_misses": sum(v for k, v in meta.items() if k.startswith("miss")),
        "miss_bytes": miss_bytes, "whole_files": whole_files,
        "request_seconds": round(busy, 3), "page_seconds": round(page_secs, 3),
        "upstream": dict(upstream),
        "upstream_pages_200": sum(v for k, v in upstream.items()
                                  if "/simple" not in k and k.endswith(" 200") and "pypi.org" in k),
        "slowest": [{"seconds": s, "request": r, "answer": a} for s, r, a in slow[:5]],
    }


def gunicorn_counts(text: str) -> dict:
    """proxpi's gunicorn access log: requests by kind and status, redirects, slowest."""
    c = Counter()
    slow = []
    busy = 0.0
    for m in GUNICORN_RE.finditer(text):
        method, path, status, nbytes, secs = m.groups()
        kind = "file" if re.search(r"\.(whl|tar\.gz|zip)$", path) else (
            "metadata" if path.endswith(".metadata") else "page")
        c[f"{kind} {status}"] += 1
        busy += float(secs)
        slow.append((float(secs), f"{method} {path}", f"{status} {fmt_bytes(int(nbytes or 0))}"
                     if nbytes != "-" else status))
    slow.sort(reverse=True)
    return {"requests": dict(c), "file_redirects": c.get("file 302", 0) + c.get("file 307", 0),
            "request_seconds": round(busy, 3),
            "slowest": [{"seconds": s, "request": r, "answer": a} for s, r, a in slow[:5]]}
