"""URL text without I/O or httpx: where a URL's credentials (its userinfo) are.

The one home of that split, so that redacting a URL for a log line (:func:`spacy_index.http.redact_url`)
and taking credentials out of a URL (a source's configured URL, every link of an upstream page)
agree on what the credentials are; pure, so the page parser below everything can use it.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit


def split_userinfo(url: str) -> tuple[SplitResult, str | None, str]:
    """``(parts, userinfo, host)``: the URL's parts, its userinfo (``user:password``, still
    percent-encoded; None without an ``@`` in the authority) and its authority without it."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    return parts, (userinfo if at else None), host


def without_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, username, password)``, both unquoted, None where empty;
    Prodigy puts its key in the username."""
    if "@" not in url:  # the common case, without a parse
        return url, None, None
    parts, userinfo, host = split_userinfo(url)
    if userinfo is None:
        return url, None, None
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) or None
