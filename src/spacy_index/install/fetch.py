"""The verified wheel: from the install cache (verified once, trusted while the file is
unchanged), from a local index's folder, or downloaded through the shared file cache."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from spacy_index.errors import DigestMismatch, Interrupted, SpacyIndexError, UpstreamUnreachable
from spacy_index.hashing import file_sha256
from spacy_index.install.index import local_path
from spacy_index.install.target import Choice
from spacy_index.model import Distribution

if TYPE_CHECKING:
    import httpx

Say = Callable[[str], None]


def _file_stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def install_dir(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "install" / sha256


def verified_wheel(cache_dir: Path, sha256: str) -> Path | None:
    """The local file with this sha256 if it was verified before (by :func:`download`) and
    has not changed since: same inode, size, mtime and ctime (ctime moves on every write or
    new link, and cannot be set back), so it is not hashed again."""
    try:
        doc = json.loads((install_dir(cache_dir, sha256) / "verified.json").read_text())
        path = Path(doc["path"])
        return path if _file_stamp(path.stat()) == doc["stamp"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_verified(cache_dir: Path, sha256: str, path: Path) -> None:
    folder = install_dir(cache_dir, sha256)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".verified.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"path": str(path), "stamp": _file_stamp(path.stat())}))
        os.replace(tmp, folder / "verified.json")
    except OSError:
        pass  # only a shortcut: without it the next run hashes the file again


def download(choice: Choice, cache_dir: Path, *, progress: bool = True,
             transport: httpx.AsyncBaseTransport | None = None,
             ca_bundle: str | None = None, say: Say | None = None,
             anywhere: bool = False) -> tuple[Path, bool]:
    """The verified wheel: ``(path, downloaded?)``. From the cache (a file verified before is
    not hashed again), from a local index's folder (verified in place), or downloaded into
    the cache, verified while streaming, resumed where an earlier run stopped. ``anywhere``:
    a file verified before in a local index's folder will do too (else only the cache's)."""
    d = choice.dist
    assert d.sha256 is not None
    known = verified_wheel(cache_dir, d.sha256)
    files = cache_dir / "files"
    if known is not None and (anywhere or d.url.startswith("file:")
                              or known.parent.parent == files):
        return known, False
    if d.url.startswith("file:"):  # a local index (a mirror folder): verify, use in place
        local = local_path(d.url)
        try:
            actual = file_sha256(local)
        except OSError as e:
            raise SpacyIndexError(f"cannot read {d.filename} in the index folder: "
                                  f"{e.strerror or e} ({local})") from None
        if actual != d.sha256:
            raise DigestMismatch(d.filename, d.sha256, actual)
        _remember_verified(cache_dir, d.sha256, local)
        return local, False
    path, downloaded = _fetch(d, cache_dir, progress=progress, transport=transport,
                              ca_bundle=ca_bundle, say=say)
    _remember_verified(cache_dir, d.sha256, path)
    return path, downloaded


def _fetch(d: Distribution, cache_dir: Path, *, progress: bool,
           transport: httpx.AsyncBaseTransport | None, ca_bundle: str | None,
           say: Say | None) -> tuple[Path, bool]:
    import asyncio

    import httpx

    from spacy_index.cache import UpstreamFileError
    from spacy_index.http import describe_error

    assert d.sha256 is not None
    kept = {"at_start": 0, "now": 0, "total": d.size}
    for attempt in (1, 2):
        try:
            return asyncio.run(_into_cache(d, cache_dir, kept, progress=progress,
                                           transport=transport, ca_bundle=ca_bundle, say=say))
        except KeyboardInterrupt:
            have, total = kept["now"], kept["total"]
            of = f" of {total:,}" if total else ""
            if have:
                raise Interrupted(
                    f"interrupted: {d.filename} is not complete; its first {have:,}{of} bytes "
                    "are kept in the cache and the same command resumes from there") from None
            raise Interrupted(f"interrupted: nothing of {d.filename} was kept; "
                              "nothing was installed") from None
        except DigestMismatch:
            if attempt == 1 and kept["at_start"]:
                if say is not None:
                    say(f"{d.filename}: the download kept from before does not verify; "
                        "downloading it again from byte 0")
                continue
            raise
        except httpx.TransportError as e:
            raise UpstreamUnreachable(
                f"the download of {d.filename}", describe_error(e, d.url),
                _kept_hint(cache_dir, d),
            ) from None
        except UpstreamFileError as e:
            if e.status is not None:
                raise
            raise UpstreamUnreachable(
                f"the download of {d.filename}", e.detail or "connection failed",
                _kept_hint(cache_dir, d),
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def _into_cache(d: Distribution, cache_dir: Path, kept: dict[str, int | None], *,
                      progress: bool, transport: httpx.AsyncBaseTransport | None,
                      ca_bundle: str | None, say: Say | None) -> tuple[Path, bool]:
    """One download attempt into the file cache; ``kept`` says, after it, how many bytes
    were there at its start and are there now (for the messages of an interrupted one)."""
    import httpx

    from spacy_index.cache import FileCache, Upstream
    from spacy_index.http import make_async_client

    assert d.sha256 is not None
    up = Upstream(url=d.url, filename=d.filename, sha256=d.sha256, size=d.size)
    async with make_async_client(transport=transport, ca_bundle=ca_bundle,
                                 timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        cache = FileCache(cache_dir, client, resume=True)
        kept["at_start"] = cache.partial_size(d.sha256)
        try:
            stream = cache.open(up)
            async with stream:
                if stream.hit and stream.path is not None:
                    return stream.path, False
                kept["total"] = stream.size
                if kept["at_start"] and say is not None:
                    say(f"{d.filename}: resuming the download kept from before "
                        f"({kept['at_start']:,} bytes)")
                with _progress(d.filename, stream.size, enabled=progress) as advance:
                    async for chunk in stream:
                        advance(len(chunk))
            return cache.path(d.sha256), True
        finally:
            await cache.aclose()
            kept["now"] = cache.partial_size(d.sha256)


def _kept_hint(cache_dir: Path, d: Distribution) -> str:
    path = cache_dir / "partial" / f"{d.sha256}.partial"
    try:
        have = path.stat().st_size
    except OSError:
        have = 0
    if have:
        return (f"{have:,} bytes of it are kept in the cache and the same command resumes "
                "from there; check the network")
    return "nothing is cached for it yet; check the network"


class _progress:
    """A rich progress bar (size, speed, ETA) on stderr; silent when not a terminal."""

    def __init__(self, name: str, total: int | None, *, enabled: bool) -> None:
        self._enabled = enabled
        if not enabled:
            return
        from spacy_index.progress import transfer_progress

        self._progress = transfer_progress()
        self._task = self._progress.add_task(name, total=total)

    def __enter__(self) -> Callable[[int], None]:
        if not self._enabled:
            return lambda n: None
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            self._progress.stop()

