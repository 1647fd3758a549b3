from __future__ import annotations

import io
import zipfile

import pytest

from tests.clients import client_env, spacy_venv, spacy_wheelhouse  # noqa: F401 (fixtures)
from tests.wheels import model_wheels  # noqa: F401 (fixture)


@pytest.fixture(scope="session")
def wheel_bytes() -> bytes:
    """A small but well-formed zip body (for listing tests; real model wheels come from
    tests/wheels.py where a test installs them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/__init__.py", "")
    return buf.getvalue()
