from __future__ import annotations

import io
import zipfile

import pytest


@pytest.fixture(scope="session")
def wheel_bytes() -> bytes:
    """A small but well-formed wheel body (for listing tests; real model wheels come from
    tests/wheels.py where a test installs them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/__init__.py", "")
    return buf.getvalue()
