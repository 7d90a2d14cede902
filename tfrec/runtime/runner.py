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

`Runners` is the bottom stage of a version's chain (`tfrec.runtime.stage`): one Runner per
(feeds, fetches) on one session (and one lane's pool), built on a key's first run. With the
operator scheduler (`--scheduler`) each Runner is wrapped, at construction, in a
`tfrec.schedule.scheduled.ScheduledRunner`, which runs either this Runner's `unscheduled` path
(the mode chosen above: the baseline) or, per bucket of rows, a critical-path schedule of the
graph that measured faster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.client import pywrap_tf_session as tf_session

from tfrec.base.errors import from_tf_error
from tfrec.runtime.stage import RUNNING, Dropped, Key, Run, bucket_of, rows_of
from tfrec.runtime.trial import Trial, sample_of

log = logging.getLogger(__name__)

POOLED, INLINE = 0, 1
# Ops that make a graph loop: TensorFlow checks for cancellation between iterations, so only
# such graphs stop when RunOptions.timeout_in_ms passes (straight graphs run to the end).
LOOP_OPS = frozenset({"Enter", "LoopCond", "While", "StatelessWhile"})
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
        self._session = session
        self._names = (list(feeds), list(fetches))
        # TF_Outputs by (feeds, fetches) names (None: this Runner's), for `timed`
        self._outputs: dict[Any, tuple[list[Any], list[Any]]] = {}
        self._pool = pool
        self._trials = trials
        self._trials_of: dict[int, Trial] = {}  # undecided bucket -> POOLED against INLINE
        self._modes: dict[int, int] = {}  # bucket -> the mode chosen
        self._samples: dict[int, list[list[np.ndarray]]] = {}  # undecided bucket -> calls
        self._lock = threading.Lock()
        self._label = label
        self.mode = mode
        self.sampling = True  # calls are kept for `settle` until the version has settled

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
        return self.unscheduled(*args)

    def unscheduled(self, *args: Any) -> Any:
        """A run of the signature's own graph, in the chosen mode (or on trial)."""
        return self.call(args, bucket_of(rows_of(args)))

    def call(self, args: Sequence[Any], bucket: int) -> Any:
        """`unscheduled` for a caller that knows the run's bucket."""
        mode = self.mode
        if mode is not None:
            return self._fns[mode](*args)
        mode = self._modes.get(bucket)
        if mode is not None:
            return self._fns[mode](*args)
        with self._lock:
            mode = self._modes.get(bucket)  # decided by another thread meanwhile?
            if mode is None:
                trial = self._trials_of.get(bucket)
                if trial is None:
                    trial = self._trials_of[bucket] = Trial(self._trials)
                mode = trial.next_arm()  # arm 0 is POOLED, arm 1 INLINE
                if self.sampling:
                    self._keep_sample(bucket, args)
            else:
                trial = None
        if trial is None:
            return self._fns[mode](*args)
        start = time.perf_counter()
        result = self._fns[mode](*args)
        elapsed = time.perf_counter() - start
        with self._lock:
            # concurrent trial runs may have decided it
            if bucket not in self._modes and trial.record(mode, elapsed):
                self._choose(bucket, trial)
        return result

    def timed(
        self,
        args: Sequence[Any],
        bucket: int,
        timeout_ms: int,
        names: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> Any:
        """A run that TensorFlow cancels after `timeout_ms` (DeadlineExceededError), in the
        bucket's mode (the pool while on trial; no trial timing). Session callables fix their
        RunOptions when made, so this goes through TF_SessionRun with options per call: the
        executors are cached by (feeds, fetches), as for the callables. `names`: other feeds
        and fetches of the same session (a scheduled copy of the graph)."""
        options = config_pb2.RunOptions(timeout_in_ms=timeout_ms)
        if self._pool is not None:
            options.inter_op_thread_pool = self._pool
        elif self.mode_of(bucket) == INLINE:
            options.inter_op_thread_pool = -1
        ins, outs = self._tf_outputs(names)
        buffer = tf_session.TF_NewBufferFromString(options.SerializeToString())
        try:
            return tf_session.TF_SessionRun_wrapper(
                self._session._session, buffer, dict(zip(ins, args, strict=True)), outs, [], None
            )
        finally:
            tf_session.TF_DeleteBuffer(buffer)

    def _tf_outputs(
        self, names: tuple[Sequence[str], Sequence[str]] | None
    ) -> tuple[list[Any], list[Any]]:
        """The TF_Outputs of `names` (default: this Runner's feeds and fetches), looked up once
        per set of names."""
        key = (tuple(names[0]), tuple(names[1])) if names is not None else None
        outputs = self._outputs.get(key)
        if outputs is None:
            graph = self._session.graph
            feeds, fetches = names or self._names
            outputs = self._outputs[key] = (
                [graph.get_tensor_by_name(n)._as_tf_output() for n in feeds],
                [graph.get_tensor_by_name(n)._as_tf_output() for n in fetches],
            )
        return outputs

    def _keep_sample(self, bucket: int, args: Sequence[Any]) -> None:
        samples = self._samples.setdefault(bucket, [])
        if len(samples) < SAMPLES:
            kept = sum(a.nbytes for calls in self._samples.values() for c in calls for a in c)
            sample = sample_of(args, kept)
            if sample is not None:
                samples.append(sample)

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
        self.stop_sampling()

    def stop_sampling(self) -> None:
        """From now on no call is kept (after load: live requests are never copied)."""
        with self._lock:
            self.sampling = False
            self._samples.clear()

    def _choose(self, bucket: int, trial: Trial) -> None:
        medians = trial.medians()
        mode = self._modes[bucket] = trial.winner()
        del self._trials_of[bucket]
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


class Runners:
    """The bottom stage: a Runner per (feeds, fetches) of one session, or of one lane's pool.

    `tensor` maps graph tensor names to the names this lane feeds and fetches (a lane with its
    own device runs a replica of the graph). `schedules` (the version's operator scheduler,
    if any) wraps each Runner as it is built. Thread-safe: Runners are built under a lock.
    """

    def __init__(
        self,
        session: tf.compat.v1.Session,
        *,
        label: str,
        mode: int | None = None,
        pool: int | None = None,
        inline: bool = False,
        tensor: Callable[[str], str] | None = None,
        schedules: Any = None,
    ) -> None:
        self._session = session
        self._label = label
        self._mode = mode
        self._pool = pool
        self._inline = inline
        self._tensor = tensor
        self._schedules = schedules
        self._entries: dict[Key, tuple[Runner, Callable[..., Any], Callable[..., Any]]] = {}
        self._lock = threading.Lock()
        self._sampling = True
        # Runs with a deadline go through `Runner.timed` only where a timeout can stop them.
        self._loops = any(op.type in LOOP_OPS for op in session.graph.get_operations())

    def run(self, run: Run) -> list[np.ndarray]:
        entry = self._entries.get(run.key) or self._create(run.key, run.signature)
        run.check_deadline()
        timed = not run.inline and run.deadline is not None and self._loops
        try:
            if run.inline:
                results = entry[0].inline(*run.args)
            elif timed:
                results = entry[2](run.args, bucket_of(run.rows), run.timeout_ms())
            else:
                results = entry[1](run.args, bucket_of(run.rows))
        except tf.errors.DeadlineExceededError as err:
            if not timed:
                raise from_tf_error(err) from None  # the model's own
            raise Dropped("Deadline exceeded while the model ran: TensorFlow cancelled the "
                          "run", RUNNING) from None  # fmt: skip
        except tf.errors.OpError as err:
            raise from_tf_error(err) from None
        return [np.asarray(r) for r in results]

    def stop_sampling(self) -> None:
        """The version has settled: no Runner, present or future, keeps calls."""
        with self._lock:
            self._sampling = False
            runners = [entry[0] for entry in self._entries.values()]
        for runner in runners:
            runner.stop_sampling()

    def runners(self) -> list[tuple[Key, Runner]]:
        with self._lock:
            return [(key, entry[0]) for key, entry in self._entries.items()]

    def _create(
        self, key: Key, signature: str
    ) -> tuple[Runner, Callable[..., Any], Callable[..., Any]]:
        """The key's Runner (creating a callable optimises its graph and builds its executor;
        stateful graphs forbid running it ahead of a request)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            feeds, fetches = key
            if self._tensor is not None:
                feeds = tuple(map(self._tensor, feeds))
                fetches = tuple(map(self._tensor, fetches))
            where = "" if self._pool is None else f" on lane {self._pool}"
            label = f"{self._label} fetching {','.join(key[1])}{where}"
            try:
                runner = Runner(self._session, feeds, fetches, label=label, mode=self._mode,
                                pool=self._pool, inline=self._inline)  # fmt: skip
            except tf.errors.OpError as err:
                raise from_tf_error(err) from None
            if not self._sampling:
                runner.stop_sampling()
            call: Callable[..., Any] = runner.call
            timed: Callable[..., Any] = runner.timed
            if self._schedules is not None:
                scheduled = self._schedules.runner(runner, key, signature or ",".join(key[1]),
                                                   self._pool)  # fmt: skip
                call, timed = scheduled.call, scheduled.timed
            entry = self._entries[key] = (runner, call, timed)
            return entry

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
