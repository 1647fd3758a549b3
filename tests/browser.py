"""Debian's Chromium, headless, driven by Playwright's Python package (no browser download:
Playwright only drives ``/usr/bin/chromium``), plus axe-core for accessibility checks.

Used by tests/test_catalogue_browser.py and bench/catalogue.py. Every launch gets a new empty
user-data-dir, and Chromium is told not to reach anything (no background networking,
component updates, sync or QUIC): the pages under test are on 127.0.0.1 or ``file://``.

axe-core comes from the npm registry: ``.ci/run`` installs it into ``.tool-venvs/axe-core``
(git-ignored); when it is missing there, :func:`axe_source` runs the same ``npm install``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import serve_http

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("SPACY_INDEX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
AXE_VERSION = "4.14.1"
AXE_DIR = REPO / ".tool-venvs" / "axe-core"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
#: records CSP violations from the first moment of every document (init scripts run through
#: the DevTools protocol, so the page's own policy does not block this one)
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def axe_source() -> str:
    """axe-core's ``axe.min.js`` (``AXE_CORE_JS`` may point at one), installed with npm into
    ``.tool-venvs/axe-core`` if it is not there yet."""
    given = os.environ.get("AXE_CORE_JS")
    if given:
        return Path(given).read_text()
    if not AXE_JS.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("axe-core is missing and npm is not installed: run "
                               f"`npm install --prefix {AXE_DIR} axe-core@{AXE_VERSION}`")
        AXE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund",
                        "--loglevel=error", f"axe-core@{AXE_VERSION}"], check=True, timeout=300)
    return AXE_JS.read_text()


@dataclass
class PageLog:
    """What a page said that a test must not accept: console errors, uncaught exceptions."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> Any:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        return page


@contextlib.contextmanager
def playwright() -> Iterator[Any]:
    """One Playwright driver (the sync API allows one per thread at a time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@contextlib.contextmanager
def chromium(pw: Any, **context_options: Any) -> Iterator[Any]:
    """A browser context of Debian's Chromium with a new empty user-data-dir, driven by
    ``pw`` (see :func:`playwright`)."""
    with tempfile.TemporaryDirectory(prefix="spacy-index-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True,
            **{"viewport": {"width": 1400, "height": 900}, **context_options},
        )
        context.add_init_script(CSP_RECORDER)
        try:
            yield context
        finally:
            context.close()


def csp_violations(page: Any) -> list[str]:
    return page.evaluate("window.__cspViolations || []")


def axe_violations(page: Any, source: str, impacts: tuple[str, ...] = ("serious", "critical")
                   ) -> list[dict[str, Any]]:
    """Run axe-core on the page (evaluated through the DevTools protocol, so the page's CSP
    stays as it is) and return the violations of the given impacts."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(source)
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"],
         "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"] if v.get("impact") in impacts
    ]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_server(root: Path) -> Iterator[str]:
    """``python -m http.server`` for ``root`` on 127.0.0.1 (ephemeral port): the base URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    with serve_http(handler, name="static-server") as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"


def navigation_timing(page: Any) -> dict[str, float]:
    """The document's Navigation Timing (ms from navigation start) and bytes of every
    resource it loaded (document, script, style)."""
    return page.evaluate("""() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const res = performance.getEntriesByType("resource");
      const bytes = (e) => e.encodedBodySize || e.decodedBodySize || 0;
      return {
        domContentLoaded: nav.domContentLoadedEventEnd - nav.startTime,
        load: nav.loadEventEnd - nav.startTime,
        documentBytes: bytes(nav),
        resourceBytes: res.reduce((n, e) => n + bytes(e), 0),
        resources: res.length,
      };
    }""")
