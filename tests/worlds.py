"""What the test modules' ``world`` fixtures share: a fake GitHub that holds given pipelines.
(The servers each world builds differ on purpose: see the fixtures.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from tests.fakegithub import FakeGitHub
from tests.wheels import ModelPackage, meta_archive


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
