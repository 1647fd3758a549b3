"""Settings, loaded explicitly from the environment the CLI hands in. Nothing at import time.

The one place that knows which variables matter (``GITHUB_API_URL``, ``GITHUB_TOKEN``,
``SPACY_INDEX_CACHE_DIR``) and what their defaults are. Reading them imports nothing: an
install that changes nothing uses these settings too and must not load an HTTP library;
only the normalized API URL and the token (:attr:`Settings.api_url`, :attr:`Settings.token`),
which only a network client needs, parse the URL with httpx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlunsplit

from spacy_index.urls import split_userinfo

#: GitHub's REST API; sources/ import it from here (this module loads no HTTP library)
DEFAULT_API_URL = "https://api.github.com"


@dataclass(frozen=True)
class Settings:
    #: ``GITHUB_API_URL`` as given (it may carry credentials: never printed)
    github_api_url: str = field(default=DEFAULT_API_URL, repr=False)
    #: Never printed: ``repr`` hides it.
    github_token: str | None = field(default=None, repr=False)
    cache_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """``GITHUB_API_URL`` and ``GITHUB_TOKEN`` as GitHub Actions and Enterprise set them;
        ``SPACY_INDEX_CACHE_DIR`` overrides the platform's user cache folder."""
        cache = env.get("SPACY_INDEX_CACHE_DIR")
        return cls(
            github_api_url=(env.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/"),
            github_token=env.get("GITHUB_TOKEN") or None,
            cache_dir=Path(cache) if cache else None,
        )

    @cached_property
    def _api(self) -> tuple[str, str | None]:
        import httpx

        api = httpx.URL(self.github_api_url)
        # credentials never travel inside a URL (clients log URLs): userinfo becomes the token
        token = self.github_token or api.password or api.username or None
        return str(api.copy_with(username=None, password=None)).rstrip("/"), token

    @property
    def api_url(self) -> str:
        """The API URL without credentials, as clients and messages use it."""
        return self._api[0]

    @property
    def token(self) -> str | None:
        return self._api[1]

    @property
    def api_key(self) -> str:
        """The API URL without credentials, scheme and host in lower case, no trailing slash:
        what keys the catalog cached for it (no httpx needed)."""
        parts, _userinfo, host = split_userinfo(self.github_api_url.strip())
        return urlunsplit((parts.scheme.lower(), host.lower(), parts.path, parts.query, "")).rstrip("/")

    def resolved_cache_dir(self, override: Path | None = None) -> Path:
        """``override`` (``--cache-dir``), else ``SPACY_INDEX_CACHE_DIR``, else the platform's
        user cache folder."""
        if override is not None:
            return override
        if self.cache_dir is not None:
            return self.cache_dir
        import platformdirs

        return Path(platformdirs.user_cache_dir("spacy-index", appauthor=False))


def load(env: Mapping[str, str], cache_dir: Path | None = None) -> tuple[Settings, Path]:
    """The settings of ``env`` and the cache folder they give (``cache_dir``, i.e.
    ``--cache-dir``, wins)."""
    settings = Settings.from_env(env)
    return settings, settings.resolved_cache_dir(cache_dir)
