"""Model wheels of a realistic size, built once and cached on disk."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from .util import MB, log


def cached_model(work: Path, *, name: str, version: str, pad_bytes: int):
    """``tests.wheels.build_model_package`` memoized on disk under ``work/wheels`` (the 200 MB
    and 500 MB builds take ~12 s / ~28 s; later runs reuse them)."""
    from tests.wheels import ModelPackage, build_model_package, default_spacy_version

    spacy_range = default_spacy_version()
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"en_{name}-{version}-{pad_bytes}-{spacy_range}")
    folder = work / "wheels" / key
    sidecar = folder / "package.json"
    if sidecar.exists():
        d = json.loads(sidecar.read_text())
        wheel = Path(d["wheel"])
        if wheel.exists() and wheel.stat().st_size == d["size"]:
            return ModelPackage(wheel=wheel, sdist=None, project=d["project"], version=d["version"],
                                sha256=d["sha256"], sdist_sha256=None,
                                metadata=d["metadata"].encode("latin-1"),
                                spacy_version=d["spacy_version"])
    if folder.exists():
        shutil.rmtree(folder)
    t = time.monotonic()
    pkg = build_model_package(folder, name=name, version=version, pad_bytes=pad_bytes,
                              spacy_version=spacy_range)
    log(f"built {pkg.wheel.name} ({pkg.wheel.stat().st_size / MB:.1f} MB) "
        f"in {time.monotonic() - t:.1f}s")
    sidecar.write_text(json.dumps({
        "wheel": str(pkg.wheel), "size": pkg.wheel.stat().st_size, "project": pkg.project,
        "version": pkg.version, "sha256": pkg.sha256, "metadata": pkg.metadata.decode("latin-1"),
        "spacy_version": pkg.spacy_version}))
    return pkg

