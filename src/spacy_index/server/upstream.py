"""What the routes ask of upstream directly: a span of a file not cached yet, a file passed
through an unwritable cache, a wheel's metadata; and :func:`unless_gone`, which stops
waiting for upstream when the client has left."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from spacy_index.cache import CacheWriteError, Upstream
from spacy_index.errors import DigestMismatch, MetadataError, SpacyIndexError
from spacy_index.http import describe_error
from spacy_index.server.responses import error_response, media_type_for
from spacy_index.server.sources import read_capped
from spacy_index.wheelmeta import metadata_from_remote_wheel, metadata_from_wheel_file

if TYPE_CHECKING:
    from spacy_index.server.state import Located, Server

_T = TypeVar("_T")
log = logging.getLogger("spacy_index.server")

METADATA_TAIL = 16384


async def unless_gone(request: Request, step: Awaitable[_T]) -> tuple[_T] | None:
    """``(result,)`` of ``step``, or None when the client went away first (``step`` is then
    cancelled). A request waiting for a slow upstream (a download's start or its first
    chunk) stops waiting when its client leaves, so it no longer counts as a consumer of the
    download (see FileCache.max_flights); the 499 it returns is never sent."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(step), asyncio.ensure_future(gone())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0].cancelled():
        return None
    return (tasks[0].result(),)


async def upstream_span(request: Request, client: httpx.AsyncClient, up: Upstream,
                         etag: str) -> Response:
    """HEAD or a Range of a file that is not cached yet, asked of upstream directly."""
    headers = {"Accept-Encoding": "identity"}
    if request.headers.get("range"):
        headers["Range"] = request.headers["range"]
    try:
        upstream = await client.send(client.build_request(request.method, up.url, headers=headers),
                                     stream=True)
    except httpx.HTTPError as e:
        return error_response(502, f"cannot read {up.filename!r}: {describe_error(e, up.url)}")
    if upstream.status_code not in (200, 206, 416):
        await upstream.aclose()
        return error_response(502, f"cannot read {up.filename!r}: HTTP {upstream.status_code} upstream")
    out = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    for name in ("content-length", "content-range"):
        if name in upstream.headers:
            out[name.title()] = upstream.headers[name]
    if request.method == "HEAD" or upstream.status_code == 416:
        await upstream.aclose()
        return Response(status_code=upstream.status_code, headers=out,
                        media_type=media_type_for(up.filename))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(body(), status_code=upstream.status_code, headers=out,
                             media_type=media_type_for(up.filename))


_PASS_THROUGH_WARNED: set[str] = set()


async def pass_through(request: Request, client: httpx.AsyncClient, up: Upstream,
                        why: SpacyIndexError) -> Response:
    """The cache cannot be written: stream the file from upstream as it comes (hashing it;
    a mismatch cuts the connection before the last byte), one warning per cache folder."""
    key = str(getattr(why, "root", ""))
    if key not in _PASS_THROUGH_WARNED:
        _PASS_THROUGH_WARNED.add(key)
        log.warning("%s; passing files through uncached", why)
    request.scope.setdefault("state", {})["cache"] = "pass-through"
    try:
        upstream = await client.send(client.build_request("GET", up.url), stream=True)
    except httpx.HTTPError as e:
        return error_response(502, f"cannot download {up.filename!r}: {describe_error(e, up.url)}")
    if upstream.status_code != 200:
        await upstream.aclose()
        return error_response(502, f"cannot download {up.filename!r}: HTTP {upstream.status_code} upstream")
    headers = {"Cache-Control": "no-store"}
    if upstream.headers.get("content-length"):
        headers["Content-Length"] = upstream.headers["content-length"]

    async def body() -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        held = b""
        try:
            async for chunk in upstream.aiter_raw():
                digest.update(chunk)
                if held:
                    yield held
                held = chunk
            if up.sha256 is not None and digest.hexdigest() != up.sha256:
                log.error("%s: sha256 mismatch (%s, expected %s); cut", up.filename,
                          digest.hexdigest(), up.sha256)
                raise DigestMismatch(up.filename, up.sha256, digest.hexdigest())
            if held:
                yield held
        finally:
            await upstream.aclose()

    return StreamingResponse(body(), headers=headers, media_type=media_type_for(up.filename))


async def fetch_metadata(server: Server, found: Located) -> bytes:
    d = found.dist
    assert d.sha256 is not None
    on_disk = found.source.local_path(d)
    if on_disk is not None:
        return await asyncio.to_thread(metadata_from_wheel_file, on_disk, d.filename)
    cache = server.cache_for(found.source)
    local = await asyncio.to_thread(cache.cached, d.sha256)
    if local is not None:
        return await asyncio.to_thread(metadata_from_wheel_file, local, d.filename)
    upstream_meta = found.source.upstream_file(d.filename)
    if upstream_meta is not None and upstream_meta.has_metadata:
        resp, data = await read_capped(found.source.client, d.url + ".metadata", {},
                                       server.config.limits.max_metadata_size,
                                       f"the metadata of {d.filename!r}")
        if resp.status_code == 200:
            expected = upstream_meta.metadata_sha256
            if expected is None or hashlib.sha256(data).hexdigest() == expected:
                return data
            raise MetadataError(f"upstream metadata of {d.filename!r} does not match its sha256")
    try:
        result = await metadata_from_remote_wheel(
            found.source.client, d.url, filename=d.filename, size=d.size, tail=METADATA_TAIL
        )
    except MetadataError:
        up = Upstream(url=d.url, filename=d.filename, sha256=d.sha256, size=d.size)
        try:
            path = await cache.ensure(up)
        except CacheWriteError:  # the cache cannot be written: a temporary file, then gone
            return await _metadata_via_temp_file(found.source.client, up)
        return await asyncio.to_thread(metadata_from_wheel_file, path, d.filename)
    return result.metadata


async def _metadata_via_temp_file(client: httpx.AsyncClient, up: Upstream) -> bytes:
    import tempfile

    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(suffix=".whl") as tmp:
        async with client.stream("GET", up.url) as resp:
            if resp.status_code != 200:
                raise MetadataError(f"cannot download {up.filename!r}: HTTP {resp.status_code}")
            async for chunk in resp.aiter_raw():
                digest.update(chunk)
                await asyncio.to_thread(tmp.write, chunk)
        await asyncio.to_thread(tmp.flush)
        if up.sha256 is not None and digest.hexdigest() != up.sha256:
            raise DigestMismatch(up.filename, up.sha256, digest.hexdigest())
        return await asyncio.to_thread(metadata_from_wheel_file, Path(tmp.name), up.filename)
