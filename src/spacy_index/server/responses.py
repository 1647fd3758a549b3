"""HTTP answers: pages, files and errors, with the index's caching policy.

One home for the headers every answer carries: a page (:func:`page_response`) has its ETag, a short
``max-age`` and ``Vary: Accept``; a file (:func:`file_headers`) its sha256 as ETag, cached for
a year as immutable; an error (:func:`error_response`) is never stored and never shows upstream URLs
or the server's own paths.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from spacy_index.server.negotiate import negotiate
from spacy_index.server.protocol import ZEROCOPY

PAGE_MAX_AGE = 60
FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
CHUNK = 1 << 20
NOT_ACCEPTABLE = "not acceptable: this index serves PEP 691 JSON and PEP 503 HTML"


def body_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def not_modified(request: Request | str | None, etag: str) -> bool:
    header = (request.headers.get("if-none-match") if isinstance(request, Request) else request) or ""
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(",")) or header.strip() == "*"


def page_response(request: Request | str | None, body: bytes, media_type: str, *, vary: bool = True,
          etag: str | None = None) -> Response:
    """A page answer; ``request`` may also be just its If-None-Match header."""
    etag = etag or body_etag(body)
    headers = {"ETag": etag, "Cache-Control": f"max-age={PAGE_MAX_AGE}"}
    if vary:
        headers["Vary"] = "Accept"
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>()]+", re.IGNORECASE)
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/-])/(?:[^\s'\"/<>]+/)+[^\s'\"/<>]*")


def public_message(message: str) -> str:
    """An error for clients: what failed, without upstream URLs (a private index's address,
    a signed link) or the server's own paths (the full text goes to the log)."""
    return _PATH_IN_TEXT.sub("<path>", _URL_IN_TEXT.sub("<upstream>", message))


def error_response(status: int, message: str) -> PlainTextResponse:
    if status >= 500:
        message = public_message(message)
    return PlainTextResponse(message + "\n", status_code=status, headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def valid_name(raw: str) -> NormalizedName | None:
    """The normalized name, or None when ``raw`` is not a valid project name at all."""
    try:
        return canonicalize_name(raw, validate=True)
    except InvalidName:
        return None


@functools.lru_cache(maxsize=4096)
def _page_name(raw: str) -> NormalizedName | None:
    return valid_name(raw)


@dataclass(frozen=True, slots=True)
class PageRefusal:
    """Why a page request gets no page: 404 or 406 with its message, or 301 to ``text``.
    Only the route turns it into a response: the fast path, which asks on every page
    request, just hands such a request to the route."""

    status: int
    text: str

    def response(self) -> Response:
        if self.status == 301:
            return RedirectResponse(self.text, status_code=301)
        return error_response(self.status, self.text)


def page_target(raw: str, path: str, accept: str | None,
                root_path: str = "") -> tuple[NormalizedName, str] | PageRefusal:
    """What a request for ``/simple/<raw>`` asks for, (normalized name, content type), or why
    it gets no page: 404 for a name that is none, 301 to the normalized name with its slash,
    406 when no content type fits. The route and the protocol's fast path (which takes the
    route on anything but a tuple) both ask here, so they cannot disagree on a page."""
    # remembered for short names (bounded memory): the fast path asks on every page request
    name = _page_name(raw) if len(raw) <= 128 else valid_name(raw)
    if name is None:
        return PageRefusal(404, "not a valid project name")
    if raw != name or not path.endswith("/"):
        return PageRefusal(301, f"{root_path}/simple/{name}/")
    ctype = negotiate(accept)
    if ctype is None:
        return PageRefusal(406, NOT_ACCEPTABLE)
    return name, ctype


def file_headers(etag: str, *, ranges: bool = True) -> dict[str, str]:
    """The headers of a file's answer: its bytes never change under its sha256 (the ETag)."""
    headers = {"ETag": etag, "Cache-Control": FILE_CACHE_CONTROL}
    if ranges:
        headers["Accept-Ranges"] = "bytes"
    return headers


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range → (start, end inclusive); None = whole file; "416" = unsatisfiable."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    first, _, last = spec.partition("-")
    if not (first.isascii() and last.isascii()) or not (first.isdigit() or first == "") \
            or not (last.isdigit() or last == "") or (first == last == ""):
        return None  # invalid syntax (``1_0``, ``+10``, ``٣``) is ignored: the whole file
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "416"
            return (max(0, size - n), size - 1)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "416"
    return (start, min(end, size - 1))


class FileSpanResponse(Response):
    """``length`` bytes of ``path`` from ``start``: with the ASGI zero-copy extension when the
    server offers it (``sendfile(2)``, see ``protocol.py``), else in 1 MiB reads off the loop."""

    def __init__(self, path: Path, start: int, length: int, *, status_code: int,
                 headers: dict[str, str], media_type: str) -> None:
        super().__init__(None, status_code=status_code, headers=headers, media_type=media_type)
        self.path, self.start, self.length = path, start, length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ZEROCOPY not in scope.get("extensions", {}):
            stream = StreamingResponse(_file_body(self.path, self.start, self.length),
                                       status_code=self.status_code)
            stream.raw_headers = self.raw_headers
            await stream(scope, receive, send)
            return
        with open(self.path, "rb") as f:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await send({"type": ZEROCOPY, "file": f, "offset": self.start, "count": self.length,
                        "more_body": False})


async def _file_body(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, end = start, start + length
        while pos < end:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, end - pos), pos)
            if not chunk:
                break
            pos += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def file_response(request: Request, path: Path, etag: str, *, media_type: str) -> Response:
    size = path.stat().st_size
    headers = file_headers(etag)
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    wanted = _parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range is not None and if_range != etag:
        wanted = None
    if wanted == "416":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = (0, size - 1) if wanted is None else wanted  # type: ignore[misc]
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return FileSpanResponse(path, start, length, status_code=status, headers=headers,
                            media_type=media_type)


def bytes_response(request: Request, data: bytes, etag: str, *, media_type: str) -> Response:
    headers = file_headers(etag, ranges=False)
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(data))
        return Response(status_code=200, headers=headers, media_type=media_type)
    return Response(data, headers=headers, media_type=media_type)


def media_type_for(filename: str) -> str:
    return "application/zip" if filename.endswith((".whl", ".zip")) else "application/gzip"

