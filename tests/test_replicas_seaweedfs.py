"""A serve fleet on a real object store: three ``spacy-index serve --cache s3://…`` replicas
sharing SeaweedFS, behind nginx, against the fake GitHub (slowed down where a download must
last); and ``build --out s3://…`` published to SeaweedFS, installed by pip through a static
gateway. Unlike tests/test_s3.py (moto, in-process), every piece here is a real process.

Measured figures are printed (``-s``): upstream downloads, who served what, the takeover time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import make_venv
from tests.fakegithub import FakeGitHub
from tests.htmlparse import parse_anchors
from tests.seaweed import (
    CACHE_BUCKET,
    PUBLIC_BUCKET,
    Throttle,
    aws_env,
    balancer_conf,
    blob_downloads,
    gateway_conf,
    nginx,
    replicas,
    seaweed_server,
    spacy_index_script,
    throttle_downloads,
)
from tests.servers import free_port
from tests.wheels import meta_archive

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    # botocore on Python 3.12+ still calls datetime.utcnow() in places
    pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning"),
]

CLIENTS = 50
LOCK_TTL = 6.0  # seconds, for the kill test (the built-in default is 120)


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    with seaweed_server(tmp_path_factory.mktemp("seaweedfs")) as s3:
        yield s3


@pytest.fixture(scope="module")
def big(model_wheels):
    """A real pipeline wheel of about 8 MB (an incompressible padding file inside)."""
    return model_wheels(name="core_web_md", version="3.8.70", pad_bytes=8 << 20)


@pytest.fixture(scope="module")
def small(model_wheels):
    return model_wheels(version="3.8.70")


@pytest.fixture(scope="module")
def other(model_wheels):
    return model_wheels(lang="de", name="core_news_sm", version="3.8.70")


@contextlib.contextmanager
def fake_github(*packages):
    with FakeGitHub(load_fixture=False, archive=meta_archive(packages)) as gh:
        for p in packages:
            gh.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
        yield gh


def fetch(url: str, timeout: float = 180) -> tuple[int | str, str, int]:
    """(status or error name, sha256 of the body, bytes): streamed, not held in memory."""
    digest = hashlib.sha256()
    size = 0
    try:
        with httpx.Client(timeout=timeout) as client, client.stream("GET", url) as r:
            for chunk in r.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
            return r.status_code, digest.hexdigest(), size
    except httpx.HTTPError as exc:
        return type(exc).__name__, "", size


def run_clients(urls: list[str]) -> list[tuple[int | str, str, int]]:
    """One thread per URL, all released at once; bounded by fetch's timeout."""
    results: list[Any] = [None] * len(urls)
    barrier = threading.Barrier(len(urls))

    def client(i: int) -> None:
        barrier.wait(60)
        results[i] = fetch(urls[i])

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return results


def check_cache_prefix(weed, prefix: str) -> dict[str, int]:
    """Nothing corrupt is stored: every ``files/<sha[:2]>/<sha>`` object has that sha256 (and
    says so in its metadata); no lock is left behind. Returns {key: size}."""
    sizes = {}
    for key, body in weed.objects(CACHE_BUCKET, prefix + "/").items():
        rel = key[len(prefix) + 1:]
        assert not rel.startswith("locks/"), f"a lock was left behind: {key}"
        parts = rel.split("/")
        assert parts[0] == "files" and len(parts) == 3 and parts[2][:2] == parts[1], key
        assert hashlib.sha256(body).hexdigest() == parts[2], f"corrupt object {key}"
        head = weed.client.head_object(Bucket=CACHE_BUCKET, Key=key)
        assert head["Metadata"].get("sha256") == parts[2]
        sizes[key] = len(body)
    return sizes


def check_local_cache(cache_dir: Path) -> list[Path]:
    """Every complete file in a replica's own cache has the sha256 it is stored under."""
    done = []
    for path in (cache_dir / "files").glob("*/*"):
        if path.is_file() and len(path.name) == 64 and not path.name.startswith("."):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
            done.append(path)
    return done


def served_by(lb, filename: str) -> tuple[dict[str, int], list[list[str]]]:
    """From nginx's access log: which replica answered how many requests for the file, and
    the requests that nginx had to try on more than one replica (each: the replicas tried)."""
    counts: dict[str, int] = {}
    retried = []
    for line in lb.access_log():
        status, _method, uri, upstreams, _size = line.split("|")
        tried = [u.strip() for u in upstreams.replace(" : ", ",").split(",")]
        if uri.endswith(filename) and status == "200":
            counts[tried[-1]] = counts.get(tried[-1], 0) + 1
            if len(tried) > 1:
                retried.append(tried)
    return counts, retried


# --------------------------------------------------------------------------- #
# (a) 50 clients, 3 replicas, 1 upstream download
# --------------------------------------------------------------------------- #
def test_50_clients_on_3_replicas_make_one_upstream_download(weed, big, tmp_path):
    prefix = "cache-a"
    with fake_github(big) as gh:
        throttle_downloads(gh, Throttle(rate=4 << 20))  # ~2 s: everyone arrives mid-download
        with replicas(tmp_path, 3, s3=weed, cache=f"s3://{CACHE_BUCKET}/{prefix}",
                      github_api=gh.api_url) as reps:
            port = free_port()
            with nginx(tmp_path / "nginx", balancer_conf(port, [r.hostport for r in reps]),
                       port) as lb:
                path = f"/files/{big.wheel.name}"
                # 35 through the balancer, 5 straight to each replica
                urls = [lb.url + path] * (CLIENTS - 15) + [r.url + path for r in reps] * 5
                assert len(urls) == CLIENTS
                started = time.monotonic()
                results = run_clients(urls)
                elapsed = time.monotonic() - started
                spread, retried = served_by(lb, big.wheel.name)
            downloads = blob_downloads(gh)
            logs = [r.log_text() for r in reps]
    assert results == [(200, big.sha256, big.wheel.stat().st_size)] * CLIENTS, results
    assert len(downloads) == 1, [(d.path, d.headers.get("range")) for d in downloads]
    assert downloads[0].bytes_sent == big.wheel.stat().st_size
    # the balancer spread its 35 over all three replicas
    assert sorted(spread) == sorted(r.hostport for r in reps), spread
    assert sum(spread.values()) == CLIENTS - 15 and not retried
    # one object in the bucket, verified; every replica has its own verified local copy
    assert list(check_cache_prefix(weed, prefix).values()) == [big.wheel.stat().st_size]
    for r in reps:
        assert [p.name for p in check_local_cache(r.cache_dir)] == [big.sha256]
    assert not any("Traceback" in text for text in logs), logs
    print(f"\n[fleet] {CLIENTS} clients (35 via nginx {spread}, 5 direct to each of 3 replicas),"
          f" {big.wheel.stat().st_size / 1e6:.1f} MB wheel: {len(downloads)} upstream download,"
          f" all {CLIENTS} bodies sha256-correct, {elapsed:.1f} s")


# --------------------------------------------------------------------------- #
# (b) the downloading replica is killed: another finishes after the lease expires
# --------------------------------------------------------------------------- #
def wait_for(what: str, condition, timeout: float = 30, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_replica_killed_mid_download_is_replaced_after_the_lock_ttl(weed, big, tmp_path):
    prefix = "cache-b"
    lock_key = f"{prefix}/locks/{big.sha256}.lock"
    size = big.wheel.stat().st_size
    throttle = Throttle(rate=512 << 10)  # 8 MB at 512 KiB/s: ~16 s, far from done when killed
    with fake_github(big) as gh:
        throttle_downloads(gh, throttle)
        with replicas(tmp_path, 3, s3=weed, cache=f"s3://{CACHE_BUCKET}/{prefix}",
                      github_api=gh.api_url, lock_ttl=LOCK_TTL) as reps:
            port = free_port()
            with nginx(tmp_path / "nginx", balancer_conf(port, [r.hostport for r in reps]),
                       port) as lb:
                path = f"/files/{big.wheel.name}"
                victim, survivors = reps[0], reps[1:]
                first: list[Any] = []
                t_first = threading.Thread(target=lambda: first.append(fetch(victim.url + path)),
                                           daemon=True)
                t_first.start()
                # the victim holds the lock and the upstream bytes are flowing
                wait_for("the victim's lock", lambda: lock_key in weed.keys(CACHE_BUCKET, prefix))
                wait_for("the download to start",
                         lambda: blob_downloads(gh) and blob_downloads(gh)[0].bytes_sent > 0)
                lock = json.loads(weed.client.get_object(Bucket=CACHE_BUCKET, Key=lock_key)
                                  ["Body"].read())
                assert lock["pid"] == victim.pid and lock["ttl"] == LOCK_TTL, lock
                # everyone else arrives while it downloads: through nginx and direct
                urls = [lb.url + path] * 12 + [s.url + path for s in survivors] * 3
                others: list[Any] = []
                t_others = threading.Thread(target=lambda: others.extend(run_clients(urls)),
                                            daemon=True)
                t_others.start()
                time.sleep(1.0)  # they are all waiting now (polling the bucket)
                sent_at_kill = blob_downloads(gh)[0].bytes_sent
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                victim.proc.wait(10)
                throttle.rate = 0  # the second download may go at full speed
                wait_for("a second upstream download", lambda: len(blob_downloads(gh)) >= 2,
                         timeout=LOCK_TTL + 30)
                takeover_after = time.monotonic() - killed_at
                t_others.join(120)
                t_first.join(30)
                assert not t_others.is_alive() and not t_first.is_alive()
                done_after = time.monotonic() - killed_at
                spread, retried = served_by(lb, big.wheel.name)
            downloads = blob_downloads(gh)
            survivor_logs = [s.log_text() for s in survivors]
            # a replacement for the dead replica gets the file from the bucket: no download
            with replicas(tmp_path, 1, s3=weed, cache=f"s3://{CACHE_BUCKET}/{prefix}",
                          github_api=gh.api_url, lock_ttl=LOCK_TTL,
                          names=["replacement"]) as (fresh,):
                replacement = fetch(fresh.url + path)
                downloads_after_replacement = len(blob_downloads(gh))
                fresh_files = check_local_cache(fresh.cache_dir)

    # the client of the killed replica lost its connection; nobody else noticed anything
    assert first[0][0] != 200, first
    assert others == [(200, big.sha256, size)] * len(urls), others
    # nginx answered all 12 from the survivors, moving those it had sent to the victim
    assert victim.hostport not in spread and sum(spread.values()) == 12, spread
    assert all(tried[0] == victim.hostport for tried in retried), retried
    # one download killed part-way, one finished by a survivor after the TTL, no more
    assert len(downloads) == 2
    assert 0 < sent_at_kill < size and downloads[1].bytes_sent == size
    # the lock was last renewed at most TTL/3 before the kill; S3 times have 1 s resolution
    # (+ the poll interval and SeaweedFS settling the two survivors' racing takeovers)
    assert LOCK_TTL * 2 / 3 - 1.5 <= takeover_after <= LOCK_TTL + 8, takeover_after
    assert replacement == (200, big.sha256, size)
    assert downloads_after_replacement == 2 and [p.name for p in fresh_files] == [big.sha256]
    # nothing corrupt anywhere: the bucket, and the survivors' and the victim's caches
    assert list(check_cache_prefix(weed, prefix).values()) == [size]
    for r in reps:
        check_local_cache(r.cache_dir)
    assert not check_local_cache(victim.cache_dir)  # only a partial file, never a whole one
    assert not any("Traceback" in text for text in survivor_logs), survivor_logs
    print(f"\n[fleet] SIGKILL of the downloading replica after {sent_at_kill / 1e6:.1f} of "
          f"{size / 1e6:.1f} MB (lock TTL {LOCK_TTL:g} s): a survivor took over "
          f"{takeover_after:.1f} s after the kill, all {len(urls)} waiting clients got the "
          f"verified file {done_after:.1f} s after the kill (nginx: {spread}, {len(retried)} "
          f"moved off the dead replica); upstream "
          f"downloads {len(downloads)} (1 killed + 1 finished); a replacement replica: 0 more")


# --------------------------------------------------------------------------- #
# (c) build --out s3://… and build --mirror --out s3://…, installed through a static gateway
# --------------------------------------------------------------------------- #
def spacy_index(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(spacy_index_script()), *args], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def test_build_and_mirror_published_to_seaweedfs_install_with_pip_through_a_gateway(
    weed, small, other, tmp_path, client_env
):
    env = aws_env()
    env["SPACY_INDEX_CACHE_DIR"] = str(tmp_path / "build-cache")
    endpoint = ["--s3-endpoint-url", weed.endpoint_url]
    # the bundled snapshot: pages whose links point at GitHub
    spacy_index("build", "--offline", "--out", f"s3://{PUBLIC_BUCKET}/idx", *endpoint, "-q",
                env=env)
    mirror = ["build", "--mirror", "--out", f"s3://{PUBLIC_BUCKET}/mirror", *endpoint]
    with fake_github(small, other) as gh:
        env["GITHUB_API_URL"] = gh.api_url
        # both pipelines, then only one: the other's objects are deleted (DeleteObjects),
        # after the new roots are live
        spacy_index(*mirror, "-q", env=env)
        assert any(k.startswith(f"mirror/files/{other.wheel.name}")
                   for k in weed.keys(PUBLIC_BUCKET, "mirror/"))
        spacy_index(*mirror, "--only", "en_core_web_sm", "--allow-shrink", "-q", env=env)
        assert len(blob_downloads(gh)) == 2  # each file once, ever
        # republishing the same mirror uploads nothing (the manifest against the listing)
        again = spacy_index(*mirror, "--only", "en_core_web_sm", env=env)
    assert "unchanged, nothing rewritten" in again.stdout, again.stdout
    keys = set(weed.keys(PUBLIC_BUCKET, "mirror/"))
    assert not any("de_core_news_sm" in k or "de-core-news-sm" in k for k in keys), keys
    assert {"mirror/simple/index.html", "mirror/simple/en-core-web-sm/index.html",
            "mirror/simple/en-core-web-sm/index.json", f"mirror/files/{small.wheel.name}",
            f"mirror/files/{small.wheel.name}.metadata",
            "mirror/.spacy-index-manifest.json"} <= keys, keys
    assert "mirror/.spacy-index.lock" not in keys
    idx_keys = set(weed.keys(PUBLIC_BUCKET, "idx/"))
    assert {"idx/simple/index.html", "idx/simple/en-core-web-sm/index.html"} <= idx_keys
    assert not any(k.startswith("idx/files/") for k in idx_keys)  # links only, no files

    s3_host = weed.endpoint_url.removeprefix("http://")
    port = free_port()
    with nginx(tmp_path / "gateway", gateway_conf(port, s3_host, PUBLIC_BUCKET,
                                                   ["idx", "mirror"]), port) as gw:
        # the S3 endpoint itself: anonymous reads of the index only, never of the cache
        assert httpx.get(f"{weed.endpoint_url}/{PUBLIC_BUCKET}/mirror/simple/index.html"
                         ).status_code == 200
        assert httpx.get(f"{weed.endpoint_url}/{CACHE_BUCKET}/").status_code == 403
        root = httpx.get(gw.url + "/idx/simple/")
        assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
        page = httpx.get(gw.url + "/idx/simple/en-core-web-sm/")
        assert page.status_code == 200
        hrefs = [a["href"] for a, _ in parse_anchors(page.text).anchors]
        # links to GitHub's release assets (hashed where the snapshot knows the checksum)
        assert hrefs and all(h.startswith("https://github.com/explosion/spacy-models/releases/")
                             for h in hrefs), hrefs[:3]
        assert any("#sha256=" in h for h in hrefs)
        wheel = httpx.get(f"{gw.url}/mirror/files/{small.wheel.name}")
        assert wheel.status_code == 200 and hashlib.sha256(wheel.content).hexdigest() == small.sha256
        assert wheel.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert httpx.get(gw.url + "/mirror/simple/no-such-project/").status_code in (403, 404)

        venv = make_venv(tmp_path / "venv", env=client_env)
        venv.pip("install", "--no-deps", "--index-url", f"{gw.url}/mirror/simple/",
                 "en_core_web_sm")
        assert venv.installed()["en-core-web-sm"] == small.version
        venv.run("-c", "import spacy; spacy.load('en_core_web_sm')")
        log = gw.access_log()
    wanted = [line for line in log if "/mirror/" in line]
    # pip read the page, the PEP 658 metadata and the wheel, all through the gateway
    for path in ("/mirror/simple/en-core-web-sm/", f"/mirror/files/{small.wheel.name}.metadata",
                 f"/mirror/files/{small.wheel.name}"):
        assert f"200|GET|{path}|" in "\n".join(wanted), (path, wanted)
    print(f"\n[fleet] build --offline → s3://{PUBLIC_BUCKET}/idx ({len(idx_keys)} objects), "
          f"build --mirror (2 pipelines), then --only en_core_web_sm → s3://{PUBLIC_BUCKET}/mirror "
          f"({len(keys)} objects, the other's deleted; 2 upstream downloads; republish: nothing "
          f"rewritten); pip installed "
          f"en_core_web_sm {small.version} through the nginx gateway: {len(wanted)} requests")


# --------------------------------------------------------------------------- #
# What the fleet relies on, and what it does not give yet
# --------------------------------------------------------------------------- #
def test_seaweedfs_conditional_writes_have_exactly_one_winner(weed):
    """The lock protocol needs S3's atomic conditional writes: of racing `If-None-Match: *`
    creates one wins, and of racing `If-Match` takeovers of one ETag one wins."""
    from botocore.exceptions import ClientError

    def race(key: str, tag: str, **condition: str) -> list[str]:
        barrier = threading.Barrier(30)
        outcomes: list[str] = []

        def put(i: int) -> None:
            barrier.wait(30)
            try:  # distinct bodies: an ETag is the MD5 of the body (see the next test)
                weed.client.put_object(Bucket=CACHE_BUCKET, Key=key,
                                       Body=f"{tag}{i}".encode(), **condition)
                outcomes.append("won")
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])

        threads = [threading.Thread(target=put, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return outcomes

    # (SeaweedFS settles a contended key in steps of about 1 s: each race takes 2-5 s)
    for trial in range(2):
        key = f"race/{trial}.lock"
        created = race(key, "create", IfNoneMatch="*")
        assert sorted(created) == ["PreconditionFailed"] * 29 + ["won"], created
        etag = weed.client.head_object(Bucket=CACHE_BUCKET, Key=key)["ETag"]
        taken = race(key, "takeover", IfMatch=etag)
        assert sorted(taken) == ["PreconditionFailed"] * 29 + ["won"], taken
        weed.client.delete_object(Bucket=CACHE_BUCKET, Key=key)


def test_two_replicas_never_both_take_over_one_stale_lock(weed, tmp_path):
    """Two waiters that read the same stale lock both try ``If-Match`` on its ETag; one
    must lose. S3 ETags are the MD5 of the body, so that holds only if no two owners ever
    write the same lock body (every write of a :class:`~spacy_index.s3.Lease` has a random ``owner`` token)."""
    from botocore.exceptions import ClientError

    from spacy_index.cache import FileCache
    from spacy_index.cache.s3 import S3FileStore
    from spacy_index.s3 import S3Location

    location = S3Location(CACHE_BUCKET, "cache-owners")
    # two stores in one process: one host name and one pid, as two replicas in containers
    stores = [S3FileStore(FileCache(tmp_path / name, client=None), location, client=weed.client)
              for name in ("a", "b")]
    sha = hashlib.sha256(b"owners").hexdigest()
    key = stores[0].lock_key(sha)
    dead = weed.client.put_object(IfNoneMatch="*",
                                  **stores[0]._lease(sha, "x.whl").put_args())["ETag"]
    won = []
    for store in stores:  # both saw the dead holder's ETag; both try to take over
        with contextlib.suppress(ClientError):
            weed.client.put_object(IfMatch=dead, **store._lease(sha, "x.whl").put_args())
            won.append(store)
    weed.client.delete_object(Bucket=CACHE_BUCKET, Key=key)
    assert len(won) == 1, f"{len(won)} owners of one lock"


@pytest.mark.xfail(strict=True, reason="files listed without a sha256 bypass the shared S3 "
                   "cache: each replica downloads them (server/routes.py cached_file(): the "
                   "unverified branch comes before the s3 one)")
def test_a_file_listed_without_a_hash_is_downloaded_once_by_the_fleet(weed, model_wheels,
                                                                       tmp_path):
    pkg = model_wheels(name="core_web_lg", version="3.8.70")
    # no meta archive entry: the source knows no checksum for this wheel
    with FakeGitHub(load_fixture=False, archive=meta_archive([])) as gh:
        gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
        with replicas(tmp_path, 2, s3=weed, cache=f"s3://{CACHE_BUCKET}/cache-nohash",
                      github_api=gh.api_url) as reps:
            for r in reps:
                status, digest, _ = fetch(f"{r.url}/files/{pkg.wheel.name}")
                assert (status, digest) == (200, pkg.sha256)
            downloads = len(blob_downloads(gh))
    print(f"\n[fleet] a file without a listed sha256, 2 replicas: {downloads} upstream downloads")
    assert downloads == 1
