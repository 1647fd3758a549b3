"""The workload of bench/cache.py: the wheels, the Zipf sequence, reference LRU/LFU hit rates, the
cache-size sampler and the statistics of one run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from urllib.parse import unquote

from harness.procfs import Sampler
from harness.util import MB, log

PROJECTS = 10


VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0")


CLIENT_UA = "cachebench-client"


JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def file_sizes(n: int, lo_mb: float, hi_mb: float) -> list[int]:
    """``n`` sizes from ``lo_mb`` to ``hi_mb``, denser at the small end (lo + (hi-lo)·x^1.5):
    1-8 MB for 40 files sum to ~152 MB."""
    return [int((lo_mb + (hi_mb - lo_mb) * (i / max(1, n - 1)) ** 1.5) * MB) for i in range(n)]


def build_wheels(work: Path, n: int, lo_mb: float, hi_mb: float, seed: int) -> list[dict]:
    """``n`` valid, distinct wheels (random padding, stored uncompressed), memoized on disk."""
    sizes = file_sizes(n, lo_mb, hi_mb)
    key = f"n{n}-{lo_mb:g}-{hi_mb:g}MB-seed{seed}"
    folder = work / "cache-wheels" / key
    manifest = folder / "manifest.json"
    if manifest.exists():
        files = json.loads(manifest.read_text())
        if all(Path(f["path"]).is_file() and Path(f["path"]).stat().st_size == f["size"]
               for f in files):
            return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.monotonic()
    # sizes are dealt to (project, version) by a seeded shuffle: popularity (below) and size
    # are independent
    order = list(range(n))
    random.Random(seed).shuffle(order)
    files = []
    for i in range(n):
        project = f"cachebench-{i // len(VERSIONS):02d}"
        version = VERSIONS[i % len(VERSIONS)]
        mod = project.replace("-", "_")
        filename = f"{mod}-{version}-py3-none-any.whl"
        path = folder / filename
        target = sizes[order[i]]
        rng = random.Random(seed * 100_003 + i)
        dist = f"{mod}-{version}.dist-info"
        meta = (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                f"Summary: bench/cache.py test file {i}\n").encode()
        wheel = b"Wheel-Version: 1.0\nGenerator: bench/cache.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        init = f'"""cachebench file {i}"""\n'.encode()
        overhead = 1200 + 3 * len(dist) + 2 * len(mod)  # headers, central directory, RECORD
        pad = rng.randbytes(max(0, target - overhead - len(meta) - len(wheel) - len(init)))
        record = "".join(
            f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n"
            for name, data in ((f"{mod}/__init__.py", init), (f"{mod}/data.bin", pad),
                               (f"{dist}/METADATA", meta), (f"{dist}/WHEEL", wheel)))
        record += f"{dist}/RECORD,,\n"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"{mod}/__init__.py", init)
            z.writestr(f"{mod}/data.bin", pad)
            z.writestr(f"{dist}/METADATA", meta)
            z.writestr(f"{dist}/WHEEL", wheel)
            z.writestr(f"{dist}/RECORD", record)
        data = path.read_bytes()
        files.append({"index": i, "project": project, "version": version, "filename": filename,
                      "path": str(path), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    manifest.write_text(json.dumps(files, indent=1))
    log(f"built {n} wheels ({sum(f['size'] for f in files) / MB:.0f} MB) in "
        f"{time.monotonic() - t:.1f}s under {folder}")
    return files


def zipf_sequence(n_files: int, n_requests: int, s: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded Zipf(s) sequence of file indices; also the rank → file mapping used."""
    rng = random.Random(seed)
    by_rank = list(range(n_files))
    rng.shuffle(by_rank)
    weights = [1 / (k ** s) for k in range(1, n_files + 1)]
    ranks = rng.choices(range(n_files), weights=weights, k=n_requests)
    return [by_rank[r] for r in ranks], by_rank


def simulate(seq: list[int], sizes: list[int], cap: int, policy: str) -> dict:
    """Hit rate and bytes missed of a sequential cache of ``cap`` bytes on ``seq``: ``lru``,
    or ``lfu`` as proxpi evicts (fewest hits first, then smallest; counts die with the entry;
    a file larger than the cap is never kept)."""
    hits = missed = 0
    lru: OrderedDict[int, None] = OrderedDict()
    nhits: dict[int, int] = {}
    used = 0
    for f in seq:
        if f in lru:
            hits += 1
            lru.move_to_end(f)
            nhits[f] = nhits.get(f, 0) + 1
            continue
        missed += sizes[f]
        if policy == "lru":
            lru[f] = None
            used += sizes[f]
            while used > cap and lru:
                old, _ = lru.popitem(last=False)
                used -= sizes[old]
        else:
            victims = sorted(lru, key=lambda k: (nhits.get(k, 0), sizes[k]))
            while used + sizes[f] > cap and victims:
                old = victims.pop(0)
                del lru[old]
                nhits.pop(old, None)
                used -= sizes[old]
            lru[f] = None
            nhits[f] = 0
            used += sizes[f]
    return {"hit_rate": hits / len(seq), "misses": len(seq) - hits, "missed_bytes": missed}


class DiskPeak(Sampler):
    """Peak sizes of a cache folder, by kind, walked every ``interval`` s in a thread.
    ``kind(relpath)`` names the bucket of a file ("files", "metadata", "partial", "other")."""

    final = True

    def __init__(self, root: Path, kind, *, cap: int, limit: int, interval: float = 0.02) -> None:
        super().__init__(interval, "disk-peak")
        self.root, self.kind = root, kind
        self.cap, self.limit = cap, limit
        #: samples of the bounded bucket over the cap / over the limit (cap + one file)
        self.over_cap = self.over_limit = 0
        self.series: list[tuple[float, int, int]] = []  #: (s, bounded, partial)
        self.peak: dict[str, int] = {}
        self.peak_at: dict[str, float] = {}
        self.last: dict[str, int] = {}
        self.t0 = time.monotonic()

    def now(self) -> dict[str, int]:
        out: Counter = Counter()
        for dirpath, _dirs, names in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in names:
                with contextlib.suppress(OSError):
                    out[self.kind(os.path.join(rel, name))] += os.stat(os.path.join(dirpath, name)).st_size
        return dict(out)

    def sample(self) -> None:
        cur = self.now()
        buckets = {**cur, "bounded": self.bounded(cur), "all": sum(cur.values())}
        for k, v in buckets.items():
            if v > self.peak.get(k, -1):
                self.peak[k] = v
                self.peak_at[k] = round(time.monotonic() - self.t0, 3)
        self.last = buckets
        self.samples += 1
        self.over_cap += buckets["bounded"] > self.cap
        self.over_limit += buckets["bounded"] > self.limit
        self.series.append((round(time.monotonic() - self.t0, 3), buckets["bounded"],
                            cur.get("partial", 0)))

    @staticmethod
    def bounded(cur: dict[str, int]) -> int:
        return cur.get("files", 0) + cur.get("metadata", 0)  # proxpi: "files" only


def serve_kind(rel: str) -> str:
    parts = Path(rel).parts
    for k in ("files", "metadata", "partial"):
        if k in parts:
            return k
    return "other"  # index.sqlite (+ WAL), locks


def proxpi_kind(rel: str) -> str:
    return "partial" if rel.endswith(".proxpi-partial") else "files"


CLIENT_FIELDS = ("i", "file", "worker", "status", "bytes", "start", "seconds", "ttfb", "redirects",
                 "ok", "error", "t_start", "t_end")


def split_by_upstream(rows: list[list], reqs: list[dict], files: list[dict]) -> list[bool]:
    """For each client row: was an upstream GET of its file in flight during the request (a
    miss, or a request that joined one)? Both clocks are CLOCK_MONOTONIC."""
    spans: dict[int, list[tuple[float, float]]] = {}
    index = {"/packages/" + f["filename"]: f["index"] for f in files}
    for r in reqs:
        f = index.get(unquote(r["path"].split("?", 1)[0]))
        if f is not None and r["method"] == "GET":
            spans.setdefault(f, []).append((r["t0"], r["t"]))
    return [any(u0 <= row[12] and u1 >= row[11] for u0, u1 in spans.get(row[1], ()))
            for row in rows]


def longest_over(series: list[tuple[float, int, int]], limit: int) -> float:
    """The longest time (s) the bounded size stayed above ``limit``, from first sample above
    to first sample back under."""
    best, start = 0.0, None
    for t, b, _p in series:
        if b > limit and start is None:
            start = t
        elif b <= limit and start is not None:
            best, start = max(best, t - start), None
    if start is not None and series:
        best = max(best, series[-1][0] - start)
    return round(best, 3)


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]
