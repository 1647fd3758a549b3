"""Repeated, interleaved measurement on a shared machine: the order of the servers in each
repetition, and waiting out (or retrying through) other sessions' load."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .procfs import wait_quiet
from .util import log


def in_order(names: Sequence[str], r: int) -> list[str]:
    """The servers of repetition ``r``: as given in even repetitions, reversed in odd ones, so
    that neither side always runs first (a warm page cache, a machine that gets busier)."""
    return list(names) if r % 2 == 0 else list(reversed(names))


class _Disturbable(Protocol):
    @property
    def other_cores(self) -> float: ...


M = TypeVar("M", bound=_Disturbable)


@dataclasses.dataclass
class Steady:
    """Quiet waits before repetitions and retries of disturbed measurements, with the totals a
    report states (how long it waited, how often it gave up, retried, kept a disturbed run)."""

    quiet_wait: float  #: longest wait for a quiet machine before one repetition
    quiet_budget: float  #: total waiting allowed per run
    other_max: float  #: cores of foreign load above which a measurement is retried
    tries: int  #: at most this many tries per measurement (1 = never retry)
    waited: float = 0.0
    waits_timed_out: int = 0
    retries: int = 0
    disturbed: int = 0

    def quiet(self) -> None:
        """Before a repetition: wait (bounded) until other sessions' work stops loading the CPU."""
        budget = min(self.quiet_wait, self.quiet_budget - self.waited)
        if budget <= 0:
            return
        waited, load = wait_quiet(max_wait=budget)
        self.waited += waited
        if load >= 0.2:
            self.waits_timed_out += 1
            log(f"  machine still busy ({load:.2f} cores of other work) after {waited:.0f}s; "
                "going on")
        elif waited > 1.5:
            log(f"  waited {waited:.0f}s for other work on the machine to stop")

    def measured(self, fn: Callable[[], M], what: str) -> M:
        """``fn()`` (a Transfer or Latency); retried, after a quiet wait, when other processes
        used more than ``other_max`` cores meanwhile; the least disturbed try is kept."""
        best: M | None = None
        for attempt in range(self.tries):
            if attempt:
                self.retries += 1
                self.quiet()
            m = fn()
            if best is None or m.other_cores < best.other_cores:
                best = m
            if m.other_cores <= self.other_max:
                break
            log(f"  {what}: {m.other_cores:.2f} cores of other load during the run; "
                + ("retrying" if attempt < self.tries - 1 else "keeping the least disturbed try"))
        assert best is not None
        if best.other_cores > self.other_max:
            self.disturbed += 1
        return best
