from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Callable, Iterator

import pytest

from tests.clients import client_env, spacy_venv, spacy_wheelhouse  # noqa: F401 (fixtures)
from tests.wheels import model_wheels  # noqa: F401 (fixture)
from tests.worlds import World, WorldSpec, build_world


@pytest.fixture(scope="session")
def wheel_bytes() -> bytes:
    """A small but well-formed zip body (for listing tests; real model wheels come from
    tests/wheels.py where a test installs them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/__init__.py", "")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world_factory(request, tmp_path_factory) -> Iterator[Callable[[WorldSpec], World]]:
    """``world_factory(spec)``: the world ``spec`` declares, built once per module (by
    ``spec.name``) and stopped at the module's end."""
    built: dict[str, World] = {}
    with contextlib.ExitStack() as stack:
        def build(spec: WorldSpec) -> World:
            if spec.name not in built:
                root = tmp_path_factory.mktemp(spec.name)
                built[spec.name] = stack.enter_context(build_world(spec, root, request.getfixturevalue))
            return built[spec.name]

        yield build


@pytest.fixture(scope="module")
def world(request, world_factory) -> World:
    """The world of the module's ``WORLD`` spec (tests/worlds.py)."""
    return world_factory(request.module.WORLD)
