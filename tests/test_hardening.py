"""Hardening: crashes mid-publish, bad input, disconnects, secrets, properties, and a soak."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacy_index.cli import main
from spacy_index.errors import InvalidFilename
from spacy_index.model import parse_filename
from spacy_index.publish.folder import read_tree
from spacy_index.server.negotiate import negotiate
from spacy_index.server.responses import _parse_range
from tests.fakegithub import FakeGitHub
from tests.servers import free_port, wait_healthy, write_simple_project
from tests.worlds import WorldSpec

# --------------------------------------------------------------------------- kill -9 publish
PUBLISHER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import spacy_index.publish.folder as publish
    from spacy_index.publish.folder import publish_folder

    # KILL_AT=n: SIGKILL ourselves at the n-th step of the publish (file writes, then the
    # swap, then the clean-up), i.e. at a chosen point instead of a timing-dependent one
    kill_at = int(os.environ.get("KILL_AT", "-1"))
    steps = [0]

    def step():
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        steps[0] += 1

    write_bytes, exchange = Path.write_bytes, publish._exchange
    Path.write_bytes = lambda self, data: (step(), write_bytes(self, data))[1]
    publish._exchange = lambda a, b: (step(), exchange(a, b), step())[1]
    gen = sys.argv[2]
    files = {f"simple/p{i}/index.html": (gen + str(i) + " " * 2000).encode() for i in range(300)}
    files[".spacy-index.json"] = json.dumps({"files": 300, "gen": gen}).encode()
    publish_folder(files, Path(sys.argv[1]))
""")


def generation_of(out: Path) -> str | None:
    """The generation of a complete tree, or None if it is not one."""
    tree = read_tree(out)
    marker = json.loads(tree.pop(".spacy-index.json"))
    gen = marker["gen"]
    expected = {f"simple/p{i}/index.html": (gen + str(i) + " " * 2000).encode() for i in range(300)}
    return gen if tree == expected else None


@pytest.mark.slow
def test_kill_9_at_random_points_of_a_publish_never_leaves_a_mixed_tree(tmp_path):
    out = tmp_path / "public"
    script = tmp_path / "publish.py"
    script.write_text(PUBLISHER)
    subprocess.run([sys.executable, str(script), str(out), "g0"], check=True)
    rng = random.Random(1234)
    seen = set()
    stop = threading.Event()
    torn: list[str] = []

    def reader():  # concurrently, every single read sees one complete generation's file
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                data = (out / "simple/p7/index.html").read_bytes()
                if not data.startswith(b"g") or len(data) != len(data.rstrip()) + 2000:
                    torn.append(repr(data[:20]))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        # kill points drawn from the 303 steps of a publish (301 file writes, then just
        # before and just after the swap), plus the extremes; in random order
        points = sorted({0, 300, 301, 302, *rng.sample(range(303), 50)})
        rng.shuffle(points)
        for round_, point in enumerate(points, start=1):
            proc = subprocess.Popen([sys.executable, str(script), str(out), f"g{round_}"],
                                    env={**os.environ, "KILL_AT": str(point)})
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            gen = generation_of(out)
            assert gen is not None, f"round {round_}: the tree is not one complete generation"
            seen.add(gen)
    finally:
        stop.set()
        t.join(5)
    assert not torn
    assert "g0" in seen and len(seen) >= 2  # killed before the swap: old tree; after: new
    # the next publish cleans up what killed ones left behind
    subprocess.run([sys.executable, str(script), str(out), "final"], check=True)
    assert generation_of(out) == "final"
    assert not list(tmp_path.glob(".public.staging-*"))


def test_two_concurrent_builds_second_fails_fast(tmp_path, capsys):
    out = tmp_path / "public"
    from spacy_index.publish.folder import output_lock

    with output_lock(out.absolute()):
        start = time.monotonic()
        code = main(["build", "--offline", "--out", str(out), "-q"], env={"SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")})
        assert time.monotonic() - start < 30
    assert code != 0 and "another build is writing" in capsys.readouterr().err


@pytest.mark.slow
def test_build_that_would_shrink_by_more_than_10_percent_refuses(tmp_path, capsys):
    with FakeGitHub() as gh:
        env = {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")}
        out = tmp_path / "public"
        assert main(["build", "--out", str(out), "-q"], env=env) == 0
        before = read_tree(out)
        for release in list(gh.releases)[:250]:
            gh.remove_release(release["tag_name"], delete_tag=True)
        capsys.readouterr()
        assert main(["build", "--out", str(out), "-q"], env=env) != 0
        assert "refusing to shrink the index from 1921" in capsys.readouterr().err
        assert read_tree(out) == before
        assert main(["build", "--out", str(out), "-q", "--allow-shrink"], env=env) == 0


# --------------------------------------------------------------------------- bad input
def _hostile_files(world):
    write_simple_project(world.root / "pypi", "requests", {"requests-2.0-py3-none-any.whl": b"not really a wheel"})
    (world.root / "secret.txt").write_text("outside the roots")


WORLD = WorldSpec("hard", pipelines={"sm": {"version": "3.8.50", "pad_bytes": 4 << 20}},
                  upstream="pypi", parts={"files": _hostile_files}, serve="app")


@pytest.mark.parametrize(
    "path",
    [
        "/simple/..%2F..%2Fsecret.txt/", "/simple/%2E%2E/", "/files/..%2Fsecret.txt",
        "/files/%2Fetc%2Fpasswd", "/files/..%2F..%2F..%2Fetc%2Fpasswd.metadata",
        "/simple/%22%3E%3Cscript%3E/", "/simple/a%0d%0aSet-Cookie:x=1/", "/files/%0d%0a.whl",
        "/simple/%C3%A9t%C3%A9/", "/files/en_core_web_sm-3.8.50-py3-none-any.whl%00.txt",
        "/simple/" + "a" * 5000 + "/",
    ],
)
def test_hostile_paths_are_rejected_without_leaving_the_root(world, path):
    r = httpx.get(world.url + path, follow_redirects=False)
    assert r.status_code in (301, 400, 404, 406), (path, r.status_code)
    assert "outside the roots" not in r.text and "root:" not in r.text
    assert "<script>" not in r.text
    assert "set-cookie" not in {k.lower() for k in r.headers}
    if r.status_code == 301:
        assert "\r" not in r.headers["location"] and "\n" not in r.headers["location"]
    files = [p for p in (world.root / "cache").rglob("*") if p.is_file()]
    assert all(world.root / "cache" in p.parents for p in files)


@pytest.mark.slow
def test_a_client_disconnecting_mid_stream_does_not_affect_the_others(world):
    url, sm = world.url, world.sm
    path = f"{url}/files/{sm.wheel.name}"

    async def full():
        async with httpx.AsyncClient(timeout=60) as c, c.stream("GET", path) as r:
            h = hashlib.sha256()
            async for chunk in r.aiter_bytes():
                h.update(chunk)
            return h.hexdigest()

    async def quitter():
        async with httpx.AsyncClient(timeout=60) as c, c.stream("GET", path) as r:
            async for _chunk in r.aiter_bytes():
                return "quit"  # closes the connection after the first chunk
        return "quit"

    async def all_of_them():
        return await asyncio.gather(quitter(), full(), quitter(), full(), full())

    results = asyncio.run(all_of_them())
    assert results == ["quit", sm.sha256, "quit", sm.sha256, sm.sha256]
    assert httpx.get(f"{url}/health").status_code == 200


# --------------------------------------------------------------------------- properties
names = st.text(alphabet=st.sampled_from(list("abcXYZ019-_.") + list('"<&/%\r\n\u00e9 ')), max_size=30)


@given(stem=names, version=st.text(max_size=12), suffix=st.sampled_from([".whl", ".tar.gz", ".zip", ".txt", ""]))
@settings(max_examples=300)
def test_filename_parsing_never_crashes_and_never_accepts_paths(stem, version, suffix):
    filename = f"{stem}-{version}{suffix}"
    try:
        parsed = parse_filename(filename)
    except InvalidFilename:
        return
    assert "/" not in filename and "\\" not in filename
    assert all(ch.isalnum() or ch == "-" for ch in parsed.name)


@given(st.text(max_size=200))
def test_negotiation_never_crashes(accept):
    assert negotiate(accept) in (None, "application/vnd.pypi.simple.v1+json",
                                 "application/vnd.pypi.simple.v1+html", "text/html")


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**9))
def test_range_parsing_stays_inside_the_file(header, size):
    result = _parse_range(header, size)
    if isinstance(result, tuple):
        start, end = result
        assert 0 <= start <= end < size


# --------------------------------------------------------------------------- secrets
TOKEN = "fake-ghp-HARDENtokenHARDENtokenHARDEN123456789"


@pytest.mark.slow
def test_build_at_debug_never_logs_or_writes_the_token(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeGitHub(token=TOKEN) as gh:
        gh.inject(FakeGitHub and __import__("tests.fakegithub", fromlist=["Fault"]).Fault.status(502, query_contains="page=2"))
        env = {"GITHUB_API_URL": gh.api_url.replace("http://", f"http://user:{TOKEN}@"),
               "GITHUB_TOKEN": TOKEN, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")}
        code = main(["build", "--out", str(tmp_path / "o")], env=env)
    captured = capsys.readouterr()
    blob = captured.out + captured.err + caplog.text
    blob += "".join(str(p) for p in tmp_path.rglob("*"))
    for p in tmp_path.rglob("*"):
        if p.is_file():
            blob += p.read_bytes().decode("latin-1")
    assert TOKEN not in blob
    del code


# --------------------------------------------------------------------------- soak
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_soak_32_clients_pages_and_files(world, tmp_path):
    seconds = float(os.environ.get("SPACY_INDEX_SOAK_SECONDS", "120"))
    gh, sm = world.gh, world.sm
    port = free_port()
    env = {**os.environ, "GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.Popen([sys.executable, "-m", "spacy_index", "serve", "--port", str(port),
                             "--upstream", "http://127.0.0.1:9/simple/", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, attempts=200)
        httpx.get(f"{base}/files/{sm.wheel.name}", timeout=60)  # warm the file cache
        latencies: list[float] = []
        errors: list[str] = []
        rss: list[int] = []

        async def client(deadline: float, i: int) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    start = time.perf_counter()
                    if (n + i) % 10 == 0:
                        r = await c.get(f"/files/{sm.wheel.name}")
                        ok = r.status_code == 200 and len(r.content) == sm.wheel.stat().st_size
                    else:
                        r = await c.get("/simple/en-core-web-sm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
                        ok = r.status_code == 200
                        latencies.append(time.perf_counter() - start)
                    if not ok:
                        errors.append(f"{r.status_code} {r.url}")

        async def sample(deadline: float) -> None:
            while time.monotonic() < deadline:
                rss.append(_rss_kib(proc.pid))
                await asyncio.sleep(1)

        async def run_all() -> None:
            deadline = time.monotonic() + seconds
            await asyncio.gather(sample(deadline), *(client(deadline, i) for i in range(32)))

        asyncio.run(run_all())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert not errors, errors[:5]
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    report = {"seconds": seconds, "page_requests": len(latencies), "rps": len(latencies) / seconds,
              "p99_ms": p99 * 1000, "rss_kib_first": rss[1] if len(rss) > 1 else None,
              "rss_kib_last": rss[-1], "rss_kib_max": max(rss)}
    (Path(__file__).parent.parent / "bench" / "results").mkdir(parents=True, exist_ok=True)
    print("soak:", json.dumps(report))
    # flat memory: the second half of the run does not grow beyond the first half's peak + 20%
    half = rss[len(rss) // 2:]
    assert max(half) <= max(rss[: len(rss) // 2] or half) * 1.2 + 8192, rss
    assert proc.returncode in (0, -signal.SIGTERM)
