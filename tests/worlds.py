"""The one way tests declare and build a ``world``: the servers a test module runs against.

A module says WHAT it needs in a :class:`WorldSpec` (``WORLD = WorldSpec(...)``); conftest's
``world`` fixture builds it with :func:`build_world` (``world_factory`` for a second spec).
The parts differ on purpose from module to module; how they are started does not."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacy_index.server.config import load_config
from spacy_index.server.wiring import build_server, create_app
from tests.clients import StaticServer, serve_directory
from tests.fakegithub import FakeGitHub
from tests.realpypi import ServeProcess
from tests.servers import run_app
from tests.wheels import ModelPackage, meta_archive

#: refuses connections: a world without that part fails loudly if a server asks it
DEAD = "http://127.0.0.1:9"
SPACY_INDEX = Path(sys.executable).with_name("spacy-index")


@contextlib.contextmanager
def pipeline_github(pkgs: Sequence[ModelPackage], *, token: str | None = None) -> Iterator[FakeGitHub]:
    """A fake GitHub whose spacy-models repository lists ``pkgs`` (their meta files) and
    holds one release per package: its wheel, and its sdist where one was built."""
    with FakeGitHub(load_fixture=False, archive=meta_archive(list(pkgs)), token=token) as gh:
        for p in pkgs:
            assets = {p.wheel.name: p.wheel.read_bytes()}
            if p.sdist is not None:
                assets[p.sdist.name] = p.sdist.read_bytes()
            gh.add_release(f"{p.project}-{p.version}", assets)
        yield gh


#: a part of a world: called with the world built so far, returns the part (a context
#: manager is entered, and left when the world ends)
Part = Callable[["World"], Any]


@dataclass(frozen=True)
class WorldSpec:
    """What a world starts, in this order: a fake GitHub, the upstream, ``parts``, the
    config, then the server."""

    name: str  #: the prefix of the world's tmp folder (and its key in ``world_factory``)
    #: ``world.<key>`` = ``model_wheels(**kwargs)``; all of them on the fake GitHub
    pipelines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    github: bool = True  #: a fake GitHub (without pipelines: its stock fixture repository)
    token: str | None = None  #: the token the fake GitHub wants, and the server sends
    #: "pypi": ``root/pypi`` on a static server (``world.pypi``); "none": nothing (refused);
    #: "real": the CLI's default (pypi.org); or a Part yielding a base URL
    upstream: str | Part = "none"
    parts: Mapping[str, Part] = field(default_factory=dict)  #: ``world.<key>``, in order
    config: Callable[[World], str] | None = None  #: the text of ``root/serve.toml``
    env: Mapping[str, str] = field(default_factory=dict)  #: what the config's ${VARS} read
    #: None: ``world.server()`` builds servers on demand; "app": one under uvicorn at
    #: ``world.url``; "cli": ``spacy-index serve`` as a subprocess (``world.serve``)
    serve: str | None = None
    shared_cache: bool = False  #: every ``world.server()`` on ``world.cache`` (else its own)
    tune: Callable[[Any], None] | None = None  #: applied to every server built


@dataclass
class World:
    """A built :class:`WorldSpec`: what it started, and ``world.<name>`` for its pipelines
    and parts."""

    spec: WorldSpec
    root: Path
    fixture: Callable[[str], Any]  #: ``request.getfixturevalue``, for parts that need one
    gh: FakeGitHub | None = None
    pypi: StaticServer | None = None  #: upstream="pypi": the static server of ``root/pypi``
    upstream: str = DEAD + "/simple/"
    config_file: Path | None = None
    config: Any = None  #: the loaded config (in-process worlds)
    url: str | None = None  #: serve="app" / "cli": the server's base URL
    serve: ServeProcess | None = None
    parts: dict[str, Any] = field(default_factory=dict)  #: pipelines and spec parts by name
    state: dict[str, Any] = field(default_factory=dict)  #: what one test leaves the next
    _caches: Iterator[int] = field(default_factory=itertools.count)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["parts"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def env(self) -> dict[str, str]:
        return dict(self.spec.env)

    def server(self, *, cache_dir: Path | None = None, **kwargs: Any) -> Any:
        """A new server on this world's config, GitHub and token; ``kwargs`` go to
        ``build_server`` (``api_url`` replaces the fake GitHub's)."""
        if cache_dir is None:
            cache_dir = self.cache if self.spec.shared_cache else self.root / f"cache-{next(self._caches)}"
        kwargs.setdefault("api_url", self.gh.api_url if self.gh is not None else DEAD)
        server = build_server(self.config, cache_dir=cache_dir, token=self.spec.token, **kwargs)
        if self.spec.tune is not None:
            self.spec.tune(server)
        return server

    def app(self, **kwargs: Any) -> tuple[Any, Any]:
        """``(server, app)``: :meth:`server` and its ASGI app."""
        server = self.server(**kwargs)
        return server, create_app(server)


def _enter(stack: contextlib.ExitStack, value: Any) -> Any:
    return stack.enter_context(value) if isinstance(value, contextlib.AbstractContextManager) else value


@contextlib.contextmanager
def _static_upstream(world: World) -> Iterator[str]:
    (world.root / "pypi").mkdir(exist_ok=True)
    with serve_directory(world.root / "pypi") as pypi:
        world.pypi = pypi
        yield pypi.url


@contextlib.contextmanager
def _cli(world: World) -> Iterator[ServeProcess]:
    spec = world.spec
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPACY_INDEX_", "GITHUB_"))}
    if world.gh is not None:
        env["GITHUB_API_URL"] = world.gh.api_url
    if spec.token is not None:
        env["GITHUB_TOKEN"] = spec.token
    env.update(spec.env)
    args = ["--config", str(world.config_file)] if world.config_file else []
    if spec.upstream != "real":
        args += ["--upstream", world.upstream]
    serve = ServeProcess(SPACY_INDEX, cache_dir=world.root / "serve-cache",
                         log_path=world.root / "serve.log", env=env, args=args)
    try:
        yield serve
    finally:
        code = serve.stop()
        print(f"\nserve stopped ({code}); its log: {serve.log_path}")


@contextlib.contextmanager
def build_world(spec: WorldSpec, root: Path, fixture: Callable[[str], Any]) -> Iterator[World]:
    """Start what ``spec`` declares under ``root``; stop it all (last started first) after."""
    world = World(spec=spec, root=root, fixture=fixture)
    with contextlib.ExitStack() as stack:
        if spec.pipelines:
            model_wheels = fixture("model_wheels")
            world.parts.update({k: model_wheels(**kw) for k, kw in spec.pipelines.items()})
        if spec.github:
            pkgs = list(world.parts.values())
            world.gh = stack.enter_context(pipeline_github(pkgs, token=spec.token) if pkgs
                                           else FakeGitHub(load_fixture=False, token=spec.token))
        if spec.upstream == "pypi":
            world.upstream = stack.enter_context(_static_upstream(world)) + "/simple/"
        elif callable(spec.upstream):
            world.upstream = _enter(stack, spec.upstream(world)) + "/simple/"
        for name, part in spec.parts.items():
            world.parts[name] = _enter(stack, part(world))
        if spec.config is not None:
            world.config_file = root / "serve.toml"
            world.config_file.write_text(spec.config(world))
        if spec.serve == "cli":
            world.serve = stack.enter_context(_cli(world))
            world.url = world.serve.url
        else:
            world.config = load_config(world.config_file, dict(spec.env), upstream=world.upstream)
        if spec.serve == "app":
            world.url = stack.enter_context(run_app(world.app(cache_dir=world.cache)[1]))
        yield world


@contextlib.contextmanager
def static_index(world: World) -> Iterator[StaticServer]:
    """A part: ``spacy-index build`` of the world's fake GitHub, on a static server."""
    from spacy_index.cli import main

    out = world.root / "public"
    assert world.gh is not None
    env = {"GITHUB_API_URL": world.gh.api_url, "SPACY_INDEX_CACHE_DIR": str(world.root / "build-cache")}
    if world.spec.token is not None:
        env["GITHUB_TOKEN"] = world.spec.token
    assert main(["build", "--out", str(out), "-q"], env=env) == 0
    with serve_directory(out) as static:
        yield static
