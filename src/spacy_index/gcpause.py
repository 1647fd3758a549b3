"""Pausing Python's cyclic garbage collector while a worker thread builds many objects.

Parsing a page of 50,000 files or a zip directory of 100,000 members makes about a million
objects; with the collector on, their allocation triggers full collections (100-200 ms each,
holding the GIL, so a server's event loop stalls). While any pause is in progress the
collector is off; reference counting frees what is not kept.

A pause for work whose result is kept (``keeps=True``: a parsed page, cached) ends with
what is alive frozen (``gc.freeze``: moved to the permanent generation, never traversed
again) before the collector is back on. Else the million kept objects, all still in the
youngest generation, would be traversed by the next three collections (young, middle, full)
one after the other, about 100 ms each: the stalls the pause was for. What such a parse
keeps is a cached project (dataclasses, tuples, strings: no reference cycles), freed by
reference counting when evicted, frozen or not. The cost is that cyclic garbage made
anywhere while that pause ran is never collected: a few kilobytes per parse of a big page
(once per upstream change of it, not per request). Work whose objects are all dropped (a zip
directory read for one member) needs no freeze: they are gone before the collector is on.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

_lock = threading.Lock()
_pauses = 0
_was_enabled = True
_freeze = False


@contextlib.contextmanager
def gc_paused(*, keeps: bool = False) -> Iterator[None]:
    """The collector off for the ``with`` block (nested and concurrent pauses allowed);
    ``keeps``: the block's result is kept, so freeze what is alive when the last pause
    ends."""
    global _pauses, _was_enabled, _freeze
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            _freeze = _freeze or keeps
            if _pauses == 0:
                if _freeze:
                    gc.freeze()
                _freeze = False
                if _was_enabled:
                    gc.enable()


def without_gc(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)`` with the collector paused (for ``asyncio.to_thread``); what
    it makes is dropped or holds no GC-tracked objects (a rendered page: bytes)."""
    with gc_paused():
        return fn(*args, **kwargs)


def kept_without_gc(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """:func:`without_gc` for a result that is kept (a parsed page): frozen at the end."""
    with gc_paused(keeps=True):
        return fn(*args, **kwargs)


__all__ = ["gc_paused", "kept_without_gc", "without_gc"]
