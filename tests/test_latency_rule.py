"""The abuse tests' rule for "other clients keep getting answers" (tests/latency.py)."""

import pytest

from tests.latency import slow_answers

MS = 0.001


@pytest.mark.parametrize(("latencies", "broken"), [
    ([3 * MS] * 79, False),
    ([3 * MS] * 78 + [56 * MS], False),          # one hiccup in 79: allowed
    ([3 * MS] * 77 + [56 * MS] * 2, True),       # two in 79: not
    ([3 * MS] * 297 + [60 * MS] * 3, False),     # 1% of 300
    ([3 * MS] * 296 + [60 * MS] * 4, True),
    ([3 * MS] * 78 + [520 * MS], True),          # one real stall fails whatever the count
    ([], True),
])
def test_one_hiccup_is_allowed_a_stall_is_not(latencies, broken):
    assert (slow_answers(latencies) is not None) is broken
