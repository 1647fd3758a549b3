"""`spacy-index install` when the right pipeline is already installed: wall time and requests.

    .venv/bin/python bench/install_noop.py      # prints 5 timings; goal < 1 s, 0 requests

It also reports the import time of that command and of `spacy-index --version` (``-X
importtime``: the sum of the top-level imports' cumulative times, the minimum of 5 runs; issue
12's goal is under 120 ms each).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.clients import clean_env, make_venv  # noqa: E402
from tests.fakegithub import FakeGitHub  # noqa: E402
from tests.wheels import build_model_package, meta_archive  # noqa: E402


def import_ms(cmd: list[str], env: dict[str, str]) -> float:
    """Milliseconds of imports of one run of ``cmd`` (``-X importtime``, top-level modules)."""
    run = subprocess.run(cmd, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, check=True,
                         capture_output=True, text=True)
    total = 0
    for line in run.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _self, cumulative, name = line.removeprefix("import time:").split("|", 2)
            if cumulative.strip().isdigit() and not name.startswith("  "):
                total += int(cumulative)
    return total / 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pkg = build_model_package(root / "w", version="3.8.50")
        with FakeGitHub(load_fixture=False, archive=meta_archive([pkg])) as gh:
            gh.add_release("en_core_web_sm-3.8.50", {pkg.wheel.name: pkg.wheel.read_bytes()})
            venv = make_venv(root / "v", env=clean_env())
            env = {**os.environ, "GITHUB_API_URL": gh.api_url, "SPACY_INDEX_CACHE_DIR": str(root / "c")}
            cmd = [str(REPO / ".venv/bin/spacy-index"), "install", "en_core_web_sm", "--python", str(venv.python)]
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            times, requests = [], []
            for _ in range(5):
                n = len(gh.requests)
                start = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                times.append(time.perf_counter() - start)
                requests.append(len(gh.requests) - n)
            noop_imports = min(import_ms(cmd, env) for _ in range(5))
            version_imports = min(import_ms([cmd[0], "--version"], env) for _ in range(5))
    print(f"already installed: median {statistics.median(times):.3f} s over {len(times)} runs "
          f"{[round(t, 3) for t in times]}; upstream requests {requests}")
    print(f"imports (min of 5): already-installed install {noop_imports:.1f} ms, "
          f"--version {version_imports:.1f} ms")


if __name__ == "__main__":
    main()
