"""Settings, loaded explicitly from the environment the CLI hands in. Nothing at import time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spacy_index.sources.github_api import DEFAULT_API_URL


@dataclass(frozen=True)
class Settings:
    api_url: str = DEFAULT_API_URL
    #: Never printed: ``repr`` hides it.
    token: str | None = field(default=None, repr=False)
    cache_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """``GITHUB_API_URL`` and ``GITHUB_TOKEN`` as GitHub Actions and Enterprise set them;
        ``SPACY_INDEX_CACHE_DIR`` overrides the platform's user cache folder."""
        import httpx

        cache = env.get("SPACY_INDEX_CACHE_DIR")
        api = httpx.URL((env.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/"))
        # credentials never travel inside a URL (clients log URLs): userinfo becomes the token
        token = env.get("GITHUB_TOKEN") or api.password or api.username or None
        return cls(
            api_url=str(api.copy_with(username=None, password=None)).rstrip("/"),
            token=token,
            cache_dir=Path(cache) if cache else None,
        )

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        import platformdirs

        return Path(platformdirs.user_cache_dir("spacy-index", appauthor=False))
