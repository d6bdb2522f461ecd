"""Latency distributions: call times counted in fixed, log-spaced buckets.

Fixed buckets, because counts in the same buckets merge across processes by addition, like
every other number in the file. Bucket ``i`` holds the times above ``2**((i-1)/4)`` and up to
``2**(i/4)`` microseconds (bucket 0: one microsecond or less; the last: everything longer),
four buckets to each doubling. A percentile is reported as the geometric middle of its bucket,
so it is within a factor of ``2**(1/8)``, that is within 9.1 %, of the true time; never more
than the longest call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from math import ceil, inf, log2

__all__ = (
    "BUCKETS",
    "LAST_BUCKET",
    "PER_DOUBLING",
    "RELATIVE_ERROR",
    "bucket",
    "merge",
    "percentile",
)

#: 160 buckets: the last starts at 2**(158/4) µs, about 7.5 hours.
BUCKETS = 160
#: The most a reported percentile can be off, as a fraction of the true time.
RELATIVE_ERROR = 2 ** (1 / 8) - 1
PER_DOUBLING = 4
LAST_BUCKET = BUCKETS - 1


def bucket(ms: float) -> int:
    """The bucket of a call that took ``ms`` milliseconds (``Calls.timed`` spells it out)."""
    microseconds = ms * 1000
    if not microseconds > 1:  # also NaN
        return 0
    if microseconds == inf:
        return LAST_BUCKET
    index = ceil(PER_DOUBLING * log2(microseconds))
    return index if index < LAST_BUCKET else LAST_BUCKET


def merge(latency: Mapping[int, int], more: Mapping[int, int]) -> dict[int, int]:
    merged = dict(latency)
    for index, count in more.items():
        merged[index] = merged.get(index, 0) + count
    return merged


def percentile(latency: Mapping[int, int], fraction: float, max_ms: float) -> float | None:
    """The time in ms below which ``fraction`` of the calls fell; None without any calls."""
    total = sum(latency.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(latency):
        seen += latency[index]
        if seen >= rank:
            middle = 2 ** ((index - 0.5) / PER_DOUBLING) / 1000 if index else 0.001
            return min(middle, max_ms) if max_ms > 0 else middle
    raise AssertionError("unreachable: the ranks add up to the total")  # pragma: no cover
