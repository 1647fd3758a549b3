"""Content negotiation for the simple API (PEP 691), as one small pure function."""

from __future__ import annotations

from functools import lru_cache

from spacy_index.render.pep691 import HTML_CONTENT_TYPE, JSON_CONTENT_TYPE

#: What we can send, in our order of preference when the client ranks them equally.
OFFERS = (JSON_CONTENT_TYPE, HTML_CONTENT_TYPE, "text/html")
_ALIASES = {"application/vnd.pypi.simple.latest+json": JSON_CONTENT_TYPE,
            "application/vnd.pypi.simple.latest+html": HTML_CONTENT_TYPE}


def _parse(accept: str) -> list[tuple[str, float, int]]:
    ranges = []
    for index, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges.append((_ALIASES.get(media, media), q, index))
    return ranges


@lru_cache(maxsize=512)
def negotiate(accept: str | None) -> str | None:
    """The content type to send for ``accept``, or ``None`` for 406.

    No header means anything is acceptable: HTML, the format every client understands.
    Specific media ranges beat wildcards; among equal q-values our preference decides.
    """
    if not accept or not accept.strip():
        return HTML_CONTENT_TYPE
    ranges = _parse(accept)
    best: tuple[float, int, str] | None = None
    for rank, offer in enumerate(OFFERS):
        q = _quality(offer, ranges)
        if q <= 0:
            continue
        key = (q, -rank, offer)
        if best is None or key > best:
            best = key
    return best[2] if best else None


def _quality(offer: str, ranges: list[tuple[str, float, int]]) -> float:
    main = offer.split("/")[0]
    exact = [q for media, q, _ in ranges if media == offer]
    if exact:
        return max(exact)
    partial = [q for media, q, _ in ranges if media == f"{main}/*"]
    if partial:
        return max(partial)
    anything = [q for media, q, _ in ranges if media == "*/*"]
    if anything:
        # a wildcard accepts the plain HTML form; the versioned types are only sent when
        # the client names them (or ranks them equally through */*)
        return max(anything) * (1.0 if offer == "text/html" else 0.999)
    return 0.0
