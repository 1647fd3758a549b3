"""Mirror mode: every selected file downloaded (once, verified) through the same
content-addressed cache as ``serve``, with PEP 658 ``.metadata`` sidecars, so the index
needs nothing outside itself.

A mirror moves up to hundreds of GB, so it says how it goes: on a terminal a rich progress
display (files done of total, bytes, speed, ETA, the files in flight), otherwise one plain
line per finished file (CI logs). A download stopped early (Ctrl-C, a lost network) is
resumed by the next build from where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from spacy_index.cache import FileCache, Upstream
from spacy_index.catalog import Catalog
from spacy_index.http import make_async_client
from spacy_index.model import Distribution
from spacy_index.wheelmeta import metadata_from_wheel_file

Notify = Callable[[str], None]


@dataclass
class MirrorResult:
    catalog: Catalog
    #: ``files/<filename>`` → cached file, ``files/<filename>.metadata`` → bytes
    files: dict[str, Path | bytes]
    warnings: list[str]
    downloaded: int
    downloaded_bytes: int
    cached: int


class MirrorProgress:
    """What a mirror run reports, as it goes. This base class reports nothing.

    ``start`` comes first (``total_bytes`` is None when some sizes are unknown), then for
    each file ``done`` once it is in the cache (``downloaded`` False: it already was), and
    ``tick`` a few times a second with the bytes the running downloads have so far.
    """

    def start(self, files: int, total_bytes: int | None) -> None: ...

    def started(self, dist: Distribution) -> None: ...

    def done(self, dist: Distribution, size: int, downloaded: bool) -> None: ...

    def tick(self, in_flight: int) -> None: ...

    def stop(self) -> None: ...


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class PlainProgress(MirrorProgress):
    """One line per finished file through ``notify``: position, file, bytes, and for the
    run so far the bytes moved, the speed and the time left."""

    def __init__(self, notify: Notify, clock: Callable[[], float] = time.monotonic) -> None:
        self._notify = notify
        self._clock = clock
        self._files = 0
        self._total: int | None = None
        self._done = 0
        self._moved = 0
        self._to_move: int | None = None
        self._t0 = clock()

    def start(self, files: int, total_bytes: int | None) -> None:
        self._files, self._total, self._to_move = files, total_bytes, total_bytes
        self._t0 = self._clock()
        size = f" ({_gb(total_bytes)})" if total_bytes is not None else ""
        self._notify(f"mirroring {files:,} files{size} through the cache")

    def done(self, dist: Distribution, size: int, downloaded: bool) -> None:
        self._done += 1
        pos = f"[{self._done:,}/{self._files:,}]"
        if not downloaded:
            if self._to_move is not None:
                self._to_move -= size
            self._notify(f"{pos} {dist.filename}: {size:,} bytes, already in the cache")
            return
        self._moved += size
        elapsed = max(self._clock() - self._t0, 1e-6)
        speed = self._moved / elapsed
        tail = f"{_gb(self._moved)} downloaded, {speed / 1e6:,.1f} MB/s"
        left = None if self._to_move is None else self._to_move - self._moved
        if left is not None and left > 0 and speed > 0:
            tail += f", about {_duration(left / speed)} left"
        self._notify(f"{pos} {dist.filename}: {size:,} bytes, downloaded and verified; {tail}")


class RichProgress(MirrorProgress):  # pragma: no cover - needs a terminal
    """A rich display on stderr: files done of total, bytes, speed, ETA, files in flight."""

    def __init__(self) -> None:
        from spacy_index.progress import transfer_progress

        self._progress = transfer_progress("{task.fields[files]}", "{task.description}")
        self._task = self._progress.add_task("", total=None, files="")
        self._n = 0
        self._done = 0
        self._finished = 0  # bytes of finished downloads
        self._flying: list[str] = []

    def start(self, files: int, total_bytes: int | None) -> None:
        self._n = files
        self._progress.update(self._task, total=total_bytes, files=f"0/{files:,} files")
        self._progress.start()

    def started(self, dist: Distribution) -> None:
        self._flying.append(dist.filename)
        self._show()

    def done(self, dist: Distribution, size: int, downloaded: bool) -> None:
        self._done += 1
        if dist.filename in self._flying:
            self._flying.remove(dist.filename)
        task = self._progress.tasks[0]
        if downloaded:
            self._finished += size
        elif task.total is not None:  # the bar counts bytes to move
            self._progress.update(self._task, total=max(0, task.total - size))
        self._show()

    def tick(self, in_flight: int) -> None:
        self._progress.update(self._task, completed=self._finished + in_flight)

    def _show(self) -> None:
        names = ", ".join(self._flying[-2:]) + (" …" if len(self._flying) > 2 else "")
        self._progress.update(self._task, description=names,
                              files=f"{self._done:,}/{self._n:,} files")

    def stop(self) -> None:
        self._progress.stop()


def mirror(
    catalog: Catalog,
    cache_dir: Path,
    *,
    concurrency: int = 4,
    notify: Notify = lambda _: None,
    transport: httpx.AsyncBaseTransport | None = None,
    ca_bundle: str | None = None,
    progress: MirrorProgress | bool | None = None,
) -> MirrorResult:
    """Fetch every hashed file of ``catalog`` into the cache and lay out the mirror's files.

    Files without a known sha256 cannot be verified, so they are left out with a warning.
    ``progress``: True for the rich display (a terminal), a :class:`MirrorProgress`, or
    None/False for one plain line per finished file through ``notify``.
    """
    keep = [d for d in catalog.files if d.sha256]
    warnings = [f"left out of the mirror (no known sha256 to verify it): {d.filename}"
                for d in catalog.files if not d.sha256]
    if progress is True:
        report: MirrorProgress = RichProgress()
    elif isinstance(progress, MirrorProgress):
        report = progress
    else:
        report = PlainProgress(notify)
    paths, counts = asyncio.run(_fetch_all(keep, cache_dir, report, concurrency=concurrency,
                                           transport=transport, ca_bundle=ca_bundle))
    files: dict[str, Path | bytes] = {}
    dists = []
    for d in keep:
        path = paths[d.filename]
        files[f"files/{d.filename}"] = path
        meta_sha = None
        if d.kind == "wheel":
            metadata = metadata_from_wheel_file(path, d.filename)
            files[f"files/{d.filename}.metadata"] = metadata
            meta_sha = hashlib.sha256(metadata).hexdigest()
        dists.append(replace(d, size=path.stat().st_size, core_metadata_sha256=meta_sha))
    mirrored = Catalog.from_distributions(
        dists, source=catalog.source, snapshot_date=catalog.snapshot_date,
        warnings=catalog.warnings, tags_without_release=catalog.tags_without_release,
    )
    return MirrorResult(mirrored, files, warnings, counts["downloaded"], counts["bytes"],
                        counts["cached"])


async def _fetch_all(
    keep: list[Distribution], cache_dir: Path, report: MirrorProgress, *, concurrency: int,
    transport: httpx.AsyncBaseTransport | None, ca_bundle: str | None,
) -> tuple[dict[str, Path], dict[str, int]]:
    """Every file of ``keep`` in the cache, ``concurrency`` downloads at a time: the cached
    path by filename, and how many files were downloaded (and their bytes) or cached."""
    sizes = [d.size for d in keep]
    total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
    sem = asyncio.Semaphore(concurrency)
    paths: dict[str, Path] = {}
    counts = {"downloaded": 0, "bytes": 0, "cached": 0}
    flying: set[str] = set()
    async with make_async_client(transport=transport, ca_bundle=ca_bundle,
                                 timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        cache = FileCache(cache_dir, client, resume=True)

        async def one(d: Distribution) -> None:
            assert d.sha256 is not None
            async with sem:
                hit = await asyncio.to_thread(cache.cached, d.sha256)
                if hit is None:
                    flying.add(d.sha256)
                    report.started(d)
                    try:
                        path = await cache.ensure(Upstream(
                            url=d.url, filename=d.filename, sha256=d.sha256, size=d.size))
                    finally:
                        flying.discard(d.sha256)
                else:
                    path = hit
            size = path.stat().st_size
            if hit:
                counts["cached"] += 1
            else:
                counts["downloaded"] += 1
                counts["bytes"] += size
            paths[d.filename] = path
            report.done(d, size, downloaded=hit is None)

        async def ticker() -> None:
            while True:
                report.tick(sum(cache.received(sha) or 0 for sha in flying))
                await asyncio.sleep(0.2)

        report.start(len(keep), total)
        tick = asyncio.create_task(ticker())
        try:
            await asyncio.gather(*(one(d) for d in keep))
        finally:
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)
            await cache.aclose()
            report.tick(0)  # the last state: every finished download counted
            report.stop()
    return paths, counts
