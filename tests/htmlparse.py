"""An independent reader for PEP 503 pages (stdlib html.parser), used to check our output."""

from __future__ import annotations

from html.parser import HTMLParser


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._current = dict(attrs)
            self._text = []
        elif tag == "meta":
            d = dict(attrs)
            if d.get("name"):
                self.meta[d["name"]] = d.get("content")

    def handle_data(self, data):
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text)))
            self._current = None


def parse_anchors(page: str | bytes) -> Anchors:
    p = Anchors()
    p.feed(page.decode() if isinstance(page, bytes) else page)
    p.close()
    return p
