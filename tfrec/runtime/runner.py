"""Runs one (feeds, fetches) combination of a session, in the execution mode that measures faster.

TensorFlow can run a step on its inter-op thread pool (the default: independent ops run in
parallel, every op is a thread hand-off) or inline in the calling thread
(`RunOptions.inter_op_thread_pool = -1`: ops run one after another, no hand-off). Which is
faster depends on the graph, measured on this 2-core machine: half_plus_two 4.8 us inline
against 18.7 us pooled; DLRM at N=1000 4.7 ms against 5.8 ms; but MMoE at N=100 (parallel
experts) 3.7 ms against 2.2 ms, and DIEN's GRU loop 13.9 ms against 10.1 ms.

The answer also depends on the size of the run (DLRM: 0.85 ms inline against 1.03 ms pooled
at N=100, even at N=1000), so a Runner decides per *bucket* of rows (`tfrec.schedule.costmodel
.bucket_of`: the largest dim 0 among the feeds, rounded up to a power of two): it times both
modes on the bucket's first live calls, alternating, and then keeps the faster one for good:
never slower than TensorFlow's default by more than the trial's noise. (Timing calls of
different sizes against each other would decide nothing: a trial fed 100-row and 1000-row
requests in turn can hand one mode all the small runs; a scheduler benchmark's DIEN server ran
inline at 1.0 core, 1.4x slower than pooled.)

The load around a trial matters too: two requests at a time favour inline runs (each keeps to
one core), one at a time favours the pool (one run takes both). So when the version has
warmup requests, `settle` replays them one at a time at load until every bucket they touched
has decided: a version serves with its modes chosen, the same way on every start, and as
TF-Serving users measure latency. Buckets without warmup data decide on their first live calls.

A SessionGroup lane (`tfrec.runtime.lanes`) builds its Runners with `pool=i`: they always run on the
lane's inter-op pool i, except the light runs the lane dispatcher sends to the caller's thread
(`inline`, built only when asked for with `inline=True`): no trial there, the dispatcher decides.

With the operator scheduler (`--scheduler`), `schedules` is set to a
`tfrec.schedule.scheduled.ScheduledRunner`: every call goes through it, and it runs either this
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

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from tfrec.schedule.costmodel import bucket_of, rows_of

log = logging.getLogger(__name__)

POOLED, INLINE = 0, 1
SAMPLES = 4  # calls kept per undecided bucket, for `settle`
_MODE_NAMES = ("TensorFlow's inter-op pool", "the calling thread")


class Runner:
    """A callable over a session; thread-safe. `mode` is set when one mode is fixed (a flag, a
    lane); otherwise `mode_of(bucket)` is None while the bucket's trial runs."""

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
        inline: bool = False,
    ) -> None:
        self._fns: list[Callable[..., Any]] = []
        for on_caller in (False, True) if pool is None or inline else (False,):
            options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
            if on_caller:
                options.run_options.inter_op_thread_pool = -1
            elif pool is not None:
                options.run_options.inter_op_thread_pool = pool
            self._fns.append(session._make_callable_from_options(options))
        if pool is not None:
            mode = POOLED
        self._trials = trials
        self._times: dict[int, tuple[list[float], list[float]]] = {}  # bucket -> per mode
        self._modes: dict[int, int] = {}  # bucket -> the mode chosen
        self._samples: dict[int, list[list[np.ndarray]]] = {}  # undecided bucket -> calls
        self._lock = threading.Lock()
        self._label = label
        self.mode = mode
        self.schedules: Callable[..., Any] | None = None  # a ScheduledRunner, if any

    def mode_of(self, bucket: int) -> int | None:
        """The mode runs of `bucket` take; None while its trial runs."""
        return self.mode if self.mode is not None else self._modes.get(bucket)

    def fn_of(self, bucket: int) -> Callable[..., Any] | None:
        """The session callable runs of `bucket` take, once its mode is chosen (callers that
        already know the bucket skip the lookups of `unscheduled`)."""
        mode = self.mode_of(bucket)
        return None if mode is None else self._fns[mode]

    def inline(self, *args: Any) -> Any:
        """A run on the calling thread, whatever the mode (a lane Runner built `inline=True`)."""
        return self._fns[INLINE](*args)

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
        bucket = bucket_of(rows_of(args))
        mode = self._modes.get(bucket)
        if mode is not None:
            return self._fns[mode](*args)
        with self._lock:
            mode = self._modes.get(bucket)  # decided by another thread meanwhile?
            if mode is None:
                times = self._times.setdefault(bucket, ([], []))
                mode = INLINE if len(times[INLINE]) < len(times[POOLED]) else POOLED
                samples = self._samples.setdefault(bucket, [])
                if len(samples) < SAMPLES:
                    samples.append([np.array(a, copy=True) for a in args])
            else:
                times = None
        if times is None:
            return self._fns[mode](*args)
        start = time.perf_counter()
        result = self._fns[mode](*args)
        elapsed = time.perf_counter() - start
        with self._lock:
            if bucket not in self._modes:  # concurrent trial runs may have decided it
                times[mode].append(elapsed)
                if min(map(len, times)) >= self._trials:
                    self._choose(bucket, times)
        return result

    def undecided(self) -> bool:
        """Whether calls are kept for `settle`: some bucket ran and has no mode yet."""
        return bool(self._samples)

    def settle(self, replay: bool = True) -> None:
        """Replays the kept calls of every undecided bucket, one at a time, until it decides
        (at load, after warmup); then releases them. A call that fails ends its bucket's
        replay (warmup would have failed first). The caller passes `replay=False` for graphs
        that change state: their buckets decide on live calls."""
        for bucket, samples in list(self._samples.items()) if replay else []:
            for i in range(4 * self._trials):
                if bucket in self._modes or self.mode is not None:
                    break
                try:
                    self.unscheduled(*samples[i % len(samples)])
                except tf.errors.OpError:
                    break
        with self._lock:
            self._samples.clear()

    def _choose(self, bucket: int, times: tuple[list[float], list[float]]) -> None:
        medians = [statistics.median(t) for t in times]
        mode = self._modes[bucket] = INLINE if medians[INLINE] < medians[POOLED] else POOLED
        del self._times[bucket]
        self._samples.pop(bucket, None)
        log.info(
            "%s, rows up to %d, runs on %s (median %.3f ms, against %.3f ms on %s)",
            self._label or "A signature",
            bucket,
            _MODE_NAMES[mode],
            medians[mode] * 1e3,
            medians[1 - mode] * 1e3,
            _MODE_NAMES[1 - mode],
        )
