"""The fake upstream of bench/cache.py: a PEP 503/691 index of the workload's wheels that
logs every request with its bytes and User-Agent."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from urllib.parse import unquote

from cache_workload import CLIENT_UA, JSON_ACCEPT
from harness.upstream import FakeUpstream, QuietHandler


class Upstream(FakeUpstream):
    """PEP 503/691 simple index of ``files`` + ``/packages/<filename>``; every request logged
    as a dict (label, method, path, status, bytes, ua, range)."""

    def __init__(self, files: list[dict]) -> None:
        self.files = {f["filename"]: f for f in files}
        self.projects: dict[str, list[dict]] = {}
        for f in files:
            self.projects.setdefault(f["project"], []).append(f)
        self.label = "setup"
        super().__init__(_UpstreamHandler)

    def record(self, **kw: object) -> None:
        with self.lock:
            self.requests.append({"label": self.label, "t": time.monotonic(), **kw})

    def mark(self, label: str) -> int:  # type: ignore[override]
        with self.lock:
            self.label = label
            return len(self.requests)


class _UpstreamHandler(QuietHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_body(status, body, ctype)
        self.server.record(method=self.command, path=self.path, status=status,
                           bytes=0 if self.command == "HEAD" else len(body),
                           ua=self.headers.get("User-Agent", ""), range=None, t0=self.t0)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.t0 = time.monotonic()
        path = unquote(self.path.split("?", 1)[0])
        wants_json = JSON_ACCEPT in (self.headers.get("Accept") or "")
        if path.startswith("/simple/"):
            return self._page(path, wants_json)
        return self._file(path)

    def _page(self, path: str, wants_json: bool) -> None:
        up = self.server
        if path == "/simple/":
            if wants_json:
                body = json.dumps({"meta": {"api-version": "1.1"},
                                   "projects": [{"name": p} for p in up.projects]}).encode()
                return self._send(200, body, JSON_ACCEPT)
            links = "".join(f'<a href="{p}/">{p}</a>\n' for p in up.projects)
            return self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(),
                              "text/html")
        m = re.fullmatch(r"/simple/([^/]+)/", path)
        if m:
            files = up.projects.get(m.group(1))
            if files is None:
                return self._send(404, b"not found", "text/plain")
            if wants_json:
                body = json.dumps({
                    "meta": {"api-version": "1.1"}, "name": m.group(1),
                    "versions": [f["version"] for f in files],
                    "files": [{"filename": f["filename"], "url": f"../../packages/{f['filename']}",
                               "hashes": {"sha256": f["sha256"]}, "size": f["size"]}
                              for f in files]}).encode()
                return self._send(200, body, JSON_ACCEPT)
            links = "".join(f'<a href="../../packages/{f["filename"]}#sha256={f["sha256"]}">'
                            f'{f["filename"]}</a>\n' for f in files)
            return self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(),
                              "text/html")
        return self._send(404, b"not found", "text/plain")

    def _range(self, size: int) -> tuple[int, int, int] | None:
        """(start, end, status) of the answer; None for a range it cannot serve."""
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            r = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if r is None or r.group(1) == r.group(2) == "":
                return None
            if r.group(1) == "":
                start = max(0, size - int(r.group(2)))
            else:
                start = int(r.group(1))
                end = min(size - 1, int(r.group(2))) if r.group(2) else size - 1
            if start > end:
                return None
            status = 206
        return start, end, status

    def _file(self, path: str) -> None:
        m = re.fullmatch(r"/packages/([^/]+)", path)
        f = self.server.files.get(m.group(1)) if m else None
        if f is None:
            return self._send(404, b"not found", "text/plain")
        size, rng = f["size"], self.headers.get("Range")
        answer = self._range(size)
        if answer is None:
            return self._send(416, b"bad range", "text/plain")
        start, end, status = answer
        count = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f["sha256"]}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if self.command == "GET":
            self.wfile.flush()
            with open(f["path"], "rb") as fh:
                try:
                    sent = self.connection.sendfile(fh, start, count)
                except OSError:
                    sent = fh.tell() - start  # the peer went away: what went out
                    self.close_connection = True
        self.server.record(method=self.command, path=self.path, status=status, bytes=sent,
                           ua=self.headers.get("User-Agent", ""), range=rng, t0=self.t0)


def upstream_counts(reqs: list[dict]) -> dict:
    files = [r for r in reqs if r["path"].startswith("/packages/")]
    gets = [r for r in files if r["method"] == "GET"]
    by_client = [r for r in gets if r["ua"] == CLIENT_UA]
    whole = Counter(r["path"] for r in gets if r["status"] == 200)
    return {
        "requests": len(reqs),
        "page_requests": sum(1 for r in reqs if r["path"].startswith("/simple/")),
        "file_gets": len(gets),
        "file_gets_200": sum(1 for r in gets if r["status"] == 200),
        "file_gets_206": sum(1 for r in gets if r["status"] == 206),
        "file_heads": sum(1 for r in files if r["method"] == "HEAD"),
        "file_bytes": sum(r["bytes"] for r in gets),
        "client_gets": len(by_client),  # redirected clients (proxpi past its 0.9 s)
        "client_bytes": sum(r["bytes"] for r in by_client),
        "distinct_files": len(whole),
        "most_fetched": whole.most_common(3),
        "uas": dict(Counter(r["ua"].split(" ")[0] for r in reqs)),
    }
