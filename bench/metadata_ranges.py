"""METADATA of a remote wheel by HTTP ranges: the hand-written ZIP parser (``--before REV``,
the metadata.py of a git revision) against the zipfile-based reader of the working tree.

For two wheels (100k empty members, a 6 MB central directory; and a spaCy-sized model wheel
of about 13 MB), each reader:

* ``plan``: the sans-I/O plan driven over the bytes in memory, the garbage collector paused
  as the server does (parsing time, ranges asked);
* ``http``: ``metadata_from_remote_wheel`` against a local HTTP server with Range support
  (wall time, requests, bytes).

Run: ``.venv/bin/python bench/metadata_ranges.py --before 9472ee5``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path
from typing import ClassVar

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.upstream import FakeUpstream, QuietHandler  # noqa: E402


def load_before(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/spacy_index/metadata.py"],
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("metadata_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["metadata_before"] = module
    exec(compile(source, "metadata_before.py", "exec"), module.__dict__)
    return module


def many_members(n: int) -> tuple[str, bytes]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            z.writestr(f"many/m{i:06d}.py", b"")
        z.writestr("many-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: many\nVersion: 1.0\n")
        z.writestr("many-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n")
    return "many-1.0-py3-none-any.whl", buf.getvalue()


def spacy_sized(tmp: Path) -> tuple[str, bytes]:
    from tests.wheels import build_model_package

    pkg = build_model_package(tmp, pad_bytes=12 << 20)
    return pkg.wheel.name, pkg.wheel.read_bytes()


def drive(module: types.ModuleType, filename: str, data: bytes, tail: int) -> int:
    """Run a module's plan over ``data``; returns the number of requests (tail included)."""
    plan_fn = getattr(module, "metadata_plan", None) or module._metadata_plan
    plan = plan_fn(filename, len(data), data[-tail:])
    requests = 1
    try:
        want = next(plan)
        while True:
            requests += 1
            want = plan.send(data[want[0]:want[1]])
    except StopIteration as done:
        assert done.value.startswith(b"Metadata-Version")
    return requests


class Handler(QuietHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        data = self.files[self.path.lstrip("/")]
        spec = self.headers["Range"].removeprefix("bytes=")
        first, _, last = spec.partition("-")
        if not first:
            start, end = max(0, len(data) - int(last)), len(data) - 1
        else:
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        self.requests.append(spec)
        body = data[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        self.wfile.write(body)


async def over_http(module: types.ModuleType, url: str, filename: str) -> tuple[float, int, int]:
    async with httpx.AsyncClient(trust_env=False) as client:
        started = time.perf_counter()
        got = await module.metadata_from_remote_wheel(client, url, filename=filename)
        took = time.perf_counter() - started
    assert got.metadata.startswith(b"Metadata-Version")
    return took, got.requests, got.bytes_transferred


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git revision of the old metadata.py")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from spacy_index import wheelmeta as after

    before = load_before(args.before)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [many_members(100_000), spacy_sized(Path(tmp))]
    with FakeUpstream(Handler) as server:
        for filename, data in wheels:
            measure_one(before, after, args.runs, server.url, filename, data)


def measure_one(before: types.ModuleType, after: types.ModuleType, runs: int, base: str,
                filename: str, data: bytes) -> None:
    """The old and the new reader on one wheel: in memory (the plan), then over HTTP."""
    Handler.files[filename] = data
    url = f"{base}/{filename}"
    print(f"{filename}: {len(data) / 1e6:.1f} MB")
    for label, module in (("before", before), ("after", after)):
        times, requests = [], 0
        for _ in range(runs):
            with module._gc_paused():  # as the server parses a big directory
                started = time.perf_counter()
                requests = drive(module, filename, data, 65536)
                times.append(time.perf_counter() - started)
        http_times, http = [], (0.0, 0, 0)
        for _ in range(runs):
            http = asyncio.run(over_http(module, url, filename))
            http_times.append(http[0])
        print(f"  {label:6} plan: median {statistics.median(times) * 1e3:7.1f} ms "
              f"(min {min(times) * 1e3:.1f}), {requests} requests | http: median "
              f"{statistics.median(http_times) * 1e3:7.1f} ms, {http[1]} requests, "
              f"{http[2]:,} bytes")


if __name__ == "__main__":
    main()
