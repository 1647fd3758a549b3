"""The index's routes: module-level handlers over the :class:`~.state.Server` that
:func:`~.wiring.create_app` puts in ``app.state.server``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from packaging.utils import NormalizedName, canonicalize_name
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from spacy_index.cache import CacheWriteError, FileCache, Upstream
from spacy_index.cache.index import METADATA
from spacy_index.cache.stream import CacheStream
from spacy_index.errors import SpacyIndexError
from spacy_index.gcpause import without_gc
from spacy_index.http import describe_error
from spacy_index.model import Project
from spacy_index.render import html
from spacy_index.render.json_api import dumps
from spacy_index.render.pep691 import JSON_CONTENT_TYPE
from spacy_index.server.negotiate import negotiate
from spacy_index.server.pages import pypi_json_entry
from spacy_index.server.responses import (
    NOT_ACCEPTABLE,
    PageRefusal,
    bytes_response,
    error_response,
    file_headers,
    file_response,
    media_type_for,
    not_modified,
    page_response,
    page_target,
    valid_name,
)
from spacy_index.server.state import Located, Server
from spacy_index.server.upstream import fetch_metadata, pass_through, unless_gone, upstream_span

log = logging.getLogger("spacy_index.server")


def _server(request: Request) -> Server:
    return request.app.state.server  # type: ignore[no-any-return]


def _mark(request: Request, cache: str) -> None:
    """What the cache did for this request, for its access-log line."""
    request.scope.setdefault("state", {})["cache"] = cache


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "sources": sorted(_server(request).sources)})


async def root(request: Request) -> Response:
    ctype = negotiate(request.headers.get("accept"))
    if ctype is None:
        return error_response(406, NOT_ACCEPTABLE)
    names: list[str] = []
    for source in _server(request).sources.values():
        with contextlib.suppress(SpacyIndexError):
            names.extend(await source.project_names())
    unique = {canonicalize_name(n): n for n in sorted(names)}
    doc = {"meta": {"api-version": "1.1"},
           "projects": [{"name": unique[k]} for k in sorted(unique)]}
    body = dumps(doc).encode() if ctype == JSON_CONTENT_TYPE else html.root_page(doc).encode()
    return page_response(request, body, ctype)


async def lookup(request: Request, name: NormalizedName) -> Project | Response:
    """The routed source's project, or the error response to send instead. A client
    that leaves while the upstream is asked stops waiting (499, never sent): the fetch
    is cancelled when nobody else waits for it (IndexSource.project)."""
    try:
        got = await unless_gone(request, _server(request).project(name))
    except SpacyIndexError as e:
        return error_response(502, str(e))
    if got is None:
        return Response(status_code=499)
    _source, project = got[0]
    if project is None:
        return error_response(404, f"no project named {name!r}")
    return project


async def project_page(request: Request) -> Response:
    target = page_target(request.path_params["project"], request.url.path,
                         request.headers.get("accept"), request.scope.get("root_path", ""))
    if isinstance(target, PageRefusal):
        return target.response()
    name, ctype = target
    project = await lookup(request, name)
    if isinstance(project, Response):
        return project
    body, etag = await _server(request).render_async(project, ctype)
    return page_response(request, body, ctype, etag=etag)


async def pypi_json(request: Request) -> Response:
    name = valid_name(request.path_params["project"])
    if name is None:
        return error_response(404, "not a valid project name")
    project = await lookup(request, name)
    if isinstance(project, Response):
        return project
    server = _server(request)
    base = server.config.public_url or str(request.base_url).rstrip("/")
    found = server.pypi_json(project, base)
    if found is None:
        if len(project.files) > 1000:
            entry = await asyncio.to_thread(without_gc, pypi_json_entry, project, base)
        else:
            entry = pypi_json_entry(project, base)
        server.pages[(project.name, "pypi-json")] = entry
        found = entry.body, entry.etag
    body, etag = found
    return page_response(request, body, "application/json", vary=False, etag=etag)


async def files(request: Request) -> Response:
    try:
        return await cached_file(request)
    except FileNotFoundError:
        # evicted (or removed) between the lookup and the answer: look again, once; the
        # cache then fetches it anew
        try:
            return await cached_file(request)
        except FileNotFoundError:
            return error_response(503, "the file was removed from the cache while being served; retry")


async def cached_file(request: Request) -> Response:
    filename = request.path_params["filename"]
    if filename.endswith(".metadata"):
        return await metadata(request, filename.removesuffix(".metadata"))
    server = _server(request)
    try:
        found = await server.locate(filename)
    except SpacyIndexError as e:
        return error_response(502, str(e))
    if found is None:
        return error_response(404, "no such file in this index")
    d = found.dist
    local = found.source.local_path(d)
    if local is not None:
        _mark(request, "local")
        return file_response(request, local, f'"{d.sha256}"', media_type=media_type_for(filename))
    if not d.sha256 and found.source.require_hashes:
        return error_response(502, f"{filename!r} is listed without a sha256 and source "
                           f"{found.source.name!r} sets require_hashes")
    cache = server.cache_for(found.source)
    up = Upstream(url=d.url, filename=filename, sha256=d.sha256, size=d.size)
    if not d.sha256:
        return await _unverified_file(request, cache, up)
    etag = f'"{d.sha256}"'
    if server.s3_location is not None:
        # shared bucket: one download across all servers; the file is complete before
        # it is served (the others stream it from the bucket)
        store = server.s3_store_for(found.source)
        try:
            path = await store.fetch(d.sha256, filename, lambda: cache.ensure(up))
        except SpacyIndexError as e:
            return error_response(502, str(e))
        return file_response(request, path, etag, media_type=media_type_for(filename))
    if request.method == "HEAD" or request.headers.get("range"):
        return await _span(request, cache, up, etag)
    return await _whole_file(request, found, cache, up, etag)


async def _span(request: Request, cache: FileCache, up: Upstream, etag: str) -> Response:
    """HEAD or a Range: from the cache when the file is there, else never a whole download
    before answering: HEAD from the known size, a Range from upstream as it comes, while the
    whole file is cached behind it."""
    assert up.sha256 is not None
    local = cache.cached_now(up.sha256)
    if local is not None:
        _mark(request, "hit")
        return file_response(request, local, etag, media_type=media_type_for(up.filename))
    cache.prefetch(up)
    _mark(request, "miss")
    if request.method == "HEAD" and up.size is not None:
        return Response(status_code=200, media_type=media_type_for(up.filename), headers={
            **file_headers(etag), "Content-Length": str(up.size)})
    return await upstream_span(request, cache.client, up, etag)


async def _whole_file(request: Request, found: Located, cache: FileCache, up: Upstream,
                      etag: str) -> Response:
    """A GET of the whole file: a hit from disk, a miss streamed as it downloads."""
    assert up.sha256 is not None
    stream = cache.open(up)
    try:
        if cache.cached_now(up.sha256) is not None:
            # a hit: nothing to wait for, so no race with the client leaving (two more
            # tasks and loop turns before every cached file's first byte)
            await stream.__aenter__()
        elif not await unless_gone(request, stream.__aenter__()):
            return Response(status_code=499)  # the client left while the download waited
    except CacheWriteError as e:
        return await pass_through(request, found.source.client, up, e)
    except SpacyIndexError as e:
        return error_response(502, str(e))
    _mark(request, "hit" if stream.hit else "miss")
    if stream.hit and stream.path is not None:
        await stream.__aexit__(None, None, None)
        return file_response(request, stream.path, etag, media_type=media_type_for(up.filename))
    if not_modified(request, etag):
        await stream.__aexit__(None, None, None)
        return Response(status_code=304, headers={"ETag": etag})
    return await _streamed(request, stream, up.filename, etag)


async def _streamed(request: Request, stream: CacheStream, filename: str, etag: str) -> Response:
    """A download, answered as it arrives. Its first chunk is awaited before answering: a
    file that fails verification within its first chunk (the cache holds back the last chunk
    until the sha256 matched) gets a clean 502 naming both hashes instead of a broken 200."""
    headers = file_headers(etag)
    if stream.size is not None:
        headers["Content-Length"] = str(stream.size)
    chunks = stream.__aiter__()

    async def first_chunk() -> bytes:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return b""

    try:
        got = await unless_gone(request, first_chunk())
    except SpacyIndexError as e:
        await stream.__aexit__(None, None, None)
        log.error("%s: %s", filename, e)
        return error_response(502, str(e))
    if not got:  # the client left before the first chunk: stop waiting for it
        await stream.__aexit__(None, None, None)
        return Response(status_code=499)
    first = got[0]

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        except SpacyIndexError as e:
            log.error("%s: %s", filename, e)
            raise
        finally:
            await stream.__aexit__(None, None, None)

    return StreamingResponse(body(), headers=headers, media_type=media_type_for(filename))


async def _unverified_file(request: Request, cache: FileCache, up: Upstream) -> Response:
    """A file its index lists with no hash: downloaded once, stored under the sha256 of
    what arrived (found again by its URL), served whole, marked in the access log."""
    state = request.scope.setdefault("state", {})
    stream = cache.open(up)
    try:
        async with stream:
            hit = stream.hit
    except SpacyIndexError as e:
        return error_response(502, str(e))
    try:
        path = await cache.ensure(up)
    except SpacyIndexError as e:
        return error_response(502, str(e))
    state["cache"] = "hit-unverified" if hit else "miss-unverified"
    return file_response(request, path, f'"{path.name}"', media_type=media_type_for(up.filename))


async def metadata(request: Request, filename: str) -> Response:
    server = _server(request)
    try:
        found = await server.locate(filename)
    except SpacyIndexError as e:
        return error_response(502, str(e))
    if found is None or found.dist.kind != "wheel" or not found.dist.sha256:
        return error_response(404, "no metadata for that file in this index")
    d = found.dist
    store = server.metadata
    async with store.lock(d.sha256):
        if store.digest(d.sha256) is None:
            try:
                data = await fetch_metadata(server, found)
            except (SpacyIndexError, httpx.HTTPError) as e:
                detail = str(e) if isinstance(e, SpacyIndexError) else describe_error(e, d.url)
                return error_response(502, f"cannot read the metadata of {filename!r}: {detail}")
            store.put(d.sha256, data, d.project)
            server.bound.stored(METADATA, d.sha256, d.filename, d.project, len(data))
            _mark(request, "miss")
        else:
            _mark(request, "hit")
            server.bound.used(METADATA, d.sha256, d.filename, d.project)
    meta_sha = store.digest(d.sha256)
    kept = store.in_memory.get(d.sha256)
    # the pages the client will ask for next, fetched behind (once per wheel, see prefetch.py)
    server.prefetch.offer(d.sha256, lambda: kept if kept is not None
                          else store.path(d.sha256).read_bytes())
    if kept is not None:
        return bytes_response(request, kept, f'"{meta_sha}"', media_type="text/plain")
    try:
        return file_response(request, store.path(d.sha256), f'"{meta_sha}"',
                             media_type="text/plain")
    except FileNotFoundError:  # removed between the check and the answer: heal next time
        return error_response(503, "the metadata was removed while being served; retry")
