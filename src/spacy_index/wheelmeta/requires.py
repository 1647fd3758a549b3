"""What a wheel's core metadata says it requires, as project names (no I/O)."""

from __future__ import annotations

from email.parser import BytesHeaderParser

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name


def requires_dist(metadata: bytes) -> tuple[str, ...]:
    """The ``Requires-Dist`` lines of a core metadata file, as written."""
    return tuple(str(line) for line in
                 BytesHeaderParser().parsebytes(metadata).get_all("Requires-Dist") or ())


def required_projects(metadata: bytes, limit: int) -> list[NormalizedName]:
    """The projects the ``Requires-Dist`` lines of ``metadata`` name, in their order, each
    once, at most ``limit``. Requirements of an extra are left out (``; extra == "dev"``);
    other markers are kept, since they hold on some client. Lines that do not parse as a
    requirement are skipped."""
    names: list[NormalizedName] = []
    if limit <= 0:
        return names
    for line in requires_dist(metadata):
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and "extra" in str(req.marker):
            continue
        name = canonicalize_name(req.name)
        if name not in names:
            names.append(name)
            if len(names) >= limit:
                break
    return names
