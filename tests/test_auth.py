"""Client authentication (``[auth]``, server/auth.py): htpasswd users (bcrypt) and bearer
tokens, 401 challenges that real clients answer (pip with URL credentials and with a netrc,
uv with ``UV_INDEX_<NAME>_USERNAME/PASSWORD``, poetry with ``POETRY_HTTP_BASIC_*``, pdm with
``PDM_PYPI_USERNAME/PASSWORD``), exempt probes, rate-limited failures, the fast path turned
off, upstream credentials kept apart, and planted secrets found nowhere."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import httpx
import pytest

from spacy_index.errors import UsageError
from spacy_index.server import auth as auth_module
from spacy_index.server.auth import BAD, BLOCKED, MISSING, OK, Authenticator
from spacy_index.server.config import AuthConfig
from spacy_index.server.wiring import create_app
from tests.clients import make_venv, run, uv_bin
from tests.servers import free_port, run_app, wait_healthy
from tests.workflow_support import base_python, ensure_tools, licensed_host, stub_wheel, tool_env
from tests.worlds import WorldSpec

USER = "alice"
PASSWORD = "pw-PLANTED-7f3a9c-SECRET"
TOKEN = "tok-PLANTED-0e1d2c3b4a5968778695a4b3c2d1e0f"
UPSTREAM_KEY = "UPSTREAM-licence-KEY-93af"
JSON = "application/vnd.pypi.simple.v1+json"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def secrets_of() -> list[str]:
    """Every spelling of the planted client secrets (and the upstream key)."""
    return [PASSWORD, TOKEN, basic(USER, PASSWORD)[6:], basic("__token__", TOKEN)[6:],
            UPSTREAM_KEY, base64.b64encode(f"{UPSTREAM_KEY}:".encode()).decode()]


def htpasswd_line(user: str, password: str, *, prefix: bytes = b"$2b$") -> bytes:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return user.encode() + b":" + prefix + hashed[4:] + b"\n"


def authenticator(tmp_path: Path, **kwargs) -> tuple[Authenticator, list[float]]:
    now = [1000.0]
    htpasswd = tmp_path / "htpasswd"
    if not htpasswd.exists():
        htpasswd.write_bytes(htpasswd_line(USER, PASSWORD) + htpasswd_line("bob", "bob-pw", prefix=b"$2y$"))
    config = AuthConfig(htpasswd=htpasswd, tokens=(TOKEN,), realm=kwargs.pop("realm", "spacy-index"))
    return Authenticator(config, clock=lambda: now[0], **kwargs), now


def check(auth: Authenticator, header: str | None, client: str = "10.0.0.1") -> tuple[str, float]:
    raw = header.encode() if header is not None else None
    return asyncio.run(auth.authenticate(raw, client))


# ----------------------------------------------------------------------------- units
def test_users_and_tokens(tmp_path):
    auth, _ = authenticator(tmp_path)
    assert check(auth, basic(USER, PASSWORD))[0] == OK
    assert check(auth, basic("bob", "bob-pw"))[0] == OK  # htpasswd -B writes $2y$
    assert check(auth, basic(USER, "wrong"))[0] == BAD
    assert check(auth, basic("mallory", PASSWORD))[0] == BAD
    assert check(auth, f"Bearer {TOKEN}")[0] == OK
    assert check(auth, f"bearer  {TOKEN} ")[0] == OK
    assert check(auth, basic("__token__", TOKEN))[0] == OK  # pip, uv, poetry, pdm send Basic
    assert check(auth, basic(TOKEN, ""))[0] == OK  # the token as the user name
    assert check(auth, "Bearer " + TOKEN[:-1])[0] == BAD
    for junk in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest x",
                 "Bearer", "Basic", "", "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode()):
        assert check(auth, junk, client=f"c-{junk}")[0] == BAD
    assert check(auth, None)[0] == MISSING


def test_bad_htpasswd_files_stop_the_server_with_one_line(tmp_path):
    cases = {
        "apr1": (b"carol:$apr1$abc$0123456789abcdefghij.\n", "line 1: the password of user 'carol' is not a bcrypt hash"),
        "sha": (b"# team\n\ndave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "line 3: the password of user 'dave'"),
        "plain": (b"erin:hunter2\n", "user 'erin' is not a bcrypt hash"),
        "nocolon": (b"justaname\n", "line 1: not a 'user:hash' line"),
        "empty": (b"# nobody\n", "holds no user"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(text)
        with pytest.raises(UsageError) as e:
            Authenticator(AuthConfig(htpasswd=path))
        assert message in str(e.value)
        assert "hunter2" not in str(e.value) and "W6ph5" not in str(e.value)
    tokens = tmp_path / "tokens"
    tokens.write_text("# none yet\n\n")
    with pytest.raises(UsageError, match="holds no token"):
        Authenticator(AuthConfig(tokens_file=tokens))


def test_failures_are_rate_limited_per_address(tmp_path):
    auth, now = authenticator(tmp_path, max_failures=10, window=60, block=60)
    assert check(auth, basic(USER, PASSWORD), client="10.0.0.1")[0] == OK  # remembered
    for i in range(9):
        assert check(auth, basic(USER, f"guess-{i}"))[0] == BAD
        now[0] += 1
    verdict, wait = check(auth, basic(USER, "guess-9"))
    assert (verdict, wait) == (BLOCKED, 60)
    now[0] += 30
    # new credentials, even right ones, wait; credentials verified before still work
    assert check(auth, basic("bob", "bob-pw")) == (BLOCKED, 30)
    assert check(auth, f"Bearer {TOKEN}")[0] == BLOCKED
    assert check(auth, basic(USER, PASSWORD))[0] == OK
    assert check(auth, None)[0] == BLOCKED
    assert check(auth, basic("bob", "bob-pw"), client="10.0.0.2")[0] == OK  # another address
    now[0] += 31
    assert check(auth, basic("bob", "bob-pw"))[0] == OK
    # failures spread wider than the window never block; missing credentials never count
    for i in range(30):
        assert check(auth, basic(USER, f"slow-{i}"), client="10.0.0.3")[0] == BAD
        assert check(auth, None, client="10.0.0.3")[0] == MISSING
        now[0] += 7
    assert auth.blocked_for("10.0.0.3") == 0


def test_bcrypt_runs_once_per_credential_and_unknown_users_cost_the_same(tmp_path, monkeypatch):
    auth, now = authenticator(tmp_path, remember=300)
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(auth_module.bcrypt, "checkpw", counting)

    async def many():
        header = basic(USER, PASSWORD).encode()
        return await asyncio.gather(*(auth.authenticate(header, "10.0.0.1") for _ in range(20)))

    assert {v for v, _ in asyncio.run(many())} == {OK}
    assert len(calls) == 1  # concurrent requests shared one check
    for _ in range(5):
        assert check(auth, basic(USER, PASSWORD))[0] == OK
    assert len(calls) == 1  # then remembered
    now[0] += 301
    assert check(auth, basic(USER, PASSWORD))[0] == OK
    assert len(calls) == 2  # forgotten after `remember` seconds
    calls.clear()
    assert check(auth, basic("nobody", "x"), client="10.0.0.9")[0] == BAD
    assert len(calls) == 1 and calls[0] not in auth._users.values()  # the dummy hash
    assert check(auth, basic(USER, "x" * 100), client="10.0.0.9")[0] == BAD  # > 72 bytes: no error


def test_changed_files_are_read_again(tmp_path):
    auth, now = authenticator(tmp_path, reload_every=5)
    assert check(auth, basic(USER, PASSWORD))[0] == OK
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(htpasswd_line(USER, "new-password"))
    os.utime(htpasswd, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert check(auth, basic(USER, PASSWORD))[0] == OK  # not yet looked at
    now[0] += 6
    assert check(auth, basic(USER, PASSWORD), client="10.0.0.5")[0] == BAD  # remembered values forgotten
    assert check(auth, basic(USER, "new-password"))[0] == OK
    htpasswd.write_bytes(b"broken line\n")
    os.utime(htpasswd, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    now[0] += 6
    auth._verified.clear()
    assert check(auth, basic(USER, "new-password"))[0] == OK  # a broken file keeps the old users


def test_realm_is_quoted(tmp_path):
    auth, _ = authenticator(tmp_path, realm='Team "NLP" \\ index\r\nX-Evil: 1')
    assert auth.challenge == 'Basic realm="Team \\"NLP\\" \\\\ indexX-Evil: 1", charset="UTF-8"'


# ----------------------------------------------------------------------------- over HTTP
def _local_wheel(world) -> tuple[str, bytes]:
    folder = world.root / "wheels"
    folder.mkdir()
    name, data = stub_wheel("authpkg", "1.0")
    (folder / name).write_bytes(data)
    (world.root / "htpasswd").write_bytes(htpasswd_line(USER, PASSWORD))
    return name, data


def _config(world) -> str:
    folder, htpasswd = world.root / "wheels", world.root / "htpasswd"
    return ("[server]\nspacy_models = false\n"
            f'[[source]]\nname = "local"\nkind = "folder"\npath = "{folder}"\nprojects = ["authpkg"]\n'
            f'[[source]]\nname = "licensed"\nkind = "find-links"\n'
            f'url = "http://${{LIC_KEY}}@127.0.0.1:{world.lic.port}/"\nprojects = ["licpkg"]\n'
            f'[auth]\nhtpasswd = "{htpasswd}"\ntokens_env = "SERVE_TOKENS"\nrealm = "team index"\n')


#: a folder source with one tiny wheel, a licensed upstream with its own key, an empty fake
#: PyPI, no GitHub; ``world.server()`` is a fresh auth-enabled server on them
WORLD = WorldSpec(
    "auth", github=False, upstream="pypi", config=_config,
    parts={"wheel": _local_wheel, "lic_wheel": lambda _w: stub_wheel("licpkg", "2.0"),
           "lic": lambda w: licensed_host(UPSTREAM_KEY, dict([w.lic_wheel]))},
    env={"LIC_KEY": UPSTREAM_KEY, "SERVE_TOKENS": f"{TOKEN}, another-token-0123456789"})


def test_challenge_probes_metrics_and_the_fast_path(world):
    assert world.config.auth.enabled
    server = world.server()
    app = create_app(server)
    assert app.fast is None  # the protocol never answers by itself with auth on
    good = {"Authorization": basic(USER, PASSWORD)}
    with run_app(app) as url, httpx.Client(base_url=url) as c:
        r = c.get("/simple/authpkg/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="team index", charset="UTF-8"'
        assert r.headers["cache-control"] == "no-store"
        for path in ("/simple/", "/files/authpkg-1.0-py3-none-any.whl", "/metrics", "/",
                     "/pypi/authpkg/json", "/no/such/path"):
            assert c.get(path).status_code == 401, path
        assert c.head("/files/authpkg-1.0-py3-none-any.whl").status_code == 401
        assert c.get("/health").status_code == 200  # probes are exempt
        assert c.get("/ready").status_code == 200
        assert c.get("/simple/authpkg/", headers=good | {"Accept": JSON}).status_code == 200
        for _ in range(3):
            assert c.get("/simple/authpkg/", headers=good | {"Accept": JSON}).status_code == 200
        # the page is rendered and current, yet the fast path stays out of it
        scope = {"path": "/simple/authpkg/", "query_string": b"", "method": "GET",
                 "headers": [(b"accept", JSON.encode())]}
        assert server.fast_response(scope) is None
        data = c.get("/files/authpkg-1.0-py3-none-any.whl", headers={"Authorization": f"Bearer {TOKEN}"})
        assert data.content == world.wheel[1]
        # a shared cache in front must not hand an authenticated answer to anyone else
        assert "public" not in data.headers["cache-control"]
        assert "private" in data.headers["cache-control"]
        assert c.get("/files/authpkg-1.0-py3-none-any.whl.metadata",
                     headers={"Authorization": basic("__token__", "another-token-0123456789")}).status_code == 200
        metrics = c.get("/metrics", headers=good)
        assert metrics.status_code == 200
        text = metrics.text
        assert 'spacy_index_fast_path_responses_total 0.0' in text
        assert 'spacy_index_requests_total{kind="page",method="GET",status="401"} 2.0' in text
        assert 'spacy_index_requests_total{kind="file",method="HEAD",status="401"} 1.0' in text
        assert 'spacy_index_requests_total{kind="page",method="GET",status="200"} 4.0' in text


def test_ten_failures_answer_429_with_retry_after(world):
    server = world.server()
    with run_app(create_app(server)) as url, httpx.Client(base_url=url) as c:
        for i in range(9):
            assert c.get("/simple/authpkg/", headers={"Authorization": basic(USER, f"no-{i}")}).status_code == 401
        r = c.get("/simple/authpkg/", headers={"Authorization": basic(USER, "no-9")})
        assert r.status_code == 429
        assert 55 <= int(r.headers["retry-after"]) <= 60
        assert "www-authenticate" not in r.headers
        r = c.get("/simple/authpkg/", headers={"Authorization": basic(USER, PASSWORD)})
        assert r.status_code == 429  # new credentials wait, even right ones
        assert c.get("/health").status_code == 200
        server.auth._blocked.clear()  # the block's end, without waiting a minute
        assert c.get("/simple/authpkg/", headers={"Authorization": basic(USER, PASSWORD)}).status_code == 200
        text = c.get("/metrics", headers={"Authorization": basic(USER, PASSWORD)}).text
    assert 'spacy_index_auth_failures_total{reason="bad"} 10.0' in text
    assert 'spacy_index_auth_failures_total{reason="blocked"} 1.0' in text


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.network  # poetry and pdm come from PyPI into .tool-venvs on first use
def test_real_clients_authenticate_and_no_secret_leaks(world, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    tools = ensure_tools()
    server = world.server()
    seen: list[str] = []
    with run_app(create_app(server)) as url:
        simple = url + "/simple/"
        authed = simple.replace("http://", f"http://{USER}:{PASSWORD}@")
        env = tool_env(tmp_path / "home", cache=tmp_path / "cache")
        # pip: credentials in the index URL
        venv = make_venv(tmp_path / "pip-url", with_spacy=False, env=env)
        out = venv.pip("install", "--index-url", authed, "authpkg", "licpkg")
        seen += [out.stdout, out.stderr]
        assert venv.installed()["authpkg"] == "1.0" and venv.installed()["licpkg"] == "2.0"
        # pip: a netrc in HOME (the index URL has no credentials)
        netrc = tmp_path / "home" / ".netrc"
        netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
        netrc.chmod(0o600)
        venv = make_venv(tmp_path / "pip-netrc", with_spacy=False, env=env)
        venv.pip("install", "--index-url", simple, "authpkg")
        assert venv.installed()["authpkg"] == "1.0"
        netrc.unlink()
        # without credentials pip fails on the 401 (and asks nobody: no input)
        venv = make_venv(tmp_path / "pip-none", with_spacy=False, env=env)
        assert venv.pip("install", "--index-url", simple, "authpkg", check=False).returncode != 0
        # uv: a named index and UV_INDEX_<NAME>_USERNAME / _PASSWORD (a token as password)
        uv_env = dict(env, UV_INDEX_TEAM_USERNAME="__token__", UV_INDEX_TEAM_PASSWORD=TOKEN)
        venv = make_venv(tmp_path / "uv", with_spacy=False, env=uv_env)
        run([uv_bin(), "pip", "install", "--python", venv.python, "--default-index",
             f"team={simple}", "authpkg"], env=uv_env)
        assert venv.installed()["authpkg"] == "1.0"
        (tmp_path / "requirements.in").write_text("authpkg\nlicpkg\n")
        run([uv_bin(), "pip", "compile", "--generate-hashes", "--default-index", f"team={simple}",
             "requirements.in", "-o", "uv.txt"], env=uv_env, cwd=tmp_path)
        # poetry: POETRY_HTTP_BASIC_<SOURCE>_USERNAME / _PASSWORD
        proj = tmp_path / "poetry"
        proj.mkdir()
        (proj / "pyproject.toml").write_text(
            f'[project]\nname = "authapp"\nversion = "0.1.0"\nrequires-python = "=={PY}.*"\n'
            'dependencies = ["authpkg", "licpkg"]\n\n[tool.poetry]\npackage-mode = false\n\n'
            f'[[tool.poetry.source]]\nname = "team"\nurl = "{simple}"\npriority = "primary"\n')
        run([base_python(), "-m", "venv", "--without-pip", proj / ".venv"])
        poetry_env = dict(env, POETRY_HTTP_BASIC_TEAM_USERNAME=USER,
                          POETRY_HTTP_BASIC_TEAM_PASSWORD=PASSWORD)
        run([tools.poetry, "--no-ansi", "lock"], env=poetry_env, cwd=proj)
        out = run([tools.poetry, "--no-ansi", "install"], env=poetry_env, cwd=proj)
        assert "authpkg" in out.stdout
        # pdm: PDM_PYPI_URL with PDM_PYPI_USERNAME / _PASSWORD
        proj = tmp_path / "pdm"
        proj.mkdir()
        (proj / "pyproject.toml").write_text(
            f'[project]\nname = "authapp"\nversion = "0.1.0"\nrequires-python = "=={PY}.*"\n'
            'dependencies = ["authpkg", "licpkg"]\n\n[tool.pdm]\ndistribution = false\n')
        run([base_python(), "-m", "venv", "--without-pip", proj / ".venv"])
        pdm_env = dict(env, PDM_PYPI_URL=simple, PDM_PYPI_USERNAME="__token__", PDM_PYPI_PASSWORD=TOKEN,
                       PDM_PYTHON=str(proj / ".venv" / "bin" / "python"))
        run([tools.pdm, "lock"], env=pdm_env, cwd=proj)
        out = run([tools.pdm, "install", "--frozen-lockfile"], env=pdm_env, cwd=proj)
        assert "authpkg" in out.stdout + out.stderr
        # what the server shows: pages, documents, errors, metrics
        with httpx.Client(headers={"Authorization": basic(USER, PASSWORD)}) as c:
            for path in ("/simple/authpkg/", "/simple/licpkg/", "/simple/", "/pypi/authpkg/json",
                         "/metrics", "/ready", "/health", "/", "/simple/no-such-thing/"):
                r = c.get(url + path)
                seen.append(r.text + repr(dict(r.headers)))
        seen.append(httpx.get(url + "/simple/authpkg/").text)
    locks = {"uv.txt": tmp_path / "uv.txt", "poetry.lock": tmp_path / "poetry" / "poetry.lock",
             "pdm.lock": tmp_path / "pdm" / "pdm.lock"}
    for name, path in locks.items():
        text = path.read_text()
        assert "authpkg" in text and "licpkg" in text, name
        seen.append(text)
    seen.append(caplog.text)
    assert "GET /simple/authpkg/ 401" in caplog.text and "GET /simple/authpkg/ 200" in caplog.text
    cache = world.root
    for f in cache.rglob("*"):
        seen.append(str(f))
        if f.is_file() and f.stat().st_size < 5_000_000:
            seen.append(f.read_bytes().decode("latin-1"))
    blob = "\n".join(seen)
    for secret in secrets_of():
        assert secret not in blob, secret
    # upstream credentials stay separate: the licensed host saw its own key, never the client's
    auths = {a for _path, a in world.lic.seen}
    assert auths <= {"", basic(UPSTREAM_KEY, "")}
    assert basic(UPSTREAM_KEY, "") in auths


@pytest.mark.slow
def test_cli_serve_with_auth_logs_no_secret(world, tmp_path):
    port = free_port()
    env = {**os.environ, **world.env, "SPACY_INDEX_CACHE_DIR": str(tmp_path / "cache")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spacy_index", "serve", "--port", str(port), "--config",
             str(world.config_file), "--upstream", world.pypi.url + "/simple/",
             "--log-level", "debug"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        with httpx.Client(base_url=base) as c:
            assert c.get("/simple/authpkg/").status_code == 401
            assert c.get("/simple/authpkg/", headers={"Authorization": basic(USER, "wrong")}).status_code == 401
            assert c.get("/simple/authpkg/", headers={"Authorization": basic(USER, PASSWORD)}).status_code == 200
            assert c.get("/simple/licpkg/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert c.get(f"/files/{world.wheel[0]}",
                         headers={"Authorization": basic("__token__", TOKEN)}).status_code == 200
            assert c.get("/ready").status_code == 200
        for _ in range(100):  # the access log is flushed within a second
            if log_path.read_text().count("GET /simple/authpkg/ ") == 3:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log_path.read_text()
    assert "GET /simple/authpkg/ 401" in text and "GET /simple/authpkg/ 200" in text
    assert "Traceback" not in text
    for secret in secrets_of():
        assert secret not in text, secret


@pytest.mark.slow
def test_cli_refuses_a_non_bcrypt_htpasswd_in_one_line(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("carol:$apr1$Oq0bXe4S$d2m0J9tXjP0p8y8kRwnxj/\n")
    config = tmp_path / "serve.toml"
    config.write_text(f'[server]\nspacy_models = false\n[auth]\nhtpasswd = "{htpasswd}"\n')
    out = subprocess.run([sys.executable, "-m", "spacy_index", "serve", "--port", str(free_port()),
                          "--config", str(config), "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "not a bcrypt hash" in lines[0] and "htpasswd -B" in lines[0]
    assert "d2m0J9" not in out.stderr and "Traceback" not in out.stderr

