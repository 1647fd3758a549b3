"""Every mistake a user can make: one clear line, a non-zero exit, no traceback, no secret.

A table of bad inputs across build, serve, install, list, snapshot and the serve config,
run in-process through ``cli.main`` (the console script is a thin wrapper around it), plus a
bounded hypothesis test that random config files and argument lists never give a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_index.cli import main

SECRET = "planted-secret-Kx7q"  # must appear in no output
DEAD_API = "http://127.0.0.1:9"  # nothing listens there: refused at once


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    says: str
    config: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: argparse's own errors print a usage block before the one error line
    max_lines: int = 3


CONFIG_CASES = [
    Case("typo-server-key", [], 2, "line 2: unknown key 'upstrem' in [server]", '[server]\nupstrem = "https://x/simple/"\n'),
    Case("typo-server-key-hint", [], 2, "did you mean 'upstream'?", '[server]\nupstrem = "https://x/simple/"\n'),
    Case("typo-sources-table", [], 2, "unknown table [sources]; did you mean 'source'?",
         '[[sources]]\nkind = "simple"\nurl = "https://x/"\nprojects = ["acme-*"]\n'),
    Case("typo-projects", [], 2, "did you mean 'projects'?",
         '[[source]]\nkind = "simple"\nurl = "https://x/"\nprojcts = ["acme-*"]\n'),
    Case("literal-key-in-url", [], 2, "literal credential",
         '[[source]]\nkind = "find-links"\nurl = "https://' + SECRET + '@x.example/"\nprojects = ["p"]\n'),
    Case("literal-user-pass-in-url", [], 2, "literal credential",
         '[[source]]\nkind = "simple"\nurl = "https://u:' + SECRET + '@x.example/s/"\nprojects = ["p"]\n'),
    Case("literal-credential-upstream", [], 2, "literal credential",
         '[server]\nupstream = "https://u:' + SECRET + '@x.example/simple/"\n'),
    Case("unset-variable-upstream", [], 2, "needs the environment variable UP_PASS",
         '[server]\nupstream = "https://u:${UP_PASS}@x.example/simple/"\n'),
    Case("page-ttl-text", [], 2, "Expected `float`, got `str`", '[server]\npage_ttl = "sixty"\n'),
    Case("page-ttl-negative", [], 2, "Expected `float` >= 0", "[server]\npage_ttl = -1\n"),
    Case("refresh-zero", [], 2, "Expected `float` > 0", "[server]\nrefresh = 0\n"),
    Case("folder-missing", [], 2, "is not a folder",
         '[[source]]\nkind = "folder"\npath = "/nonexistent/wheels"\nprojects = ["p"]\n'),
    Case("kind-unknown", [], 2, "kind must be one of simple, find-links",
         '[[source]]\nkind = "ftp"\nprojects = ["p"]\n'),
    Case("kind-missing", [], 2, "missing required field `kind`", '[[source]]\nprojects = ["p"]\n'),
    Case("toml-invalid", [], 2, "is not valid TOML", "[server\nupstream = 1\n"),
    Case("credentials-unknown", [], 2, "credentials must be one of none, netrc, keyring",
         '[[source]]\nkind = "simple"\nurl = "https://x/"\nprojects = ["p"]\ncredentials = "vault"\n'),
    Case("username-literal", [], 2, "must come from the environment",
         '[[source]]\nkind = "simple"\nurl = "https://x/"\nprojects = ["p"]\nusername = "' + SECRET + '"\n'),
    Case("duplicate-source-name", [], 2, "two [[source]] tables are named 'a'",
         '[[source]]\nname = "a"\nkind = "simple"\nurl = "https://x/"\nprojects = ["p"]\n'
         '[[source]]\nname = "a"\nkind = "simple"\nurl = "https://y/"\nprojects = ["q"]\n'),
    Case("url-on-github-kind", [], 2, "url is for kinds 'simple' and 'find-links'",
         '[[source]]\nkind = "github"\nrepo = "a/b"\nurl = "https://x/"\nprojects = ["p"]\n'),
    Case("repo-malformed", [], 2, "key 'repo'",
         '[[source]]\nkind = "github"\nrepo = "not a repo"\nprojects = ["p"]\n'),
    Case("projects-empty", [], 2, "key 'projects'",
         '[[source]]\nkind = "simple"\nurl = "https://x/"\nprojects = []\n'),
    Case("require-hashes-text", [], 2, "Expected `bool`",
         '[[source]]\nkind = "simple"\nurl = "https://x/"\nprojects = ["p"]\nrequire_hashes = "yes"\n'),
    Case("url-not-http", [], 2, "is not an http:// or https:// URL",
         '[[source]]\nkind = "simple"\nurl = "ftp://x/"\nprojects = ["p"]\n'),
    Case("ca-bundle-missing", [], 2, "cannot load the CA certificates in ca_bundle",
         '[server]\nca_bundle = "/nonexistent/ca.pem"\n'),
    Case("spacy-models-unknown-key", [], 2, "did you mean 'spacy_models'?", "[server]\nspacy_model = false\n"),
]
for case in CONFIG_CASES:
    case.argv = ["serve", "--port", "0", "--config", "CONFIG"]

CLI_CASES = [
    Case("config-file-missing", ["serve", "--port", "0", "--config", "/nonexistent.toml"], 2,
         "cannot read config"),
    Case("port-too-big", ["serve", "--port", "99999"], 2, "a port is 0-65535", max_lines=12),
    Case("port-not-a-number", ["serve", "--port", "eighty"], 2, "not a port number", max_lines=12),
    Case("port-in-use", ["serve", "--port", "BUSY"], 2, "cannot listen on 127.0.0.1:"),
    Case("tls-cert-missing", ["serve", "--port", "0", "--tls-cert", "/nope.pem", "--tls-key", "/nope.key"],
         2, "--tls-cert '/nope.pem': no such file"),
    Case("tls-key-alone", ["serve", "--port", "0", "--tls-key", "/nope.key"], 2, "go together"),
    Case("tls-cert-garbage", ["serve", "--port", "0", "--tls-cert", "GARBAGE", "--tls-key", "GARBAGE"],
         2, "cannot use the TLS certificate or key"),
    Case("serve-ca-bundle-missing", ["serve", "--port", "0", "--ca-bundle", "/nonexistent"], 2,
         "cannot load the CA certificates"),
    Case("build-no-out", ["build"], 2, "the following arguments are required: --out", max_lines=12),
    Case("build-only-typo", ["build", "--offline", "--out", "OUT", "--only", "en_core_wbe_*"], 2,
         "matched no project; did you mean"),
    Case("build-only-nothing-like-it", ["build", "--offline", "--out", "OUT", "--only", "zzzz"], 2,
         "--only zzzz matched no project"),
    Case("build-spacy-not-a-version", ["build", "--offline", "--out", "OUT", "--spacy", "three"], 2,
         "--spacy needs a version"),
    Case("build-spacy-nothing-fits", ["build", "--offline", "--out", "OUT", "--spacy", "0.1"], 2,
         "no file of the selected projects fits spaCy 0.1"),
    Case("build-offline-no-snapshot", ["build", "--offline", "--no-snapshot", "--out", "OUT"], 2,
         "cannot be combined with --no-snapshot"),
    Case("build-base-url-alone", ["build", "--offline", "--out", "OUT", "--base-url", "https://m/"], 2,
         "--base-url goes with --mirror"),
    Case("build-bad-s3-url", ["build", "--offline", "--out", "s3://"], 2, "not a usable S3 URL"),
    Case("build-out-is-a-file", ["build", "--offline", "--out", "AFILE"], 1, "is not a folder"),
    Case("build-out-foreign-folder", ["build", "--offline", "--out", "FOREIGN"], 1,
         "was not written by spacy-index"),
    Case("build-snapshot-missing", ["build", "--offline", "--snapshot", "/nonexistent.json.gz", "--out", "OUT"],
         1, "snapshot"),
    Case("build-snapshot-corrupt", ["build", "--offline", "--snapshot", "GARBAGE", "--out", "OUT"], 1,
         "snapshot"),
    Case("build-api-unreachable", ["build", "--out", "OUT", "--only", "en_core_web_sm", "--max-wait", "1"],
         1, "cannot reach GitHub at http://127.0.0.1:9", env={"GITHUB_API_URL": DEAD_API}),
    Case("build-ca-bundle-missing", ["build", "--out", "OUT", "--ca-bundle", "/nonexistent"], 2,
         "cannot load the CA certificates in ca_bundle"),
    Case("build-cache-dir-is-a-file", ["build", "--mirror", "--offline", "--only", "en_core_web_sm",
                                       "--out", "OUT", "--cache-dir", "AFILE"], 1, "Not a directory"),
    Case("list-spacy-nothing", ["list", "--spacy", "9.9", "--cache-dir", "CACHE"], 2,
         "no pipeline runs on spaCy 9.9.x; pipelines exist for spaCy"),
    Case("list-spacy-not-a-version", ["list", "--spacy", "three", "--cache-dir", "CACHE"], 2,
         "--spacy needs auto or a version"),
    Case("list-api-unreachable-elsewhere", ["list", "--cache-dir", "CACHE", "--refresh"], 1,
         "cannot reach GitHub at http://127.0.0.1:9", env={"GITHUB_API_URL": DEAD_API}),
    Case("install-unknown-model", ["install", "en_core_web_smm", "--spacy", "3.8", "--dry-run",
                                   "--cache-dir", "CACHE"], 2, "did you mean"),
    Case("install-no-version-for-spacy", ["install", "en_core_web_sm", "--spacy", "2.9", "--dry-run",
                                          "--cache-dir", "CACHE"], 1, "spaCy versions that have one: 3.0"),
    Case("install-spacy-not-a-version", ["install", "en_core_web_sm", "--spacy", "three", "--dry-run",
                                         "--cache-dir", "CACHE"], 2, "--spacy needs auto or a version"),
    Case("install-python-missing", ["install", "en_core_web_sm", "--python", "/nonexistent/python",
                                    "--cache-dir", "CACHE"], 2, "/nonexistent/python"),
    Case("install-no-spacy-there", ["install", "en_core_web_sm", "--python", "BAREPY",
                                    "--cache-dir", "CACHE"], 1, "spaCy is not installed for"),
    Case("install-index-missing-folder", ["install", "en_core_web_sm", "--spacy", "3.8", "--dry-run",
                                          "--index", "/nonexistent/mirror", "--cache-dir", "CACHE"], 2,
         "/nonexistent/mirror"),
    Case("install-api-unreachable-elsewhere", ["install", "en_core_web_sm", "--spacy", "3.8", "--dry-run",
                                               "--refresh", "--cache-dir", "CACHE"], 1,
         "cannot reach GitHub at http://127.0.0.1:9", env={"GITHUB_API_URL": DEAD_API}),
    Case("snapshot-no-out", ["snapshot"], 2, "the following arguments are required: --out", max_lines=12),
    Case("snapshot-api-unreachable", ["snapshot", "--out", "OUT/snap.json.gz", "--max-wait", "1",
                                      "--cache-dir", "CACHE"], 1, "cannot reach GitHub",
         env={"GITHUB_API_URL": DEAD_API}),
    Case("unknown-command", ["publish"], 2, "invalid choice: 'publish'", max_lines=12),
    Case("unknown-option", ["build", "--out", "OUT", "--fast"], 2, "unrecognized arguments: --fast",
         max_lines=12),
    # what follows -- is for pip (install, download); serve must not start with it ignored
    Case("unknown-after-dashes-serve", ["serve", "--", "--config", "/nonexistent.toml"], 2,
         "serve takes none: --config /nonexistent.toml", max_lines=12),
    Case("unknown-after-dashes-build", ["build", "--out", "OUT", "--", "--offline"], 2,
         "build takes none: --offline", max_lines=12),
]

CASES = CONFIG_CASES + CLI_CASES


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """An interpreter without spaCy (a venv without pip: made in well under a second)."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return str(folder / "bin" / "python")


def _prepare(case: Case, tmp_path: Path, bare: str) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine\n")
    (tmp_path / "garbage").write_bytes(os.urandom(256))
    subs = {"OUT": str(tmp_path / "out"), "AFILE": str(tmp_path / "afile"),
            "FOREIGN": str(tmp_path / "foreign"), "GARBAGE": str(tmp_path / "garbage"),
            "CACHE": str(tmp_path / "cache"), "BAREPY": bare,
            "OUT/snap.json.gz": str(tmp_path / "out" / "snap.json.gz")}
    if case.config is not None:
        (tmp_path / "serve.toml").write_text(case.config)
        subs["CONFIG"] = str(tmp_path / "serve.toml")
    argv = [subs.get(a, a) for a in case.argv]
    env = {"GITHUB_TOKEN": SECRET, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "cache"),
           "HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), **case.env}
    return argv, env


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.slow
def test_bad_input_is_one_clear_line(case, tmp_path, capsys, bare_python):
    argv, env = _prepare(case, tmp_path, bare_python)
    busy = None
    if "BUSY" in argv:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        argv[argv.index("BUSY")] = str(busy.getsockname()[1])
    try:
        code = main(argv, env)
    finally:
        if busy is not None:
            busy.close()
    out, err = capsys.readouterr()
    text = out + err
    assert code == case.code, text
    assert case.says in text, text
    assert "Traceback" not in text
    assert SECRET not in text
    assert len(err.strip().splitlines()) <= case.max_lines, err
    if not case.id.startswith(("port-", "build-no-out", "snapshot-no-out", "unknown-")):
        assert err.strip().splitlines()[-1].startswith("error: "), err


def test_the_table_covers_at_least_fifty_cases():
    assert len(CASES) >= 50


def test_a_failed_build_leaves_no_lock_file_and_no_output(tmp_path, capsys):
    assert main(["build", "--offline", "--out", str(tmp_path / "out"), "--only", "nothing"], {}) == 2
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- fuzzing
_KEYS = st.sampled_from(["upstream", "page_ttl", "refresh", "spacy_models", "kind", "url", "name",
                         "projects", "path", "repo", "username", "credentials", "ca_bundle",
                         "proxy", "require_hashes", "stale_while_revalidate", "x"])
_VALUES = st.one_of(st.integers(-5, 10**6), st.booleans(), st.text(max_size=20),
                    st.lists(st.text(max_size=8), max_size=3), st.floats(allow_nan=True))


def _toml_value(v: object) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return json.dumps(v)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=st.lists(st.tuples(st.sampled_from(["[server]", "[[source]]", "[[sources]]", "[cache]"]),
                                 st.dictionaries(_KEYS, _VALUES, max_size=5)), max_size=3))
def test_random_config_files_give_a_clean_error_or_a_config(tables, tmp_path_factory):
    from spacy_index.errors import SpacyIndexError
    from spacy_index.server.config import load_config

    lines = []
    for header, values in tables:
        lines.append(header)
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    path = tmp_path_factory.mktemp("fuzz") / "serve.toml"
    path.write_text("\n".join(lines) + "\n")
    try:
        load_config(path, {})
    except SpacyIndexError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=40, deadline=None)
@given(argv=st.lists(st.sampled_from(["build", "list", "install", "serve", "--out",
                                      "--only", "--spacy", "--port", "--offline", "-q", "x", "3.8",
                                      "--json", "--dry-run", "--config", "--", "--debug", "en_core_web_sm",
                                      "--max-wait", "-1", "--no-snapshot", "--wheels-only"]),
                     min_size=1, max_size=6))
def test_random_argv_gives_a_clean_error_or_success(argv, tmp_path_factory):
    """Nothing here may start a server or reach a network: serve gets no usable port."""
    import contextlib
    import io
    from unittest import mock

    if "serve" in argv:
        argv = [*argv, "--config", "/nonexistent.toml"]
    argv = [a for a in argv if a != "--debug"]  # --debug shows tracebacks on purpose
    folder = tmp_path_factory.mktemp("argv")
    argv = [str(folder / "o") if a == "x" else a for a in argv]
    env = {"GITHUB_API_URL": DEAD_API, "SPACY_INDEX_CACHE_DIR": str(folder / "c"), "HOME": str(folder)}
    err = io.StringIO()

    class ServerStarted(BaseException):  # not an Exception: main() must not turn it into a line
        pass

    def no_server(*args, **kwargs):
        raise ServerStarted(f"{argv} started a server")

    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            mock.patch("uvicorn.Server.run", no_server):
        code = main([*argv, "--offline"] if argv[:1] == ["build"] else argv, env)
    assert isinstance(code, int)
    assert "Traceback" not in err.getvalue()
