"""Core metadata of wheels: from files (zipfile) and from HTTP servers (range requests)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from spacy_index.errors import (
    BadRangeResponse,
    CorruptWheel,
    InvalidFilename,
    MetadataError,
    RangeNotSupported,
    UpstreamError,
)
from spacy_index.wheelmeta import (
    RemoteMetadata,
    metadata_from_remote_wheel,
    metadata_from_wheel_file,
    metadata_plan,
)
from tests.fakegithub import FakeGitHub, Fault
from tests.servers import StoppableHTTPServer, serve_http

PAD = 5 << 20  # 5 MB of incompressible padding
TAIL = 65536

METADATA = (
    "Metadata-Version: 2.1\n"
    "Name: demo_pkg\n"
    "Version: 1.0\n"
    "Summary: A demo package\n"
    "Requires-Dist: spacy<3.9.0,>=3.8.0\n"
    "Description-Content-Type: text/markdown\n"
    "\n" + "A description that deflates well. " * 60 + "\n"
).encode()


# --------------------------------------------------------------------------- #
# Wheels
# --------------------------------------------------------------------------- #
def _members(name: str, version: str, pad: int, pad_first: bool, meta: bytes) -> list[tuple[str, bytes]]:
    dist_info = f"{name}-{version}.dist-info"
    init = (f"{name}/__init__.py", b"__version__ = '1.0'\n")
    padding = (f"{name}/pad.bin", random.Random(pad).randbytes(pad))
    wheel = (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    metadata = (f"{dist_info}/METADATA", meta)
    record = (f"{dist_info}/RECORD", b"")
    if pad_first:
        return [init, padding, metadata, wheel, record]
    return [init, metadata, wheel, padding, record]


def make_wheel(
    out: Path,
    *,
    name: str = "demo_pkg",
    version: str = "1.0",
    pad: int = 0,
    pad_first: bool = True,
    compression: int = zipfile.ZIP_DEFLATED,
    metadata_compression: int | None = None,
    force_zip64: bool = False,
    metadata: bytes = METADATA,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for member, data in [*_members(name, version, pad, pad_first, metadata), *extra]:
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 2, 0, 0, 0))
            info.compress_type = compression
            if metadata_compression is not None and member.endswith("/METADATA"):
                info.compress_type = metadata_compression
            with zf.open(info, "w", force_zip64=force_zip64) as fh:
                fh.write(data)
    return path


def make_zip64_wheel(out: Path, *, pad_first: bool, sentinels: bool = False) -> Path:
    """A wheel with a ZIP64 end of central directory (record + locator) and ZIP64 extras in
    the central directory, as zipfile writes them for archives beyond 4 GiB: zipfile's 4 GiB
    limit is lowered to 1 KiB while writing. ``sentinels`` also puts 0xFFFF.. in the classic
    end record, as writers do when the values really overflow."""
    with mock.patch.object(zipfile, "ZIP64_LIMIT", 1024):
        path = make_wheel(out, pad=PAD, pad_first=pad_first, force_zip64=True)
    data = bytearray(path.read_bytes())
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
    if sentinels:
        pos = data.rindex(b"PK\x05\x06")
        struct.pack_into("<4H2L", data, pos + 4, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        path.write_bytes(bytes(data))
    return path


def raw_zip(members: list[tuple[str, bytes, int, bytes]]) -> bytes:
    """A ZIP written by hand: ``(name, data, method, local_extra)``; the central directory
    has no extra fields, so local and central extra lengths differ."""
    out = bytearray()
    central = bytearray()
    for name, data, method, local_extra in members:
        raw = name.encode()
        if method == zipfile.ZIP_DEFLATED:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            comp = c.compress(data) + c.flush()
        else:
            comp = data
        crc = zlib.crc32(data)
        offset = len(out)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0x21, crc,
                           len(comp), len(data), len(raw), len(local_extra))
        out += raw + local_extra + comp
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0,
                               0x21, crc, len(comp), len(data), len(raw), 0, 0, 0, 0,
                               0o644 << 16, offset)
        central += raw
    cd_offset = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                       len(central), cd_offset, 0)
    return bytes(out)


def zip_metadata(path: Path | bytes) -> bytes:
    """METADATA as zipfile reads it (the reference)."""
    src: Any = path if isinstance(path, Path) else io.BytesIO(path)
    with zipfile.ZipFile(src) as zf:
        assert zf.testzip() is None
        return zf.read("demo_pkg-1.0.dist-info/METADATA")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wheels")
    made = {
        "deflated-pad-before": make_wheel(root / "a", pad=PAD, pad_first=True),
        "deflated-pad-after": make_wheel(root / "b", pad=PAD, pad_first=False),
        "stored-pad-before": make_wheel(root / "c", pad=PAD, compression=zipfile.ZIP_STORED),
        "stored-pad-after": make_wheel(
            root / "d", pad=PAD, pad_first=False, compression=zipfile.ZIP_STORED
        ),
        "force-zip64-pad-after": make_wheel(root / "e", pad=PAD, pad_first=False, force_zip64=True),
        "zip64-pad-before": make_zip64_wheel(root / "f", pad_first=True),
        "zip64-pad-after": make_zip64_wheel(root / "g", pad_first=False),
        "zip64-sentinels": make_zip64_wheel(root / "h", pad_first=False, sentinels=True),
        "small": make_wheel(root / "i"),
    }
    for name in ("deflated-pad-after", "zip64-pad-after"):  # self-extracting style: data in front
        src = made[name]
        dst = root / f"prepended-{name}" / src.name
        dst.parent.mkdir()
        dst.write_bytes(b"#!/bin/sh\necho not a zip\n" * 40 + src.read_bytes())
        made[f"prepended-{name}"] = dst
    return made


# --------------------------------------------------------------------------- #
# A small HTTP server with byte ranges
# --------------------------------------------------------------------------- #
@dataclass
class Served:
    path: str
    range: str | None
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0
    aborted: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class RangeServer(StoppableHTTPServer):
    """``/f/<name>`` serves a file (with ``Range`` unless ``ranges=False``); ``/r/<name>``
    302-redirects there. ``lie_from=n``: from the n-th request on (0-based), 206 answers
    announce a ``Content-Range`` starting one byte later than what they send."""

    files: dict[str, bytes]
    ranges: bool
    lie_from: int | None
    requests: list[Served]
    lock: threading.Lock

    def url(self, name: str, *, redirect: bool = False, userinfo: str = "") -> str:
        host, port = self.server_address[:2]
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}{host}:{port}/{'r' if redirect else 'f'}/{name}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    @property
    def bytes_sent(self) -> int:
        return sum(r.bytes_sent for r in self.requests)

    @property
    def ranges_asked(self) -> list[str | None]:
        return [r.range for r in self.requests]


@contextlib.contextmanager
def serve(files: dict[str, bytes], *, ranges: bool = True,
          lie_from: int | None = None) -> Iterator[RangeServer]:
    with serve_http(_RangeHandler, server_class=RangeServer, name="range-server") as server:
        server.files, server.ranges, server.lie_from = files, ranges, lie_from
        server.requests, server.lock = [], threading.Lock()
        yield server


class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: RangeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        rec = Served(self.path, self.headers.get("Range"),
                     {k.lower(): v for k, v in self.headers.items()})
        with self.server.lock:
            index = len(self.server.requests)
            self.server.requests.append(rec)
        try:
            self._serve(rec, index)
        finally:
            rec.done.set()

    def _serve(self, rec: Served, index: int) -> None:
        kind, _, name = self.path.lstrip("/").partition("/")
        data = self.server.files.get(name)
        if data is None or kind not in ("f", "r"):
            self._send(rec, 404, [], b"not found\n")
        elif kind == "r":
            self._send(rec, 302, [("Location", f"/f/{name}")], b"")
        else:
            span = _parse_range(rec.range, len(data)) if self.server.ranges else None
            if span is None:
                self._send(rec, 200, [("ETag", '"v1"')], data)
            else:
                start, end = span
                shown = start + 1 if self.server.lie_from is not None and \
                    index >= self.server.lie_from else start
                self._send(rec, 206, [("ETag", '"v1"'),
                                      ("Content-Range", f"bytes {shown}-{end}/{len(data)}")],
                           data[start:end + 1])

    def _send(self, rec: Served, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        rec.status = status
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        view = memoryview(body)
        try:
            for pos in range(0, len(view), 65536):
                chunk = view[pos:pos + 65536]
                self.wfile.write(chunk)
                rec.bytes_sent += len(chunk)
        except OSError:
            rec.aborted = True
            self.close_connection = True


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
    if m is None:
        return None
    if not m.group(1):
        return max(0, size - int(m.group(2))), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    return start, min(end, size - 1)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def fetch(url: str, *, filename: str, event_hooks: Any = None, **kwargs: Any) -> RemoteMetadata:
    async def run() -> RemoteMetadata:
        async with httpx.AsyncClient(trust_env=False, event_hooks=event_hooks) as client:
            return await metadata_from_remote_wheel(client, url, filename=filename, **kwargs)

    return asyncio.run(run())


def drive(data: bytes, tail: int = TAIL, filename: str = "demo_pkg-1.0-py3-none-any.whl",
          ) -> tuple[bytes, list[tuple[int, int]]]:
    """Run the sans-I/O plan over ``data`` in memory: (the METADATA, the ranges it asked for)."""
    plan = metadata_plan(filename, len(data), data[len(data) - min(tail, len(data)):])
    asked: list[tuple[int, int]] = []
    try:
        want = next(plan)
        while True:
            asked.append(want)
            want = plan.send(data[want[0]:want[1]])
    except StopIteration as done:
        return done.value, asked


def compressed_size(path: Path) -> int:
    with zipfile.ZipFile(path) as zf:
        return zf.getinfo("demo_pkg-1.0.dist-info/METADATA").compress_size


# --------------------------------------------------------------------------- #
# Local files
# --------------------------------------------------------------------------- #
def test_metadata_from_wheel_file_matches_zipfile(wheels: dict[str, Path]) -> None:
    for path in wheels.values():
        got = metadata_from_wheel_file(path)
        assert got == METADATA == zip_metadata(path)


def test_metadata_from_wheel_file_other_name(wheels: dict[str, Path], tmp_path: Path) -> None:
    tmp = tmp_path / "download.part"
    tmp.write_bytes(wheels["small"].read_bytes())
    assert metadata_from_wheel_file(tmp, "demo_pkg-1.0-py3-none-any.whl") == METADATA
    with pytest.raises(InvalidFilename):
        metadata_from_wheel_file(tmp)


def test_dist_info_is_chosen_by_name_and_version(tmp_path: Path) -> None:
    other = b"Metadata-Version: 2.1\nName: vendored\nVersion: 2.0\n\n"
    path = make_wheel(
        tmp_path,
        extra=(
            ("vendored-2.0.dist-info/METADATA", other),
            ("demo_pkg-1.0.dist-info/sub/METADATA", b"not top level"),
            ("aaa-1.0.dist-info/METADATA", b"wrong project"),
        ),
    )
    assert metadata_from_wheel_file(path) == METADATA
    # unnormalized spellings of the same project and version match
    assert metadata_from_wheel_file(path, "Demo.Pkg-1.0.0-py3-none-any.whl") == METADATA
    with pytest.raises(CorruptWheel, match=r"no \.dist-info directory for demo-pkg 2\.0") as e:
        metadata_from_wheel_file(path, "demo_pkg-2.0-py3-none-any.whl")
    assert e.value.filename == "demo_pkg-2.0-py3-none-any.whl"
    assert e.value.source == str(path)


def test_dist_info_ambiguity(tmp_path: Path) -> None:
    # two spellings of the matching dist-info; only one has a METADATA
    path = make_wheel(tmp_path / "one", extra=(("Demo_Pkg-1.0.dist-info/RECORD", b""),))
    assert metadata_from_wheel_file(path) == METADATA
    path = make_wheel(tmp_path / "two", extra=(("Demo_Pkg-1.0.dist-info/METADATA", b"x"),))
    with pytest.raises(CorruptWheel, match="ambiguous"):
        metadata_from_wheel_file(path)
    path = tmp_path / "three" / "demo_pkg-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo_pkg-1.0.dist-info/WHEEL", b"")
    with pytest.raises(CorruptWheel, match="has no METADATA"):
        metadata_from_wheel_file(path)


def test_wheel_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(CorruptWheel) as e:
        metadata_from_wheel_file(bad)
    assert isinstance(e.value, UpstreamError)
    assert "\n" not in str(e.value)
    data = bytearray(make_wheel(tmp_path / "s", compression=zipfile.ZIP_STORED).read_bytes())
    data[data.index(b"A description")] ^= 0x20
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptWheel, match="CRC"):
        metadata_from_wheel_file(bad)


# --------------------------------------------------------------------------- #
# Pure parsing
# --------------------------------------------------------------------------- #
def test_the_plan_over_bytes_in_memory(wheels: dict[str, Path]) -> None:
    for key in ("deflated-pad-before", "zip64-pad-after", "zip64-sentinels", "stored-pad-after"):
        data = wheels[key].read_bytes()
        with zipfile.ZipFile(wheels[key]) as zf:
            info = zf.getinfo("demo_pkg-1.0.dist-info/METADATA")
            cd = zf.start_dir
        got, asked = drive(data, filename=wheels[key].name)
        assert got == METADATA
        if "pad-before" in key:  # the member, the directory and the end records in the tail
            assert asked == []
        else:  # the member, from its local header, in one range
            assert len(asked) == 1 and asked[0][0] == info.header_offset
        # the central directory lies before a 100-byte tail: the plan asks for the rest of it
        got, asked = drive(data, tail=100, filename=wheels[key].name)
        assert got == METADATA and asked[0] == (cd, len(data) - 100)


def test_the_plan_asks_for_the_largest_end_area_when_there_is_a_comment() -> None:
    comment = b"c" * 60000
    body = raw_zip([("demo_pkg-1.0.dist-info/METADATA", METADATA, 0, b"")])
    data = body[:-2] + struct.pack("<H", len(comment)) + comment
    assert zip_metadata(data) == METADATA
    got, asked = drive(data, tail=1000)
    assert got == METADATA
    assert asked[0] == (0, len(data) - 1000)  # the file is smaller than the largest end area
    for junk in (b"x" * 30, b""):
        with pytest.raises(CorruptWheel, match="not a ZIP"):
            drive(junk)


def test_the_plan_refuses_a_central_directory_over_the_cap() -> None:
    body = raw_zip([("demo_pkg-1.0.dist-info/METADATA", METADATA, 0, b"")])
    claim = 17 << 20
    data = bytes(claim) + body[:-10] + struct.pack("<LL", claim, 0) + body[-2:]
    with pytest.raises(MetadataError, match="byte limit for range reads"):
        drive(data)
    # a member's sizes as the central directory records them: over MAX_METADATA_SIZE
    big = bytearray(body)
    at = big.index(b"PK\x01\x02")
    big[at + 20:at + 28] = struct.pack("<LL", 40 << 20, 40 << 20)
    with pytest.raises(CorruptWheel, match="implausibly large"):
        drive(bytes(big))


def test_prepended_data_is_allowed(wheels: dict[str, Path]) -> None:
    for key in ("prepended-deflated-pad-after", "prepended-zip64-pad-after"):
        data = wheels[key].read_bytes()
        assert not data.startswith(b"PK")
        assert drive(data, filename=wheels[key].name)[0] == METADATA
        assert metadata_from_wheel_file(wheels[key]) == METADATA


# --------------------------------------------------------------------------- #
# Remote wheels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "key",
    [
        "deflated-pad-before",
        "deflated-pad-after",
        "stored-pad-before",
        "stored-pad-after",
        "force-zip64-pad-after",
        "zip64-pad-before",
        "zip64-pad-after",
        "zip64-sentinels",
        "prepended-deflated-pad-after",
        "prepended-zip64-pad-after",
        "small",
    ],
)
def test_remote_metadata(wheels: dict[str, Path], key: str) -> None:
    path = wheels[key]
    data = path.read_bytes()
    with serve({path.name: data}) as server:
        got = fetch(server.url(path.name), filename=path.name, size=len(data))
    assert got.metadata == METADATA == metadata_from_wheel_file(path) == zip_metadata(path)
    assert got.size == len(data)
    assert got.requests == len(server.requests)
    assert got.bytes_transferred == server.bytes_sent
    assert server.requests[0].range == f"bytes=-{TAIL}"
    assert all(r.status == 206 for r in server.requests)
    assert all(r.headers.get("accept-encoding") == "identity" for r in server.requests)
    if "pad-before" in key or key == "small":
        # METADATA, the central directory and the end records are all in the tail
        assert len(server.requests) == 1
        assert server.bytes_sent == min(TAIL, len(data))
    else:
        assert len(server.requests) == 2
        assert server.bytes_sent <= TAIL + compressed_size(path) + 30 + 100 + 1024
        assert server.requests[1].headers.get("if-range") == '"v1"'


def test_remote_follows_redirects_once(wheels: dict[str, Path]) -> None:
    path = wheels["deflated-pad-after"]
    with serve({path.name: path.read_bytes()}) as server:
        got = fetch(server.url(path.name, redirect=True), filename=path.name)
    assert got.metadata == METADATA
    # the redirect, the tail (Range kept across the redirect), the member straight from the
    # redirect target
    assert [(r.path.split("/")[1], r.status) for r in server.requests] == [
        ("r", 302), ("f", 206), ("f", 206)]
    assert server.requests[0].range == server.requests[1].range == f"bytes=-{TAIL}"
    assert got.requests == 3


def test_remote_small_tail_fetches_exactly_the_missing_directory(wheels: dict[str, Path]) -> None:
    path = wheels["deflated-pad-before"]
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        cd_offset = zf.start_dir
    with serve({path.name: data}) as server:
        got = fetch(server.url(path.name), filename=path.name, tail=100)
    assert got.metadata == METADATA
    assert server.ranges_asked[:2] == ["bytes=-100", f"bytes={cd_offset}-{len(data) - 101}"]
    # then the member, which ends where the central directory starts
    assert len(server.requests) == 3
    assert server.ranges_asked[2].endswith(f"-{cd_offset - 1}")  # type: ignore[union-attr]
    assert server.bytes_sent < 100 + (len(data) - cd_offset) + compressed_size(path) + 200


@pytest.mark.parametrize("tail", [22, 30, 100, 1000])
@pytest.mark.parametrize("key", ["deflated-pad-after", "zip64-pad-before", "zip64-sentinels",
                                 "prepended-zip64-pad-after", "small"])
def test_remote_tiny_tails(wheels: dict[str, Path], key: str, tail: int) -> None:
    """Tails too short for the end records: the reader asks for what it is missing."""
    path = wheels[key]
    data = path.read_bytes()
    with serve({path.name: data}) as server:
        got = fetch(server.url(path.name), filename=path.name, tail=tail)
    assert got.metadata == METADATA
    assert len(server.requests) <= 4
    assert server.bytes_sent <= (len(data) - PAD if len(data) > PAD else len(data))


def test_remote_long_comment() -> None:
    comment = b"c" * 60000
    body = raw_zip([("demo_pkg-1.0.dist-info/METADATA", METADATA, zipfile.ZIP_DEFLATED, b""),
                    ("demo_pkg/filler.bin", random.Random(2).randbytes(100_000), 0, b"")])
    data = body[:-2] + struct.pack("<H", len(comment)) + comment
    name = "demo_pkg-1.0-py3-none-any.whl"
    with serve({name: data}) as server:
        got = fetch(server.url(name), filename=name, tail=1000)
    assert got.metadata == METADATA
    # the tail; up to the largest possible end area; the member
    assert len(server.requests) == 3
    assert server.bytes_sent < 65536 + 1000 + len(METADATA) + 1024 + 200


def test_remote_long_local_extra_needs_one_more_request() -> None:
    filler = random.Random(1).randbytes(200_000)
    long_extra = struct.pack("<HH", 0xCAFE, 3000) + bytes(3000)
    data = raw_zip([
        ("demo_pkg/__init__.py", b"", 0, b""),
        ("demo_pkg-1.0.dist-info/METADATA", METADATA, zipfile.ZIP_DEFLATED, long_extra),
        ("demo_pkg/filler.bin", filler, 0, b""),
    ])
    assert zip_metadata(data) == METADATA
    name = "demo_pkg-1.0-py3-none-any.whl"
    with serve({name: data}) as server:
        got = fetch(server.url(name), filename=name)
    assert got.metadata == METADATA
    # tail; header + data as the central directory predicts + slack; the rest
    assert len(server.requests) == 3
    first, second = (int(x) for x in server.ranges_asked[1][6:].split("-"))  # type: ignore[index]
    third = int(server.ranges_asked[2][6:].split("-")[0])  # type: ignore[index]
    assert first == data.index(b"PK\x03\x04", 1)  # the METADATA local header
    assert third == second + 1
    assert got.bytes_transferred < TAIL + 3000 + len(METADATA) + 1024 + 200


@pytest.mark.slow
def test_remote_real_spacy_wheel_via_fake_github(tmp_path: Path) -> None:
    from tests.wheels import build_model_package

    pkg = build_model_package(tmp_path, pad_bytes=20 << 20)
    wheel = pkg.wheel
    assert wheel.stat().st_size > 20 << 20
    assert metadata_from_wheel_file(wheel) == pkg.metadata
    with FakeGitHub(load_fixture=False) as gh:
        rel = gh.add_release("en_core_web_sm-3.8.0", {wheel.name: wheel.read_bytes()})
        asset = rel["assets"][0]
        assert asset["browser_download_url"].startswith(gh.web_url)
        got = fetch(asset["browser_download_url"], filename=wheel.name, size=asset["size"])
        requests = list(gh.requests)
    assert got.metadata == pkg.metadata
    sent = sum(r.bytes_sent for r in requests)
    assert sent <= TAIL + len(pkg.metadata)
    assert len(requests) <= 3
    assert got.requests == len(requests)
    assert got.bytes_transferred == sent
    # a 302 from the web origin, then a 206 from the signed objects URL; Range survived
    assert [(r.origin, r.status) for r in requests][:2] == [("web", 302), ("objects", 206)]
    assert all(r.headers.get("range") for r in requests)
    assert all("authorization" not in r.headers for r in requests)
    print(f"\n20 MB spaCy wheel: {got.requests} requests, {got.bytes_transferred} bytes")


def test_remote_via_fake_github_expired_signed_url(wheels: dict[str, Path]) -> None:
    """The follow-up goes to the signed URL; when that refuses, back to the original URL."""
    path = wheels["deflated-pad-after"]
    with FakeGitHub(load_fixture=False) as gh:
        rel = gh.add_release("demo-1.0", {path.name: path.read_bytes()})
        url = rel["assets"][0]["browser_download_url"]

        injected: list[Fault] = []

        async def expire(response: httpx.Response) -> None:
            if response.status_code == 206 and not injected:
                injected.append(Fault.status(403, origin="objects"))
                gh.inject(injected[0])

        got = fetch(url, filename=path.name, event_hooks={"response": [expire]})
        seen = [(r.origin, r.status) for r in gh.requests]
    assert got.metadata == METADATA
    assert seen == [("web", 302), ("objects", 206), ("objects", 403), ("web", 302),
                    ("objects", 206)]
    assert got.requests == 5


# --------------------------------------------------------------------------- #
# Remote failures
# --------------------------------------------------------------------------- #
def test_no_range_support_raises_without_reading() -> None:
    body = bytes(32 << 20)
    name = "demo_pkg-1.0-py3-none-any.whl"
    with serve({name: body}, ranges=False) as server:
        url = server.url(name)
        start = time.monotonic()
        with pytest.raises(RangeNotSupported) as e:
            fetch(url, filename=name)
        assert server.requests[0].done.wait(10)
    assert isinstance(e.value, MetadataError) and isinstance(e.value, UpstreamError)
    assert e.value.status == 200
    assert e.value.url == url
    assert name in str(e.value) and url in str(e.value)
    assert len(server.requests) == 1
    # the client hung up: the server could not send the 32 MB
    assert server.requests[0].aborted
    assert server.bytes_sent < len(body) // 2
    assert time.monotonic() - start < 10


class _TrackedStream(httpx.AsyncByteStream, httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.iterated = False
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        self.iterated = True
        yield self.data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.iterated = True
        yield self.data

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_no_range_support_body_is_never_iterated() -> None:
    stream = _TrackedStream(b"PK" * 1000)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    name = "demo_pkg-1.0-py3-none-any.whl"

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await metadata_from_remote_wheel(client, "https://h/x.whl", filename=name)

    with pytest.raises(RangeNotSupported):
        asyncio.run(run())
    assert not stream.iterated
    assert stream.closed


@pytest.mark.parametrize("lie_from", [0, 1])
def test_wrong_content_range_raises(wheels: dict[str, Path], lie_from: int) -> None:
    path = wheels["deflated-pad-after"]
    with serve({path.name: path.read_bytes()}, lie_from=lie_from) as server:
        with pytest.raises(BadRangeResponse, match="got bytes") as e:
            fetch(server.url(path.name), filename=path.name)
        assert len(server.requests) == lie_from + 1
    assert e.value.filename == path.name


def _mock_fetch(handler: Any, name: str = "demo_pkg-1.0-py3-none-any.whl", **kw: Any) -> Any:
    async def run() -> RemoteMetadata:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await metadata_from_remote_wheel(client, "https://h/x.whl", filename=name,
                                                    **kw)

    return asyncio.run(run())


def test_bad_range_answers_raise() -> None:
    def answer(status: int, headers: dict[str, str], body: bytes = b"x" * 10) -> Any:
        return lambda request: httpx.Response(status, headers=headers, stream=_TrackedStream(body))

    cases = [
        (answer(206, {"Content-Range": "bytes 0-9/*"}), "size"),
        (answer(206, {}), "bad Content-Range"),
        (answer(206, {"Content-Range": "bytes 0-9/5"}), "bad Content-Range"),
        (answer(206, {"Content-Range": "bytes 1-10/11"}), "got bytes 1-10"),
        (answer(206, {"Content-Range": "bytes 0-9/10", "Content-Encoding": "gzip"}), "Encoding"),
        (answer(206, {"Content-Range": "bytes 0-9/10"}, b"x" * 11), "more than"),
        (answer(206, {"Content-Range": "bytes 0-9/10"}, b"x" * 9), "got 9 bytes"),
    ]
    for handler, message in cases:
        with pytest.raises(BadRangeResponse, match=message):
            _mock_fetch(handler)
    with pytest.raises(BadRangeResponse, match="expected 11"):
        _mock_fetch(answer(206, {"Content-Range": "bytes 0-9/10"}), size=11)
    with pytest.raises(CorruptWheel, match="not a ZIP"):
        _mock_fetch(answer(206, {"Content-Range": "bytes 0-9/10"}))
    with pytest.raises(MetadataError, match="HTTP 416") as e:
        _mock_fetch(answer(416, {"Content-Range": "bytes */0"}, b""))
    assert e.value.status == 416
    with pytest.raises(InvalidFilename):
        _mock_fetch(answer(206, {}), name="not-a-wheel.tar.gz")
    with pytest.raises(ValueError, match="tail"):
        _mock_fetch(answer(206, {}), tail=10)


def test_file_changing_between_requests(wheels: dict[str, Path]) -> None:
    data = wheels["deflated-pad-after"].read_bytes()
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) > 1:  # the If-Range validator no longer matches: the whole new file
            return httpx.Response(200, content=b"new file")
        start = len(data) - TAIL
        return httpx.Response(206, headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                                            "ETag": '"a"'}, content=data[start:])

    with pytest.raises(BadRangeResponse, match="changed"):
        _mock_fetch(handler)
    assert calls[1].headers["If-Range"] == '"a"'


def test_corrupted_member_fails_crc(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, pad=100_000, pad_first=False, compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[data.index(b"A description")] ^= 0x20  # still a well-formed zip; the CRC is wrong
    with serve({path.name: bytes(data)}) as server, \
            pytest.raises(CorruptWheel, match="Bad CRC-32") as e:
        fetch(server.url(path.name), filename=path.name)
    assert e.value.filename == path.name
    assert e.value.source == server.url(path.name)


def test_unsupported_compression(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, metadata_compression=zipfile.ZIP_BZIP2)
    assert metadata_from_wheel_file(path) == METADATA  # zipfile can, the remote reader cannot
    with serve({path.name: path.read_bytes()}) as server, \
            pytest.raises(MetadataError, match="unsupported compression method 12") as e:
        fetch(server.url(path.name), filename=path.name)
    assert type(e.value) is MetadataError


def test_errors_redact_credentials(wheels: dict[str, Path]) -> None:
    path = wheels["small"]
    with serve({path.name: path.read_bytes()}) as server:
        url = server.url("missing.whl", userinfo="alice:s3cret")
        with pytest.raises(MetadataError) as e:
            fetch(url, filename=path.name)
        with serve({path.name: path.read_bytes()}, ranges=False) as plain, \
                pytest.raises(RangeNotSupported) as e2:
            fetch(plain.url(path.name, userinfo="bob:hunter2"), filename=path.name)
    assert e.value.status == 404
    for err, secret in ((e.value, "s3cret"), (e2.value, "hunter2")):
        text = str(err)
        assert secret not in text and secret not in repr(err.args)
        assert "***@127.0.0.1" in text
        assert path.name in text
        assert "\n" not in text
