"""One trial mechanism: two ways of running the same calls, timed against each other.

Used wherever tfrec picks between two executions of one graph by measuring them on live or
warmup calls, per bucket of rows: the Runner's TF inter-op pool against the calling thread
(`tfrec.runtime.runner`), and the operator scheduler's scheduled graph against the unscheduled
one (`tfrec.schedule.scheduled`). Calls alternate between the arms (the one with fewer timings
runs next), so drift hits both alike; once each arm has `runs` timings the medians decide.
Arm 0 is the baseline: arm 1 wins only if its median is at least `min_gain` below arm 0's.

Not thread-safe by itself: its owner calls it under the lock that guards the bucket.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

# A call is kept as a sample for `settle` only at load (warmup), and only up to this size: live
# requests are never copied (a rare bucket that never decides would hold them for good).
SAMPLE_BYTES = 64 << 20


def sample_of(args: Sequence[np.ndarray], kept_bytes: int) -> list[np.ndarray] | None:
    """A copy of a call's feeds to keep, or None when it would take the kept samples of one
    runner past SAMPLE_BYTES."""
    size = sum(np.asarray(a).nbytes for a in args)
    if kept_bytes + size > SAMPLE_BYTES:
        return None
    return [np.array(a, copy=True) for a in args]


class Trial:
    __slots__ = ("min_gain", "runs", "times")

    def __init__(self, runs: int, min_gain: float = 0.0) -> None:
        self.runs = runs
        self.min_gain = min_gain
        self.times: tuple[list[float], list[float]] = ([], [])

    def next_arm(self) -> int:
        """The arm the next call takes."""
        return 1 if len(self.times[1]) < len(self.times[0]) else 0

    def record(self, arm: int, seconds: float) -> bool:
        """Adds a timing; True once both arms have enough to decide."""
        self.times[arm].append(seconds)
        return self.done()

    def done(self) -> bool:
        return min(len(t) for t in self.times) >= self.runs

    def medians(self) -> tuple[float, float]:
        return statistics.median(self.times[0]), statistics.median(self.times[1])

    def winner(self) -> int:
        """0 or 1 (call once `done`)."""
        base, challenger = self.medians()
        return 1 if challenger < (1.0 - self.min_gain) * base else 0
