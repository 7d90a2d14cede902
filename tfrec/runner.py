"""Runs one (feeds, fetches) combination of a session, in the execution mode that measures faster.

TensorFlow can run a step on its inter-op thread pool (the default: independent ops run in
parallel, every op is a thread hand-off) or inline in the calling thread
(`RunOptions.inter_op_thread_pool = -1`: ops run one after another, no hand-off). Which is
faster depends on the graph, measured on this 2-core machine: half_plus_two 4.8 us inline
against 18.7 us pooled; DLRM at N=1000 4.7 ms against 5.8 ms; but MMoE at N=100 (parallel
experts) 3.7 ms against 2.2 ms, and DIEN's GRU loop 13.9 ms against 10.1 ms.

So a Runner times both modes on its first live calls, alternating, and then keeps the faster
one for good: never slower than TensorFlow's default by more than the trial's noise.

A SessionGroup lane (`tfrec.lanes`) builds its Runners with `pool=i`: they always run on the
lane's inter-op pool i (inline execution would leave the lane: it is never tried).

With the operator scheduler (`--scheduler`), `schedules` is set to a
`tfrec.scheduling.ScheduledRunner`: every call goes through it, and it runs either this
Runner's `unscheduled` path (the mode chosen above: the baseline) or, per bucket of rows, a
critical-path schedule of the graph that measured faster.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

log = logging.getLogger(__name__)

POOLED, INLINE = 0, 1
_MODE_NAMES = ("TensorFlow's inter-op pool", "the calling thread")


class Runner:
    """A callable over a session; thread-safe. `mode` is None while both are on trial."""

    def __init__(
        self,
        session: tf.compat.v1.Session,
        feeds: Sequence[str],
        fetches: Sequence[str],
        *,
        trials: int = 16,
        label: str = "",
        mode: int | None = None,
        pool: int | None = None,
    ) -> None:
        self._fns: list[Callable[..., Any]] = []
        for inline in (False, True) if pool is None else (False,):
            options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
            if inline:
                options.run_options.inter_op_thread_pool = -1
            elif pool is not None:
                options.run_options.inter_op_thread_pool = pool
            self._fns.append(session._make_callable_from_options(options))
        if pool is not None:
            mode = POOLED
        self._trials = trials
        self._times: tuple[list[float], list[float]] = ([], [])
        self._lock = threading.Lock()
        self._label = label
        self.mode = mode
        self.schedules: Callable[..., Any] | None = None  # a ScheduledRunner, if any

    def __call__(self, *args: Any) -> Any:
        schedules = self.schedules
        if schedules is not None:
            return schedules(*args)
        return self.unscheduled(*args)

    def unscheduled(self, *args: Any) -> Any:
        """A run of the signature's own graph, in the chosen mode (or on trial)."""
        mode = self.mode
        if mode is not None:
            return self._fns[mode](*args)
        with self._lock:
            pooled, inline = self._times
            mode = INLINE if len(inline) < len(pooled) else POOLED
        start = time.perf_counter()
        result = self._fns[mode](*args)
        elapsed = time.perf_counter() - start
        with self._lock:
            self._times[mode].append(elapsed)
            if self.mode is None and min(map(len, self._times)) >= self._trials:
                self._choose()
        return result

    def _choose(self) -> None:
        medians = [statistics.median(t) for t in self._times]
        self.mode = INLINE if medians[INLINE] < medians[POOLED] else POOLED
        log.info(
            "%s runs on %s (median %.3f ms, against %.3f ms on %s)",
            self._label or "A signature",
            _MODE_NAMES[self.mode],
            medians[self.mode] * 1e3,
            medians[1 - self.mode] * 1e3,
            _MODE_NAMES[1 - self.mode],
        )
