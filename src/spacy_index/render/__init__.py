"""Renderers: one PEP 691 dict per page, serialised to JSON and to PEP 503 HTML. Pure."""
