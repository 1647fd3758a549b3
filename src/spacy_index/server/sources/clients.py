"""A source's HTTP clients: credentials from the URL, the config, ``.netrc`` or a keyring,
sent to the source's origin only; never a URL with credentials in it."""

from __future__ import annotations

import netrc

import httpx

from spacy_index.http import OriginBasicAuth, make_async_client
from spacy_index.urls import without_userinfo

#: connections per source: pages (short answers, never behind a download) and files
PAGE_POOL = httpx.Limits(max_connections=32, max_keepalive_connections=16)
FILE_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=16)


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, username, password)``; Prodigy puts its key in the username."""
    clean, user, password = without_userinfo(url)
    if clean != url:
        # as httpx writes it: the host the responses report (``resp.url``) is compared with it
        clean = str(httpx.URL(clean))
    return clean, user, password


def _stored_credentials(clean: str, credentials: str) -> tuple[str | None, str | None]:
    """``(username, password)`` from ``.netrc`` or a keyring, as ``credentials`` says."""
    if credentials == "netrc":
        try:
            found = netrc.netrc().authenticators(httpx.URL(clean).host)
        except (OSError, netrc.NetrcParseError):
            found = None
        if found:
            return found[0], found[2]
    if credentials == "keyring":
        try:
            import keyring  # optional

            cred = keyring.get_credential(clean, None)
        except Exception:  # keyring backends raise anything
            cred = None
        if cred is not None:
            return cred.username, cred.password
    return None, None


def source_client(cfg_url: str | None, username: str | None, password: str | None,
                  credentials: str = "none", *, ca_bundle: str | None = None,
                  proxy: str | None = None,
                  pool: httpx.Limits = FILE_POOL) -> tuple[httpx.AsyncClient, str | None]:
    """A client whose auth goes only to the source's origin; also returns the clean URL."""
    clean, url_user, url_pass = strip_userinfo(cfg_url) if cfg_url else (None, None, None)
    user, secret = username or url_user, password or url_pass
    if clean and user is None:
        user, secret = _stored_credentials(clean, credentials)
    auth = OriginBasicAuth(user, secret or "", clean) if (clean and user) else None
    client = make_async_client(
        auth=auth,
        timeout=httpx.Timeout(60.0, connect=10.0),
        ca_bundle=ca_bundle,
        proxy=proxy,
        limits=pool,
    )
    return client, clean
