"""serve: configuration, routing rules, folder and netrc-authenticated sources."""

from __future__ import annotations

import base64
import http.server

import httpx
import pytest

from spacy_index.cli import main
from spacy_index.errors import UsageError
from spacy_index.server.config import load_config
from spacy_index.server.negotiate import negotiate
from spacy_index.server.wiring import build_server, create_app
from tests.servers import run_app, serve_http
from tests.test_serve_upstream import small_wheel


@pytest.mark.parametrize(
    ("name", "routed"),
    [
        ("en_core_web_sm", True), ("en-core-web-trf", True), ("xx_ent_wiki_sm", True),
        ("xx_core_web_xl", True),  # not released yet: still never from PyPI
        ("de_dep_news_trf", True), ("En.Core.Web.Lg", True),
        ("spacy", False), ("requests", False), ("aws-cdk-aws-lambda", False), ("en-core", False),
    ],
)
def test_pipeline_names_are_a_pattern(name, routed):
    config = load_config(None, {})
    source = config.route(name)
    assert (source is not None and source.kind == "spacy-models") is routed


def test_first_matching_source_wins_and_literal_secrets_are_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[source]]\nname="mine"\nkind="folder"\npath="/tmp"\nprojects=["en_core_web_sm"]\n')
    config = load_config(cfg, {})
    assert config.route("en-core-web-sm").name == "mine"
    assert config.route("en-core-web-md").name == "spacy-models"
    cfg.write_text('[[source]]\nkind="simple"\nurl="https://x/"\nusername="hunter2"\nprojects=["p"]\n')
    with pytest.raises(UsageError, match="must come from the environment"):
        load_config(cfg, {})
    cfg.write_text('[[source]]\nkind="simple"\nurl="https://${NOPE}@x/"\nprojects=["p"]\n')
    with pytest.raises(UsageError, match="NOPE"):
        load_config(cfg, {})
    cfg.write_text('[[source]]\nkind="ftp"\nprojects=["p"]\n')
    with pytest.raises(UsageError, match="kind must be one of"):
        load_config(cfg, {})
    cfg.write_text("[[source]\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(cfg, {})


def test_serve_cli_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[source]]\nkind="simple"\nurl="https://x/"\npassword="hunter2"\nprojects=["p"]\n')
    assert main(["serve", "--config", str(cfg)], env={}) == 2
    err = capsys.readouterr().err
    assert "must come from the environment" in err and "hunter2" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/vnd.pypi.simple.v1+html"),
        ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.v1+json"),
        ("application/vnd.pypi.simple.latest+json", "application/vnd.pypi.simple.v1+json"),
        ("application/vnd.pypi.simple.v1+json;q=0.2, text/html", "text/html"),
        ("text/html;q=0.01, application/vnd.pypi.simple.v1+html;q=0.1", "application/vnd.pypi.simple.v1+html"),
        ("*/*", "text/html"),
        ("application/json", None),
        ("text/html;q=0", None),
    ],
)
def test_negotiate(accept, expected):
    assert negotiate(accept) == expected


def test_folder_source_serves_files_and_metadata(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    data = small_wheel("internal_tool", "2.0")
    (wheels / "internal_tool-2.0-py3-none-any.whl").write_bytes(data)
    (wheels / "not-a-dist.txt").write_text("ignored")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[source]]\nname="wh"\nkind="folder"\npath="{wheels}"\nprojects=["internal-tool"]\n')
    server = build_server(load_config(cfg, {}, upstream="http://127.0.0.1:9/simple/"),
                          cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9", token=None)
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        page = c.get("/simple/internal-tool/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
        assert [f["filename"] for f in page["files"]] == ["internal_tool-2.0-py3-none-any.whl"]
        assert c.get("/files/internal_tool-2.0-py3-none-any.whl").content == data
        assert b"Name: internal_tool" in c.get("/files/internal_tool-2.0-py3-none-any.whl.metadata").content
        assert "wh" in c.get("/health").json()["sources"]


def test_netrc_credentials_for_a_private_index(tmp_path, monkeypatch):
    seen = []

    class Private(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"bob:s3cret").decode():
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b'<a href="/f/internal_tool-2.0-py3-none-any.whl#sha256=' + b"a" * 64 + b'">x</a>'
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve_http(Private, name="private-index") as httpd:
        (tmp_path / ".netrc").write_text("machine 127.0.0.1 login bob password s3cret\n")
        (tmp_path / ".netrc").chmod(0o600)
        monkeypatch.setenv("HOME", str(tmp_path))
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[[source]]\nkind="simple"\nurl="http://127.0.0.1:{httpd.server_address[1]}/simple/"\n'
                       'credentials="netrc"\nprojects=["internal-*"]\n')
        server = build_server(load_config(cfg, {}, upstream="http://127.0.0.1:9/simple/"),
                              cache_dir=tmp_path / "cache", api_url="http://127.0.0.1:9", token=None)
        with run_app(create_app(server)) as url:
            r = httpx.get(url + "/simple/internal-tool/")
            assert r.status_code == 200 and "internal_tool-2.0-py3-none-any.whl" in r.text
            assert "s3cret" not in r.text and "bob" not in r.text
    assert seen and all(a and a.startswith("Basic ") for a in seen)


def test_limits_table_has_defaults_sizes_and_clear_errors(tmp_path):
    from spacy_index.server.config import LimitsConfig

    assert load_config(None, {}).limits == LimitsConfig()
    path = tmp_path / "serve.toml"
    path.write_text('[limits]\nmax_header_size = "32KiB"\nmax_header_line = 4096\n'
                    "max_connections = 10\nshutdown_grace = 0\nmax_url_length = 100\n")
    limits = load_config(path, {}).limits
    assert (limits.max_header_size, limits.max_header_line) == (32 << 10, 4096)
    assert (limits.max_connections, limits.shutdown_grace, limits.max_url_length) == (10, 0, 100)
    path.write_text('[limits]\nmax_page_size = "8MiB"\nmax_page_files = 20000\n'
                    'max_metadata_size = "1MiB"\n')
    limits = load_config(path, {}).limits
    assert (limits.max_page_size, limits.max_page_files, limits.max_metadata_size) == (
        8 << 20, 20_000, 1 << 20)
    assert limits.page_fetch == "process"  # the default: page fetches in a process of their own
    path.write_text('[limits]\npage_fetch = "thread"\n')
    assert load_config(path, {}).limits.page_fetch == "thread"
    for text, says in (('[limits]\nmax_page_files = 0\n', "max_page_files"),
                       ('[limits]\nmax_page_size = "huge"\n', "max_page_size"),
                       ('[limits]\npage_fetch = "fork"\n', "page_fetch: Invalid enum value 'fork'"),
                       ('[limits]\nheader_timout = 3\n', "did you mean 'header_timeout'"),
                       ('[limits]\nmax_header_line = "1MiB"\n', "larger than max_header_size"),
                       ('[limits]\nmax_connections = 0\n', "max_connections"),
                       ('[limits]\nmax_header_size = "lots"\n', "not a size")):
        path.write_text(text)
        with pytest.raises(UsageError, match=says):
            load_config(path, {})


@pytest.mark.parametrize(("open_files", "expected"), [
    (None, 1000), (256, 128), (1024, 768), (1 << 20, 1000), (100, 1)])
def test_the_connection_table_leaves_descriptors_for_files_and_upstreams(open_files, expected):
    from spacy_index.server.config import LimitsConfig

    assert LimitsConfig().effective_connections(open_files) == expected
