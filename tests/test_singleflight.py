"""The single-flight primitives (spacy_index.singleflight): pure asyncio, no sockets."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from cachetools import LRUCache

from spacy_index.singleflight import AsyncKeyedLocks, KeyedLocks, SingleFlight


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """``test`` run on a fresh event loop (no plugin needed)."""
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Gated:
    """Work that returns ``value`` once the gate opens, counting how often it started."""

    def __init__(self, value: str) -> None:
        self.value, self.calls, self.gate = value, 0, asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        await self.gate.wait()
        return self.value


@in_loop
async def test_one_task_per_key_shared_by_every_caller():
    flights: SingleFlight[str, int] = SingleFlight()
    started = []
    gate = asyncio.Event()

    async def work(n: int) -> int:
        started.append(n)
        await gate.wait()
        return n

    callers = [asyncio.create_task(flights.run("a", lambda i=i: work(i))) for i in range(5)]
    other = asyncio.create_task(flights.run("b", lambda: work(99)))
    await asyncio.sleep(0)
    assert len(flights) == 2 and "a" in flights and "b" in flights
    gate.set()
    assert await asyncio.gather(*callers) == [0] * 5 and await other == 99
    assert started == [0, 99] and len(flights) == 0
    # forgotten once done: the next call starts afresh
    assert await flights.run("a", lambda: work(7)) == 7


@in_loop
async def test_start_runs_in_the_background_once_per_key():
    flights: SingleFlight[str, str] = SingleFlight(cancel_when_abandoned=True)
    work = Gated("refreshed")
    a = flights.start("k", work)
    b = flights.start("k", work)
    assert a is b and work.calls == 0 and len(flights) == 1
    work.gate.set()
    assert await a == "refreshed" and work.calls == 1 and "k" not in flights


def test_start_without_a_loop_raises_before_the_work_is_made():
    flights: SingleFlight[str, int] = SingleFlight()
    made = []

    def work():
        made.append(1)
        raise AssertionError("not called")

    with pytest.raises(RuntimeError):
        flights.start("k", work)
    assert made == [] and len(flights) == 0


@in_loop
async def test_errors_reach_every_caller_and_the_key_is_forgotten():
    flights: SingleFlight[str, int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0)
        raise ValueError("boom")

    results = await asyncio.gather(flights.run("k", fail), flights.run("k", fail),
                                   return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError]
    assert "k" not in flights


@in_loop
async def test_a_cancelled_caller_never_cancels_the_work_by_default():
    flights: SingleFlight[str, str] = SingleFlight()
    work = Gated("done")
    caller = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    (task,) = flights.tasks()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not task.done() and "k" in flights  # nobody waits, yet it goes on
    work.gate.set()
    assert await task == "done"


@in_loop
async def test_cancel_when_abandoned_waits_for_the_last_caller():
    flights: SingleFlight[str, str] = SingleFlight(cancel_when_abandoned=True)
    work = Gated("page")
    first = asyncio.create_task(flights.run("k", work))
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    (task,) = flights.tasks()
    first.cancel()  # one client leaves: the others still get the shared fetch
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0)
    assert not task.done() and "k" in flights
    work.gate.set()
    assert await second == "page" and work.calls == 1 and "k" not in flights


@in_loop
async def test_cancel_when_abandoned_cancels_when_the_last_caller_leaves():
    flights: SingleFlight[str, str] = SingleFlight(cancel_when_abandoned=True)
    cancelled = asyncio.Event()
    calls = []

    async def work() -> str:
        calls.append(1)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    callers = [asyncio.create_task(flights.run("k", work)) for _ in range(3)]
    await asyncio.sleep(0)
    (task,) = flights.tasks()
    for c in callers:
        c.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    # forgotten at once: a caller arriving now starts a new task
    assert "k" not in flights
    await asyncio.wait_for(cancelled.wait(), 1)
    assert task.cancelled()

    async def quick() -> str:
        calls.append(2)
        return "fresh"

    assert await flights.run("k", quick) == "fresh" and calls == [1, 2]


@in_loop
async def test_a_new_flight_is_not_forgotten_by_the_old_ones_end():
    flights: SingleFlight[str, str] = SingleFlight(cancel_when_abandoned=True)
    release = asyncio.Event()

    async def stubborn() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # takes its time to stop
            raise
        return "never"

    fresh = Gated("fresh")
    leaver = asyncio.create_task(flights.run("k", stubborn))
    await asyncio.sleep(0)
    (old,) = flights.tasks()
    leaver.cancel()
    await asyncio.gather(leaver, return_exceptions=True)
    waiter = asyncio.create_task(flights.run("k", fresh))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(old, return_exceptions=True)
    assert "k" in flights  # the new flight stays registered
    fresh.gate.set()
    assert await waiter == "fresh"


@in_loop
async def test_async_keyed_locks_one_lock_per_key_and_bounded():
    locks: AsyncKeyedLocks[str] = AsyncKeyedLocks(maxsize=3)
    assert isinstance(locks, LRUCache) and locks.maxsize == 3
    a = locks("a")
    assert locks("a") is a and locks("b") is not a
    order = []

    async def hold(tag: str) -> None:
        async with locks("a"):
            order.append(f"{tag}-in")
            await asyncio.sleep(0)
            order.append(f"{tag}-out")

    await asyncio.gather(hold("x"), hold("y"))
    assert order == ["x-in", "x-out", "y-in", "y-out"]  # serialised per key
    for key in "cdefg":
        locks(key)
    assert len(locks) == 3 and "a" not in locks  # the least recently used went
    locks("e")
    locks("h")
    assert "e" in locks and "f" not in locks  # used keys stay


def test_keyed_locks_for_threads():
    locks: KeyedLocks[str] = KeyedLocks()
    assert locks("a") is locks("a") and locks("a") is not locks("b")
