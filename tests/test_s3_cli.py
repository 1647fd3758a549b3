"""S3 through the CLI: `build --mirror --out s3://…` and two `serve --cache s3://…` replicas."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from spacy_index.cli import main
from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.fakegithub import FakeGitHub
from tests.htmlparse import parse_anchors
from tests.s3server import s3_fixture  # noqa: F401 (fixture)
from tests.servers import run_app
from tests.wheels import meta_archive

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def packages(model_wheels):
    return [model_wheels(version="3.8.50"), model_wheels(name="core_web_md", version="3.8.50", pad_bytes=2 << 20)]


def test_build_mirror_to_s3_then_republish_uploads_nothing(s3, tmp_path, packages, capsys):
    with FakeGitHub(load_fixture=False, archive=meta_archive(packages)) as gh:
        for p in packages:
            gh.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
        env = {"GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "c")}
        argv = ["build", "--mirror", "--out", f"s3://{s3.bucket}/models", "--s3-endpoint-url", s3.endpoint_url]
        assert main([*argv, "-q"], env=env) == 0
        objects = s3.objects("models")
        for p in packages:
            assert objects[f"files/{p.wheel.name}"] == p.wheel.read_bytes()
            assert objects[f"files/{p.wheel.name}.metadata"] == p.metadata
        (attrs, _), = parse_anchors(objects["simple/en-core-web-sm/index.html"].decode()).anchors
        assert attrs["href"].startswith("../../files/")
        assert s3.head("models/simple/en-core-web-sm/index.json")["ContentType"] == "application/vnd.pypi.simple.v1+json"
        capsys.readouterr()
        assert main(argv, env=env) == 0
        out = capsys.readouterr().out
        assert "unchanged, nothing rewritten" in out
        assert s3.objects("models") == objects


def test_two_servers_sharing_a_bucket_download_each_file_once(s3, tmp_path, packages):
    md = packages[1]
    with FakeGitHub(load_fixture=False, archive=meta_archive(packages)) as gh:
        for p in packages:
            gh.add_release(f"{p.project}-{p.version}", {p.wheel.name: p.wheel.read_bytes()})
        config = load_config(None, {}, upstream="http://127.0.0.1:9/simple/")
        servers = [build_server(config, cache_dir=tmp_path / f"cache{i}", api_url=gh.api_url, token=None,
                                s3_cache=f"s3://{s3.bucket}/cache", s3_endpoint_url=s3.endpoint_url)
                   for i in range(2)]
        with run_app(create_app(servers[0])) as a, run_app(create_app(servers[1])) as b:
            for url in (a, b):
                httpx.get(url + "/simple/en-core-web-md/")
            n = len(gh.requests)

            async def get(url):
                async with httpx.AsyncClient(timeout=120) as c:
                    r = await c.get(f"{url}/files/{md.wheel.name}")
                    return r.status_code, hashlib.sha256(r.content).hexdigest()

            async def both():
                return await asyncio.gather(*(get(u) for u in (a, b, a, b, a, b)))

            results = asyncio.run(both())
        assert results == [(200, md.sha256)] * 6
        downloads = [r for r in gh.requests[n:] if r.origin == "objects" and r.method == "GET"]
        assert len(downloads) == 1, downloads
