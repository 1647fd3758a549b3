"""Publishing to S3-compatible storage (moto's server on 127.0.0.1): only what changed is
uploaded, in an order that never leaves a dangling link, stale objects go last, one publisher
at a time, and a publish killed at any point leaves a working index."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from spacy_index.catalog import Catalog
from spacy_index.errors import OutputLocked, PublishError, ShrinkRefused, UsageError
from spacy_index.model import Distribution
from spacy_index.publish.s3 import publish_s3
from spacy_index.publish.s3_objects import LOCK, MANIFEST, ROOTS, content_type
from spacy_index.render.tree import MARKER, index_files, mirror_links, pypi_json_paths
from spacy_index.s3 import S3Location, parse_s3_url

from .htmlparse import parse_anchors
from .s3server import S3Env, aws_test_env, moto_server, new_client, s3_fixture  # noqa: F401

pytestmark = [
    # botocore/moto on Python 3.12+ still call datetime.utcnow() in places
    pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:datetime.datetime.utcfromtimestamp:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- #
# A small mirror tree: pages + files/<wheel> (local Paths) + files/<wheel>.metadata
# --------------------------------------------------------------------------- #
def wheel_bytes(name: str, size: int) -> bytes:
    """A deterministic, incompressible wheel-shaped zip of about ``size`` bytes."""
    payload = b"".join(
        hashlib.sha256(f"{name}:{i}".encode()).digest() for i in range(size // 32 + 1)
    )[:size]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(zipfile.ZipInfo(f"{name}/data.bin", date_time=(2024, 1, 1, 0, 0, 0)), payload)
    return buf.getvalue()


def mirror_tree(tmp: Path, projects: dict[str, list[str]], *, yanked: frozenset[str] = frozenset(),
                size: int = 4000) -> dict[str, bytes | Path]:
    """``{project: [versions]}`` → the files of a mirror build (wheels as Paths)."""
    wheels = tmp / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    dists, extra = [], {}
    for project, versions in projects.items():
        for v in versions:
            fn = f"{project.replace('-', '_')}-{v}-py3-none-any.whl"
            data = wheel_bytes(fn, size)
            path = wheels / fn
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
            meta = f"Metadata-Version: 2.1\nName: {project}\nVersion: {v}\n".encode()
            dists.append(Distribution(
                project=project, filename=fn, url=f"https://upstream.test/{fn}",
                version=Version(v), kind="wheel", sha256=hashlib.sha256(data).hexdigest(),
                size=len(data), upload_time=T0,
                core_metadata_sha256=hashlib.sha256(meta).hexdigest(),
                yanked="broken" if fn in yanked else None,
            ))
            extra[f"files/{fn}"] = path
            extra[f"files/{fn}.metadata"] = meta
    cat = Catalog.from_distributions(dists, source="test")
    files: dict[str, bytes | Path] = dict(index_files(cat, mirror_links()))
    files.update(extra)
    return files


V1 = {"en-core-web-sm": ["3.7.0", "3.7.1"], "de-core-news-sm": ["3.7.0"],
      "fr-core-news-sm": ["3.7.0"]}
# one new version for en, de removed, it-core-news-sm added
V2 = {"en-core-web-sm": ["3.7.0", "3.7.1", "3.8.0"], "fr-core-news-sm": ["3.7.0"],
      "it-core-news-sm": ["3.8.0"]}


def as_bytes(files: dict[str, bytes | Path]) -> dict[str, bytes]:
    return {p: v.read_bytes() if isinstance(v, Path) else v for p, v in files.items()}


def total(files: dict[str, bytes | Path]) -> int:
    return sum(len(v) for v in as_bytes(files).values())


def changed_paths(old: dict[str, bytes | Path], new: dict[str, bytes | Path]) -> set[str]:
    a, b = as_bytes(old), as_bytes(new)
    return {p for p in b if a.get(p) != b[p]}


def without_control(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in objects.items() if k not in (MANIFEST, LOCK)}


# --------------------------------------------------------------------------- #
# Client wrappers
# --------------------------------------------------------------------------- #
class Killed(RuntimeError):
    pass


class Recording:
    """Passes everything to the real client; records writes as ``(op, key)``. With
    ``fail_after=N`` the (N+1)-th object upload raises (lock writes are not counted)."""

    def __init__(self, real: Any, *, fail_after: int | None = None, on_put=None) -> None:
        self._real = real
        self.ops: list[tuple[str, str]] = []
        self.fail_after = fail_after
        self.on_put = on_put
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _count(self, key: str) -> None:
        if key.endswith(LOCK):
            return
        if self.fail_after is not None and self.puts >= self.fail_after:
            raise Killed(f"killed before uploading {key}")
        if self.on_put is not None:
            self.on_put(key)
        self.puts += 1

    def put_object(self, **kw: Any) -> Any:
        self._count(kw["Key"])
        r = self._real.put_object(**kw)
        self.ops.append(("lock" if kw["Key"].endswith(LOCK) else "put", kw["Key"]))
        return r

    def upload_file(self, filename: str, bucket: str, key: str, **kw: Any) -> Any:
        self._count(key)
        r = self._real.upload_file(filename, bucket, key, **kw)
        self.ops.append(("put", key))
        return r

    def delete_objects(self, **kw: Any) -> Any:
        for o in kw["Delete"]["Objects"]:
            self.ops.append(("delete", o["Key"]))
        return self._real.delete_objects(**kw)

    def delete_object(self, **kw: Any) -> Any:
        self.ops.append(("unlock" if kw["Key"].endswith(LOCK) else "delete", kw["Key"]))
        return self._real.delete_object(**kw)

    def writes(self) -> list[tuple[str, str]]:
        return [op for op in self.ops if op[0] in ("put", "delete")]


# --------------------------------------------------------------------------- #
# An independent check: everything reachable from the root exists (and has its hash)
# --------------------------------------------------------------------------- #
BASE = "https://index.test/"


def reachable(objects: dict[str, bytes]) -> set[str]:
    """Follow ``simple/index.html`` (and ``simple/index.json``) → project pages → files and
    their ``.metadata``; assert each exists and matches its ``#sha256``. Returns the paths."""
    seen = {"simple/index.html", "simple/index.json"}

    def get(url: str) -> tuple[str, bytes]:
        path = urlsplit(url).path.lstrip("/")
        if path.endswith("/"):
            path += "index.html"
        assert path in objects, f"dangling link: {url} (no object {path!r})"
        seen.add(path)
        return path, objects[path]

    def check_file(url: str, sha: str | None) -> None:
        _, body = get(url.split("#")[0])
        if sha:
            assert hashlib.sha256(body).hexdigest() == sha, url

    root_url = urljoin(BASE, "simple/")
    for attrs, _ in parse_anchors(objects["simple/index.html"]).anchors:
        page_url = urljoin(root_url, attrs["href"])
        path, page = get(page_url)
        for fattrs, _ in parse_anchors(page).anchors:
            href = urljoin(page_url, fattrs["href"])
            frag = urlsplit(href).fragment
            check_file(href, frag.split("=", 1)[1] if frag.startswith("sha256=") else None)
            meta = fattrs.get("data-core-metadata")
            if meta:
                check_file(href.split("#")[0] + ".metadata",
                           meta.split("=", 1)[1] if meta.startswith("sha256=") else None)
        _, doc = get(page_url + "index.json")
        for f in json.loads(doc)["files"]:
            check_file(urljoin(page_url, f["url"]), f["hashes"].get("sha256"))
    for p in json.loads(objects["simple/index.json"])["projects"]:
        get(urljoin(root_url, canonicalize_name(p["name"]) + "/"))
        # the PyPI-style JSON documents pip-tools reads hashes from
        for path in pypi_json_paths(p["name"]):
            doc_url = urljoin(BASE, path)
            _, doc = get(doc_url)
            for files in json.loads(doc)["releases"].values():
                for f in files:
                    check_file(urljoin(doc_url, f["url"]), f["digests"]["sha256"])
    for attrs, _ in parse_anchors(get(urljoin(BASE, "find-links.html"))[1]).anchors:
        href = urljoin(BASE, attrs["href"])
        check_file(href, urlsplit(href).fragment.removeprefix("sha256=") or None)
    return seen


# --------------------------------------------------------------------------- #
# URLs and headers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://my-bucket", "my-bucket", ""),
    ("s3://my-bucket/", "my-bucket", ""),
    ("s3://my.bucket/spacy/index", "my.bucket", "spacy/index"),
    ("s3://b01/a/b/", "b01", "a/b"),
])
def test_parse_s3_url(url, bucket, prefix):
    loc = parse_s3_url(url)
    assert loc == S3Location(bucket, prefix) == S3Location.parse(url)
    assert str(loc) == url.rstrip("/")


@pytest.mark.parametrize("url", [
    "https://bucket/x", "s3:/bucket", "s3://", "s3://ab", "s3://Bad_Bucket", "s3://-bucket",
    "s3://bucket/a/../b", "s3://bucket/a//b", "s3://bucket/x?y=1", "s3://bucket:9000/x",
    "s3://user:hunter2@bucket/x", "bucket/x", "",
])
def test_parse_s3_url_rejects_with_one_line(url):
    with pytest.raises(UsageError) as info:
        parse_s3_url(url)
    msg = str(info.value)
    assert "\n" not in msg and "s3://BUCKET[/PREFIX]" in msg
    assert "hunter2" not in msg


@pytest.mark.parametrize(("path", "ctype"), [
    ("simple/index.html", "text/html; charset=utf-8"),
    ("find-links.html", "text/html; charset=utf-8"),
    ("simple/index.json", "application/vnd.pypi.simple.v1+json"),
    ("simple/en-core-web-sm/index.json", "application/vnd.pypi.simple.v1+json"),
    ("pypi/en-core-web-sm/json", "application/json"),
    ("simple/pypi/en-core-web-sm/json", "application/json"),
    ("en-core-web-sm/json", "application/json"),
    (".spacy-index.json", "application/json"),
    ("files/x-1-py3-none-any.whl", "application/zip"),
    ("files/x-1.zip", "application/zip"),
    ("files/x-1.tar.gz", "application/gzip"),
    ("files/x-1-py3-none-any.whl.metadata", "text/plain"),
])
def test_content_types(path, ctype):
    assert content_type(path) == ctype


# --------------------------------------------------------------------------- #
# Publishing
# --------------------------------------------------------------------------- #
def test_first_publish_uploads_everything_with_headers(s3: S3Env, tmp_path):
    files = mirror_tree(tmp_path, V1)
    loc = S3Location(s3.bucket, "idx")
    rec = Recording(s3.client)
    r = publish_s3(files, loc, client=rec)
    manifest = s3.objects("idx")[MANIFEST]
    assert r.changed and r.location == loc
    # 27 index files + the catalogue (index.html, catalogue.js/.css, 3 pipeline pages) + manifest
    assert r.uploaded_objects == len(files) + 1 == 28 + 6
    assert r.uploaded_bytes == total(files) + len(manifest)
    assert r.deleted_objects == 0 and r.unchanged_objects == 0
    assert without_control(s3.objects("idx")) == as_bytes(files)
    assert LOCK not in s3.objects("idx")  # released
    # order: files, pages, roots in order, manifest; nothing deleted
    keys = [k.removeprefix("idx/") for op, k in rec.writes()]
    phases = [0 if k.startswith("files/") else 2 if k in (*ROOTS, MANIFEST) else 1 for k in keys]
    assert phases == sorted(phases)
    assert keys[-5:] == [*ROOTS, MANIFEST]
    # headers
    whl = next(p for p in files if p.endswith(".whl"))
    h = wh = s3.head(f"idx/{whl}")
    assert h["ContentType"] == "application/zip"
    assert h["CacheControl"] == "public, max-age=31536000, immutable"
    assert h["Metadata"] == {"sha256": hashlib.sha256(files[whl].read_bytes()).hexdigest()}
    h = s3.head("idx/simple/en-core-web-sm/index.json")
    assert h["ContentType"] == "application/vnd.pypi.simple.v1+json"
    assert h["CacheControl"] == "max-age=600"
    assert s3.head("idx/simple/index.html")["ContentType"] == "text/html; charset=utf-8"
    assert s3.head(f"idx/{whl}.metadata")["ContentType"] == "text/plain"
    # the manifest
    doc = json.loads(manifest)
    assert doc["files"][whl] == {"sha256": hashlib.sha256(files[whl].read_bytes()).hexdigest(),
                                 "size": files[whl].stat().st_size, "etag": wh["ETag"].strip('"')}
    assert set(doc["files"]) == set(files)
    reachable(s3.objects("idx"))
    print(f"\n[s3] first publish: {r.uploaded_objects} objects, {r.uploaded_bytes} bytes")


def test_republish_unchanged_writes_nothing(s3: S3Env, tmp_path):
    files = mirror_tree(tmp_path, V1)
    loc = S3Location(s3.bucket, "idx")
    publish_s3(files, loc, client=s3.client)
    before = {k: s3.head(f"idx/{k}")["LastModified"] for k in s3.objects("idx")}
    rec = Recording(s3.client)
    r = publish_s3(mirror_tree(tmp_path, V1), loc, client=rec)
    assert not r.changed
    assert (r.uploaded_objects, r.uploaded_bytes, r.deleted_objects) == (0, 0, 0)
    assert r.unchanged_objects == len(files)
    assert rec.ops == []  # not even the lock
    assert {k: s3.head(f"idx/{k}")["LastModified"] for k in s3.objects("idx")} == before
    print(f"\n[s3] unchanged republish: {r.uploaded_objects} objects, {r.uploaded_bytes} bytes, "
          f"{len(rec.ops)} writes")


def test_change_one_project_page_uploads_only_that_page_and_the_manifest(s3: S3Env, tmp_path):
    loc = S3Location(s3.bucket, "")  # the whole bucket
    old = mirror_tree(tmp_path, V1)
    publish_s3(old, loc, client=s3.client)
    new = mirror_tree(tmp_path, V1, yanked=frozenset({"en_core_web_sm-3.7.0-py3-none-any.whl"}))
    rec = Recording(s3.client)
    r = publish_s3(new, loc, client=rec)
    expected = changed_paths(old, new)
    # the project's HTML + JSON page, its three PyPI-style JSON documents, and the flat
    # find-links page (it shows yanked files too); the project list did not change
    pages = ["en-core-web-sm/json", "pypi/en-core-web-sm/json",
             "simple/en-core-web-sm/index.html", "simple/en-core-web-sm/index.json",
             "simple/pypi/en-core-web-sm/json"]
    assert expected == {*pages, "find-links.html"}
    assert [k for _, k in rec.writes()] == [*pages, "find-links.html", MANIFEST]
    manifest = s3.objects()[MANIFEST]
    assert r.uploaded_objects == len(expected) + 1 == 7
    assert r.uploaded_bytes == sum(len(as_bytes(new)[p]) for p in expected) + len(manifest)
    assert r.deleted_objects == 0 and r.unchanged_objects == len(new) - len(expected)
    assert without_control(s3.objects()) == as_bytes(new)
    print(f"\n[s3] one project page changed: {r.uploaded_objects} objects, "
          f"{r.uploaded_bytes} bytes (manifest {len(manifest)})")


def test_new_version_of_one_project_uploads_the_file_its_pages_roots_and_manifest(
    s3: S3Env, tmp_path
):
    loc = S3Location(s3.bucket, "idx")
    old = mirror_tree(tmp_path, V1)
    publish_s3(old, loc, client=s3.client)
    new_projects = {**V1, "en-core-web-sm": [*V1["en-core-web-sm"], "3.8.0"]}
    new = mirror_tree(tmp_path, new_projects)
    rec = Recording(s3.client)
    r = publish_s3(new, loc, client=rec)
    expected = changed_paths(old, new)
    fn = "en_core_web_sm-3.8.0-py3-none-any.whl"
    assert expected == {
        f"files/{fn}", f"files/{fn}.metadata",
        "simple/en-core-web-sm/index.html", "simple/en-core-web-sm/index.json",
        "pypi/en-core-web-sm/json", "simple/pypi/en-core-web-sm/json", "en-core-web-sm/json",
        "find-links.html", MARKER,  # the project list (simple/index.*) did not change
        "index.html", "catalogue/en-core-web-sm.html",  # the catalogue shows the new version
    }
    keys = [k.removeprefix("idx/") for _, k in rec.writes()]
    assert keys == [f"files/{fn}", f"files/{fn}.metadata",
                    "catalogue/en-core-web-sm.html", "en-core-web-sm/json", "index.html",
                    "pypi/en-core-web-sm/json",
                    "simple/en-core-web-sm/index.html", "simple/en-core-web-sm/index.json",
                    "simple/pypi/en-core-web-sm/json", "find-links.html", MARKER, MANIFEST]
    manifest = s3.objects("idx")[MANIFEST]
    assert r.uploaded_objects == 12
    assert r.uploaded_bytes == sum(len(as_bytes(new)[p]) for p in expected) + len(manifest)
    assert (r.deleted_objects, r.unchanged_objects) == (0, len(new) - 11)
    reachable(s3.objects("idx"))
    print(f"\n[s3] one project got a new version: {r.uploaded_objects} objects, "
          f"{r.uploaded_bytes} bytes")


def test_stale_objects_are_deleted_after_the_roots_and_foreign_objects_are_kept(
    s3: S3Env, tmp_path
):
    loc = S3Location(s3.bucket, "idx")
    old = mirror_tree(tmp_path, V1)
    publish_s3(old, loc, client=s3.client)
    s3.client.put_object(Bucket=s3.bucket, Key="idx/README.txt", Body=b"not ours")
    s3.client.put_object(Bucket=s3.bucket, Key="idx-other/x", Body=b"not ours either")
    new = mirror_tree(tmp_path, V2)
    rec = Recording(s3.client)
    r = publish_s3(new, loc, client=rec)
    stale = set(old) - set(new)
    assert stale == {"simple/de-core-news-sm/index.html", "simple/de-core-news-sm/index.json",
                     "pypi/de-core-news-sm/json", "simple/pypi/de-core-news-sm/json",
                     "de-core-news-sm/json", "files/de_core_news_sm-3.7.0-py3-none-any.whl",
                     "files/de_core_news_sm-3.7.0-py3-none-any.whl.metadata",
                     "catalogue/de-core-news-sm.html"}
    ops = rec.writes()
    first_delete = next(i for i, (op, _) in enumerate(ops) if op == "delete")
    assert ops[first_delete - 1] == ("put", f"idx/{MANIFEST}")
    assert {k for op, k in ops[first_delete:]} == {f"idx/{p}" for p in stale}
    assert all(op == "delete" for op, _ in ops[first_delete:])
    assert r.deleted_objects == 8
    objects = s3.objects("idx")
    assert objects.pop("README.txt") == b"not ours"
    assert without_control(objects) == as_bytes(new)
    assert s3.objects("idx-other") == {"x": b"not ours either"}
    reachable(objects)
    expected = changed_paths(old, new)
    assert r.uploaded_objects == len(expected) + 1
    assert r.uploaded_bytes == sum(len(as_bytes(new)[p]) for p in expected) + len(objects[MANIFEST])
    print(f"\n[s3] V1→V2 (1 new version, 1 project removed, 1 added): {r.uploaded_objects} "
          f"objects, {r.uploaded_bytes} bytes, {r.deleted_objects} deleted")


def test_an_object_missing_behind_our_back_is_uploaded_again(s3: S3Env, tmp_path):
    loc = S3Location(s3.bucket, "idx")
    files = mirror_tree(tmp_path, V1)
    publish_s3(files, loc, client=s3.client)
    whl = "files/fr_core_news_sm-3.7.0-py3-none-any.whl"
    s3.client.delete_object(Bucket=s3.bucket, Key=f"idx/{whl}")
    rec = Recording(s3.client)
    r = publish_s3(files, loc, client=rec)
    assert rec.writes() == [("put", f"idx/{whl}")]  # the manifest is still right
    assert (r.uploaded_objects, r.uploaded_bytes) == (1, files[whl].stat().st_size)
    assert without_control(s3.objects("idx")) == as_bytes(files)


def test_an_object_overwritten_behind_our_back_is_restored_even_if_the_size_is_equal(
    s3: S3Env, tmp_path
):
    loc = S3Location(s3.bucket, "idx")
    files = mirror_tree(tmp_path, V1)
    publish_s3(files, loc, client=s3.client)
    page = "simple/fr-core-news-sm/index.html"
    s3.client.put_object(Bucket=s3.bucket, Key=f"idx/{page}", Body=b"x" * len(files[page]))
    rec = Recording(s3.client)
    r = publish_s3(files, loc, client=rec)
    # restored; its ETag (the MD5 of a single-part upload) is the recorded one again, so the
    # manifest stays as it is
    assert [k for _, k in rec.writes()] == [f"idx/{page}"]
    assert r.uploaded_objects == 1
    assert without_control(s3.objects("idx")) == as_bytes(files)
    assert not publish_s3(files, loc, client=s3.client).changed


def test_objects_not_written_by_us_are_never_overwritten(s3: S3Env, tmp_path):
    s3.client.put_object(Bucket=s3.bucket, Key="site/simple/index.html", Body=b"someone's")
    with pytest.raises(PublishError, match="not written by spacy-index") as info:
        publish_s3(mirror_tree(tmp_path, V1), S3Location(s3.bucket, "site"), client=s3.client)
    assert "\n" not in str(info.value)
    assert s3.objects("site") == {"simple/index.html": b"someone's"}


def test_paths_outside_the_prefix_are_refused_before_any_request(tmp_path):
    class NoNetwork:
        def __getattr__(self, name):
            raise AssertionError(f"no request expected, got {name}")

    for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "x\x00y", MANIFEST, LOCK]:
        with pytest.raises(PublishError):
            publish_s3({bad: b"x", MARKER: b"{}"}, S3Location("bucket", "p"), client=NoNetwork())


def test_large_files_use_a_multipart_upload(s3: S3Env, tmp_path, monkeypatch):
    monkeypatch.setattr("spacy_index.publish.s3.MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr("spacy_index.publish.s3.MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    big = tmp_path / "big-1.0-py3-none-any.whl"
    big.write_bytes(wheel_bytes("big", 6 * 1024 * 1024))
    files = {"files/big-1.0-py3-none-any.whl": big, MARKER: b'{"files": 1}'}
    r = publish_s3(files, S3Location(s3.bucket, "p"), client=s3.client)
    h = s3.head("p/files/big-1.0-py3-none-any.whl")
    assert h["ETag"].endswith('-2"')  # two parts
    assert h["Metadata"]["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert h["ContentType"] == "application/zip"
    assert s3.objects("p")["files/big-1.0-py3-none-any.whl"] == big.read_bytes()
    assert r.uploaded_objects == 3


# --------------------------------------------------------------------------- #
# Killed halfway
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_a_publish_killed_at_any_point_leaves_every_link_working(s3: S3Env, tmp_path):
    old, new = mirror_tree(tmp_path, V1), mirror_tree(tmp_path, V2)
    changed = changed_paths(old, new)
    n_uploads = len(changed) + 1
    old_root = as_bytes(old)["simple/index.html"]
    new_root = as_bytes(new)["simple/index.html"]
    order = sorted(changed, key=lambda p: (
        2 if p in ROOTS else 0 if p.startswith("files/") or p.endswith(".metadata") else 1))
    first_root = min(i for i, p in enumerate(order) if p in ROOTS)
    for n in range(n_uploads):
        loc = S3Location(s3.bucket, f"kill{n}")
        publish_s3(old, loc, client=s3.client)
        with pytest.raises(Killed):
            publish_s3(new, loc, client=Recording(s3.client, fail_after=n))
        objects = s3.objects(loc.prefix)
        assert LOCK not in objects
        root = objects["simple/index.html"]
        for k, v in as_bytes(old).items():  # nothing deleted, nothing unchanged rewritten
            assert k in objects and (k in changed or objects[k] == v), (n, k)
        if n <= first_root:
            assert root == old_root, n  # the previous root is intact
        else:
            assert root == new_root
        reachable(objects)
        # the next publish finishes the job, uploading only what is still missing
        rec = Recording(s3.client)
        r = publish_s3(new, loc, client=rec)
        assert without_control(s3.objects(loc.prefix)) == as_bytes(new)
        reachable(s3.objects(loc.prefix))
        assert r.uploaded_objects <= n_uploads
    print(f"\n[s3] killed after each of {n_uploads} uploads: old root intact up to upload "
          f"{first_root}, every link resolved every time")


KILL_SCRIPT = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {src!r})
from spacy_index.publish.s3 import publish_s3
from spacy_index.publish.s3_objects import LOCK
from spacy_index.s3 import S3Location
import boto3
spec = json.loads(Path(sys.argv[1]).read_text())
files = {{p: (Path(v[1]) if v[0] == "path" else bytes.fromhex(v[1])) for p, v in spec.items()}}
real = boto3.session.Session().client("s3", endpoint_url=os.environ["ENDPOINT"])
class Slow:
    def __getattr__(self, name):
        return getattr(real, name)
    def _say(self, key):
        if not key.endswith(LOCK):
            print(key, flush=True)
            time.sleep(0.15)
    def put_object(self, **kw):
        r = real.put_object(**kw); self._say(kw["Key"]); return r
    def upload_file(self, f, b, key, **kw):
        r = real.upload_file(f, b, key, **kw); self._say(key); return r
publish_s3(files, S3Location(os.environ["BUCKET"], "idx"), client=Slow(), lock_ttl=3)
print("DONE", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [2, 9, 13])
def test_kill_9_of_a_publishing_process(s3: S3Env, tmp_path, kill_after):
    old, new = mirror_tree(tmp_path, V1), mirror_tree(tmp_path, V2)
    loc = S3Location(s3.bucket, "idx")
    publish_s3(old, loc, client=s3.client)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        p: ["path", str(v)] if isinstance(v, Path) else ["bytes", v.hex()] for p, v in new.items()
    }))
    script = tmp_path / "publish.py"
    script.write_text(KILL_SCRIPT.format(src=str(REPO / "src")))
    env = {**os.environ, "ENDPOINT": s3.endpoint_url, "BUCKET": s3.bucket}
    proc = subprocess.Popen([sys.executable, str(script), str(spec)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        uploaded = []
        while len(uploaded) < kill_after:
            line = proc.stdout.readline()
            assert line and line.strip() != "DONE", uploaded
            uploaded.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    objects = s3.objects("idx")
    assert LOCK in objects  # the dead process still holds the lock...
    if "idx/simple/index.html" not in uploaded:
        assert objects["simple/index.html"] == as_bytes(old)["simple/index.html"]
    reachable(objects)
    with pytest.raises(OutputLocked):  # ...so a new publisher fails fast
        publish_s3(new, loc, client=s3.client)
    time.sleep(4.5)  # past its 3 s TTL: taken over
    rec = Recording(s3.client)
    r = publish_s3(new, loc, client=rec)
    assert without_control(s3.objects("idx")) == as_bytes(new)
    assert LOCK not in s3.objects("idx")
    reachable(s3.objects("idx"))
    # nothing the killed publish uploaded is uploaded again: each object whose ETag is not the
    # manifest's is checked (HEAD) and adopted, its sha256 metadata being the new content's
    assert not {k for _, k in rec.writes()} & set(uploaded)
    assert r.uploaded_objects == len(changed_paths(old, new)) + 1 - len(uploaded)
    print(f"\n[s3] kill -9 after {kill_after} uploads, then resume: {r.uploaded_objects} objects, "
          f"{r.uploaded_bytes} bytes, {r.deleted_objects} deleted")


# --------------------------------------------------------------------------- #
# Locking and the shrink guard
# --------------------------------------------------------------------------- #
def test_a_second_concurrent_publish_fails_fast(s3: S3Env, tmp_path):
    loc = S3Location(s3.bucket, "idx")
    inside, go_on = threading.Event(), threading.Event()

    def pause(key: str) -> None:
        inside.set()
        assert go_on.wait(30)

    first = Recording(s3.client, on_put=pause)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(
        publish_s3(mirror_tree(tmp_path / "a", V1), loc, client=first)))
    t.start()
    try:
        assert inside.wait(30)
        assert LOCK in s3.objects("idx")
        started = time.monotonic()
        with pytest.raises(OutputLocked, match=r"another build is writing 's3://.*/idx'"):
            publish_s3(mirror_tree(tmp_path / "b", V2), loc, client=s3.client)
        assert time.monotonic() - started < 5
    finally:
        go_on.set()
        t.join(30)
    assert result and result[0].changed
    assert LOCK not in s3.objects("idx")
    assert without_control(s3.objects("idx")) == as_bytes(mirror_tree(tmp_path / "a", V1))


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_a_fresh_one_is_not(s3: S3Env, tmp_path):
    loc = S3Location(s3.bucket, "idx")
    files = mirror_tree(tmp_path, V1)
    s3.client.put_object(Bucket=s3.bucket, Key=f"idx/{LOCK}", Body=json.dumps({"ttl": 60}))
    with pytest.raises(OutputLocked):
        publish_s3(files, loc, client=s3.client)
    assert s3.objects("idx") == {LOCK: b'{"ttl": 60}'}  # nothing written
    s3.client.put_object(Bucket=s3.bucket, Key=f"idx/{LOCK}", Body=json.dumps({"ttl": 1}))
    time.sleep(2.2)
    r = publish_s3(files, loc, client=s3.client)
    assert r.changed and without_control(s3.objects("idx")) == as_bytes(files)
    assert LOCK not in s3.objects("idx")


def test_simultaneous_publishers_never_both_hold_the_lock(s3: S3Env, tmp_path):
    loc = S3Location(s3.bucket, "idx")
    files = mirror_tree(tmp_path, V1)
    holders, overlap = [0], []
    guard = threading.Lock()
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    class Track(Recording):
        def put_object(self, **kw):
            r = super().put_object(**kw)
            if kw["Key"].endswith(LOCK) and "IfNoneMatch" in kw:
                with guard:
                    holders[0] += 1
                    overlap.append(holders[0])
                time.sleep(0.2)
            return r

        def delete_object(self, **kw):
            if kw["Key"].endswith(LOCK):
                with guard:
                    holders[0] -= 1
            return super().delete_object(**kw)

    def run() -> None:
        barrier.wait()
        try:
            publish_s3(files, loc, client=Track(new_client(s3.endpoint_url)))
            outcomes.append("published")
        except OutputLocked:
            outcomes.append("locked")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert max(overlap) == 1
    assert outcomes.count("published") >= 1 and len(outcomes) == 4
    assert without_control(s3.objects("idx")) == as_bytes(files)


def test_shrink_guard(s3: S3Env):
    loc = S3Location(s3.bucket, "idx")

    def tree(n: int, tag: str = "a") -> dict[str, bytes | Path]:
        """A marker that counts ``n`` files, and one page per 10 of them."""
        files: dict[str, bytes | Path] = {f"simple/p{i}/index.html": f"{tag}{i}".encode()
                                          for i in range(n // 10)}
        files[MARKER] = json.dumps({"files": n}).encode()
        return files

    publish_s3(tree(100), loc, client=s3.client)
    before = s3.objects("idx")
    rec = Recording(s3.client)
    with pytest.raises(ShrinkRefused, match="100 to 80"):
        publish_s3(tree(80), loc, client=rec)
    assert rec.writes() == []
    assert s3.objects("idx") == before
    r = publish_s3(tree(80), loc, client=s3.client, allow_shrink=True)
    assert r.deleted_objects == 2
    assert without_control(s3.objects("idx")) == tree(80)
    r = publish_s3(tree(75, "b"), loc, client=s3.client)  # -6%: fine
    assert r.deleted_objects == 1


# --------------------------------------------------------------------------- #
# Errors: one line, says what to do, no secrets
# --------------------------------------------------------------------------- #
def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert "testing-secret-do-not-print" not in msg and "hunter2" not in msg
    return msg


def test_missing_bucket(s3: S3Env, tmp_path):
    with pytest.raises(PublishError) as info:
        publish_s3({MARKER: b"{}"}, S3Location("no-such-bucket", "x"),
                   endpoint_url=s3.endpoint_url)
    msg = _one_line(info.value)
    assert "bucket 'no-such-bucket' does not exist" in msg and "create it" in msg
    assert "nothing was changed" in msg


def test_no_credentials(monkeypatch, tmp_path):
    aws_test_env(monkeypatch)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with moto_server() as url, pytest.raises(PublishError) as info:
        publish_s3({MARKER: b"{}"}, S3Location("bucket", "x"), endpoint_url=url)
    assert "no S3 credentials" in _one_line(info.value)
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_access_denied_is_explained(s3: S3Env):
    from botocore.exceptions import ClientError

    class Denied(Recording):
        def put_object(self, **kw):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")

    with pytest.raises(PublishError) as info:
        publish_s3({MARKER: b"{}"}, S3Location(s3.bucket, "x"), client=Denied(s3.client))
    msg = _one_line(info.value)
    assert "access denied" in msg and "s3:PutObject" in msg


def test_unreachable_endpoint_is_one_line_and_redacted(monkeypatch):
    aws_test_env(monkeypatch)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        publish_s3({MARKER: b"{}"}, S3Location("bucket", "x"),
                   endpoint_url=f"http://user:hunter2@127.0.0.1:{port}")
    msg = _one_line(info.value)
    assert "check --s3-endpoint-url" in msg
    assert time.monotonic() - started < 15


# --------------------------------------------------------------------------- #
# Part 2: a bucket shared by several servers as their cache
# --------------------------------------------------------------------------- #
PAYLOAD = wheel_bytes("shared", 300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def store_for(s3: S3Env, root: Path, **kw: Any):
    from spacy_index.cache import FileCache
    from spacy_index.cache.s3 import S3FileStore

    cache = FileCache(root, client=None)  # type: ignore[arg-type]  # only .path/.cached used
    kw.setdefault("poll_interval", 0.1)
    return S3FileStore(cache, S3Location(s3.bucket, "cache"), client=new_client(s3.endpoint_url),
                       **kw)


def counting_download(store, calls: list[str], *, delay: float = 0.3, fail: bool = False):
    """What a server passes: download upstream into *its own* local cache."""
    async def download() -> Path:
        calls.append(str(store.cache.root))
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("upstream broke")
        path = store.cache.path(PAYLOAD_SHA)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PAYLOAD)
        return path
    return download


def test_two_servers_sharing_a_bucket_download_once(s3: S3Env, tmp_path):
    a, b = store_for(s3, tmp_path / "a"), store_for(s3, tmp_path / "b")
    calls: list[str] = []

    async def main():
        return await asyncio.gather(
            a.fetch(PAYLOAD_SHA, "shared.whl", counting_download(a, calls)),
            b.fetch(PAYLOAD_SHA, "shared.whl", counting_download(b, calls)),
            a.fetch(PAYLOAD_SHA, "shared.whl", counting_download(a, calls)),  # same process
        )

    pa, pb, pa2 = asyncio.run(main())
    assert len(calls) == 1
    assert pa == pa2 == a.cache.path(PAYLOAD_SHA) and pb == b.cache.path(PAYLOAD_SHA)
    assert pa.read_bytes() == pb.read_bytes() == PAYLOAD
    assert a.stats["uploads"] + b.stats["uploads"] == 1
    assert a.stats["s3_fetches"] + b.stats["s3_fetches"] == 1
    objects = s3.objects("cache")
    assert objects == {f"files/{PAYLOAD_SHA[:2]}/{PAYLOAD_SHA}": PAYLOAD}  # no lock left
    assert s3.head(f"cache/files/{PAYLOAD_SHA[:2]}/{PAYLOAD_SHA}")["Metadata"] == {
        "sha256": PAYLOAD_SHA}

    class NoNetwork:
        def __getattr__(self, name):
            raise AssertionError(f"no request expected, got {name}")

    a._client = NoNetwork()  # a local hit makes no request
    assert asyncio.run(a.fetch(PAYLOAD_SHA, "shared.whl", counting_download(a, calls))) == pa
    assert len(calls) == 1
    print(f"\n[s3 cache] 2 stores, 3 concurrent fetches: {len(calls)} upstream download, "
          f"1 upload ({len(PAYLOAD)} bytes), 1 S3 fetch")


FETCH_SCRIPT = r"""
import asyncio, os, sys
from pathlib import Path
sys.path.insert(0, {src!r})
import boto3
from spacy_index.cache import FileCache
from spacy_index.cache.s3 import S3FileStore
from spacy_index.s3 import S3Location
payload = Path(sys.argv[2]).read_bytes()
sha = sys.argv[3]
cache = FileCache(Path(sys.argv[1]), client=None)
store = S3FileStore(cache, S3Location(os.environ["BUCKET"], "cache"), poll_interval=0.1,
                    endpoint_url=os.environ["ENDPOINT"])
async def download():
    with open(os.environ["COUNTER"], "a") as f:
        f.write(f"{{os.getpid()}}\n")
    await asyncio.sleep(0.5)
    p = cache.path(sha); p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(payload)
    return p
path = asyncio.run(store.fetch(sha, "shared.whl", download))
assert path.read_bytes() == payload
print("OK", flush=True)
"""


@pytest.mark.slow
def test_several_server_processes_download_once(s3: S3Env, tmp_path):
    script = tmp_path / "fetch.py"
    script.write_text(FETCH_SCRIPT.format(src=str(REPO / "src")))
    payload = tmp_path / "payload"
    payload.write_bytes(PAYLOAD)
    counter = tmp_path / "downloads"
    env = {**os.environ, "ENDPOINT": s3.endpoint_url, "BUCKET": s3.bucket, "COUNTER": str(counter)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"server{i}"),
                               str(payload), PAYLOAD_SHA], env=env, stdout=subprocess.PIPE,
                              text=True) for i in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0] and all("OK" in o for o in outs)
    assert len(counter.read_text().splitlines()) == 1
    for i in range(4):
        assert (tmp_path / f"server{i}" / "files" / PAYLOAD_SHA[:2] / PAYLOAD_SHA).read_bytes() \
            == PAYLOAD
    print("\n[s3 cache] 4 server processes: 1 upstream download")


def test_a_dead_downloaders_lock_is_taken_over_after_its_ttl(s3: S3Env, tmp_path):
    a = store_for(s3, tmp_path / "a")
    s3.client.put_object(Bucket=s3.bucket, Key=f"cache/locks/{PAYLOAD_SHA}.lock", Body=b"{}",
                         Metadata={"ttl": "2"})
    calls: list[str] = []
    started = time.monotonic()
    path = asyncio.run(a.fetch(PAYLOAD_SHA, "shared.whl", counting_download(a, calls, delay=0)))
    # S3's Last-Modified and Date have a resolution of one second, and so has the TTL
    assert time.monotonic() - started >= 1.0
    assert path.read_bytes() == PAYLOAD and len(calls) == 1 and a.stats["takeovers"] == 1
    assert s3.objects("cache") == {f"files/{PAYLOAD_SHA[:2]}/{PAYLOAD_SHA}": PAYLOAD}


def test_a_failed_download_releases_the_lock_for_the_next_server(s3: S3Env, tmp_path):
    a, b = store_for(s3, tmp_path / "a"), store_for(s3, tmp_path / "b")
    calls: list[str] = []

    async def main():
        first = asyncio.ensure_future(
            a.fetch(PAYLOAD_SHA, "shared.whl", counting_download(a, calls, fail=True)))
        await asyncio.sleep(0.15)  # a holds the lock
        second = b.fetch(PAYLOAD_SHA, "shared.whl", counting_download(b, calls))
        return await asyncio.gather(first, second, return_exceptions=True)

    ra, rb = asyncio.run(main())
    assert isinstance(ra, RuntimeError)
    assert rb == b.cache.path(PAYLOAD_SHA) and rb.read_bytes() == PAYLOAD
    assert calls == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_a_corrupt_object_in_the_bucket_is_never_used(s3: S3Env, tmp_path):
    a = store_for(s3, tmp_path / "a")
    key = f"cache/files/{PAYLOAD_SHA[:2]}/{PAYLOAD_SHA}"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"not the file")
    calls: list[str] = []
    path = asyncio.run(a.fetch(PAYLOAD_SHA, "shared.whl", counting_download(a, calls, delay=0)))
    assert path.read_bytes() == PAYLOAD and len(calls) == 1 and a.stats["corrupt"] == 1
    assert s3.objects("cache") == {key.removeprefix("cache/"): PAYLOAD}
