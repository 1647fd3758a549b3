"""Every source kind answers the app's questions itself (issue 12): where a file is on disk,
what the upstream page said of it, whether hashes are required, which client downloads."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from spacy_index.catalog import Catalog
from spacy_index.http import OriginBasicAuth, OriginBearerAuth, redact_url
from spacy_index.server.config import SourceConfig
from spacy_index.server.sources import CatalogSource, FolderSource, IndexSource, Source
from spacy_index.server.sources.clients import strip_userinfo
from spacy_index.simple.parse import UpstreamFile, parse_page
from spacy_index.urls import without_userinfo

WHEEL = "en_core_web_sm-3.7.1-py3-none-any.whl"
PROTOCOL = ("name", "client", "files_client", "require_hashes", "project", "peek",
            "project_names", "local_path", "upstream_file", "holds_catalog", "catalog",
            "loaded_at", "failing", "wrap_loads", "local_state", "aclose")


def _folder(tmp_path: Path, **cfg: object) -> FolderSource:
    (tmp_path / WHEEL).write_bytes(b"a wheel")
    return FolderSource(SourceConfig(name="local", kind="folder", projects=("*",),
                                     path=tmp_path, **cfg))  # type: ignore[arg-type]


def _index(**cfg: object) -> IndexSource:
    return IndexSource(SourceConfig(name="private", kind="simple", projects=("*",),
                                    url="https://pkgs.example/simple/", **cfg))  # type: ignore[arg-type]


def _catalog(**cfg: object) -> CatalogSource:
    return CatalogSource(SourceConfig(name="gh", kind="github", projects=("*",),
                                      repo="explosion/spacy-models", **cfg),  # type: ignore[arg-type]
                         load=lambda: Catalog.from_distributions([]))


def test_a_folder_serves_its_files_from_disk_and_opens_no_client_for_it(tmp_path: Path) -> None:
    source = _folder(tmp_path)
    project = asyncio.run(source.project("en-core-web-sm"))  # type: ignore[arg-type]
    assert project is not None
    (dist,) = project.files
    assert dist.sha256 == hashlib.sha256(b"a wheel").hexdigest()
    assert source.local_path(dist) == tmp_path / WHEEL
    assert source.upstream_file(WHEEL) is None
    assert source.require_hashes is False
    assert "client" not in vars(source)  # never used: files come from disk
    asyncio.run(source.aclose())  # nothing to close
    assert "client" not in vars(source)


def test_a_folder_client_is_made_on_first_use_and_closed(tmp_path: Path) -> None:
    source = _folder(tmp_path, require_hashes=True)
    assert source.require_hashes is True
    client = source.client
    assert isinstance(client, httpx.AsyncClient)
    assert source.files_client is client is source.client
    asyncio.run(source.aclose())
    assert client.is_closed


def test_an_index_knows_what_its_pages_said_of_a_file() -> None:
    source = _index(require_hashes=True)
    try:
        assert source.require_hashes is True
        assert source.upstream_file(WHEEL) is None
        source.upstream_files[WHEEL] = UpstreamFile(True, "a" * 64)
        assert source.upstream_file(WHEEL) == UpstreamFile(True, "a" * 64)
        project = parse_page(f'<a href="{WHEEL}">x</a>'.encode(), "text/html",
                             "https://pkgs.example/simple/en-core-web-sm/",
                             "en-core-web-sm")  # type: ignore[arg-type]
        assert source.local_path(project.dists[0]) is None
        # downloads have a pool of their own
        assert source.files_client is not source.client
    finally:
        asyncio.run(source.aclose())


def test_a_catalog_source_downloads_through_its_one_client() -> None:
    source = _catalog()
    try:
        assert source.require_hashes is False
        assert source.files_client is source.client
        assert source.upstream_file(WHEEL) is None
        assert source.local_path(parse_page(
            f'<a href="https://github.example/{WHEEL}">x</a>'.encode(), "text/html",
            "https://x.example/", "en-core-web-sm").dists[0]) is None  # type: ignore[arg-type]
    finally:
        asyncio.run(source.aclose())


def test_every_source_kind_has_every_member_of_the_protocol(tmp_path: Path) -> None:
    sources: list[Source] = [_folder(tmp_path), _index(), _catalog()]
    for source in sources:
        for member in PROTOCOL:
            assert hasattr(source, member), (type(source).__name__, member)
        asyncio.run(source.aclose())


@pytest.mark.parametrize(("url", "clean", "user", "password"), [
    ("https://pkgs.example/simple/", "https://pkgs.example/simple/", None, None),
    ("https://u:p%40x@pkgs.example/simple/", "https://pkgs.example/simple/", "u", "p@x"),
    ("https://key@pkgs.example/s", "https://pkgs.example/s", "key", None),
    ("https://:p@pkgs.example/s", "https://pkgs.example/s", None, "p"),
    ("https://pkgs.example/a@b", "https://pkgs.example/a@b", None, None),  # an @ in the path
])
def test_userinfo_is_split_off_one_way(url: str, clean: str, user: str | None,
                                       password: str | None) -> None:
    assert without_userinfo(url) == (clean, user, password)
    assert strip_userinfo(url) == (clean, user, password)
    assert redact_url(url) == (url if user is None and password is None
                               else url.replace(url[8:url.rindex("@")], "***"))


def test_a_configured_url_with_credentials_is_cleaned_as_httpx_writes_it() -> None:
    # the host is compared with what httpx reports as the response's URL
    assert strip_userinfo("https://u:p@Pkgs.Example:443/simple/")[0] == "https://pkgs.example/simple/"


def test_origin_bound_auth_goes_to_its_origin_only() -> None:
    basic = OriginBasicAuth("user", "pässword", "https://pkgs.example/simple/")
    expected = next(httpx.BasicAuth("user", "pässword").auth_flow(
        httpx.Request("GET", "https://pkgs.example/")))
    bearer = OriginBearerAuth("s3cr3t", "https://api.example")
    for auth, url, header in (
            (basic, "https://pkgs.example/simple/x/", expected.headers["Authorization"]),
            (bearer, "https://api.example/repos", "Bearer s3cr3t")):
        assert next(auth.auth_flow(httpx.Request("GET", url))).headers["Authorization"] == header
        other = httpx.Request("GET", "https://cdn.example/x", headers={"Authorization": "x"})
        assert "Authorization" not in next(auth.auth_flow(other)).headers
        assert "***" in repr(auth) and "s3cr3t" not in repr(auth) and "pässword" not in repr(auth)


def test_catalog_and_readiness_answers_come_from_each_kind(tmp_path: Path) -> None:
    """What /ready, /metrics and the catalogue page ask, answered without an isinstance."""
    (tmp_path / "f").mkdir()
    folder, index, catalog = _folder(tmp_path / "f"), _index(), _catalog()
    assert [s.holds_catalog for s in (folder, index, catalog)] == [False, False, True]
    assert asyncio.run(folder.catalog()) is None and asyncio.run(index.catalog()) is None
    assert folder.local_state() == "ready" and index.local_state() is None
    assert catalog.local_state() is None
    assert (index.loaded_at, index.failing, catalog.loaded_at) == (None, False, None)
    wrapped: list[str] = []
    catalog.wrap_loads(lambda load, outcome: (wrapped.append(outcome), load)[1])
    index.wrap_loads(lambda load, outcome: wrapped.append("never"))  # type: ignore[arg-type,return-value]
    assert wrapped == ["ok"]
    assert asyncio.run(catalog.catalog()).projects == {}
    assert catalog.loaded_at is not None and catalog.failing is False
    (tmp_path / "f" / WHEEL).unlink()
    (tmp_path / "f").rmdir()
    assert folder.local_state() == "unreadable"
    for s in (folder, index, catalog):
        asyncio.run(s.aclose())
