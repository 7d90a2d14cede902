"""One signature's runs under the operator scheduler: per bucket of rows, the phases of
`tfrec.schedule.scheduled` (wait, profile, build, trial, done), and then one graph."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from tfrec.runtime.stage import Key, bucket_of, rows_of
from tfrec.runtime.trial import Trial, sample_of
from tfrec.schedule.costmodel import Trace
from tfrec.schedule.decisions import SAMPLES, SETTLE_CALLS, Build, Decision, _Shared

if TYPE_CHECKING:
    from tfrec.runtime.runner import Runner
    from tfrec.schedule.scheduled import OpScheduler

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Bucket:
    phase: str = "wait"  # wait, profile, build, trial, done
    samples: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    fn: Callable[..., Any] | None = None  # set once decided: the graph every run takes
    scheduled: Callable[..., Any] | None = None  # the scheduled callable, while on trial
    trial: Trial | None = None  # unscheduled (arm 0) against scheduled (arm 1)
    build: Build | None = None


class ScheduledRunner:
    """A signature's runs: per bucket, unscheduled until its schedule measured faster."""

    def __init__(
        self,
        owner: OpScheduler,
        baseline: Runner,
        key: Key,
        signature: str,
        shared: _Shared,
        pool: int | None,
    ) -> None:
        self._owner = owner
        self.baseline = baseline  # its `mode_of(bucket)` is the unscheduled run's, once chosen
        self._unscheduled = baseline.unscheduled
        self.key = key
        self.signature = signature
        self._shared = shared
        self._pool = pool
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()
        self._settling = False
        self.sampling = owner.sampling  # calls are kept for `settle` until the load settles
        self.decisions: dict[int, Decision] = {}

    def __call__(self, *args: np.ndarray) -> Any:
        return self.call(args, bucket_of(rows_of(args)))

    def call(self, args: Sequence[np.ndarray], bucket: int) -> Any:
        """A run of `bucket` (the Runners stage knows it): one lookup once decided."""
        state = self._buckets.get(bucket)
        if state is not None and state.fn is not None:
            return state.fn(*args)
        return self._undecided(args, bucket)

    def timed(self, args: Sequence[np.ndarray], bucket: int, timeout_ms: int) -> Any:
        """A run TensorFlow cancels after `timeout_ms`, on the graph the bucket has chosen (the
        unscheduled one while it is undecided)."""
        state, decision = self._buckets.get(bucket), self.decisions.get(bucket)
        build = state.build if state is not None else None
        if build is None or decision is None or not decision.scheduled:
            return self.baseline.timed(args, bucket, timeout_ms)
        try:
            return self.baseline.timed(args, bucket, timeout_ms, (build.feeds, build.fetches))
        except tf.errors.DeadlineExceededError:
            raise
        except tf.errors.OpError:
            return self.baseline.timed(args, bucket, timeout_ms)  # as `_guarded` does

    def _undecided(self, args: Sequence[np.ndarray], bucket: int) -> Any:
        with self._lock:
            state = self._buckets.setdefault(bucket, _Bucket())
            if self.sampling and len(state.samples) < SAMPLES and not self._settling:
                kept = sum(a.nbytes for b in self._buckets.values() for c in b.samples for a in c)
                sample = sample_of(args, kept)
                if sample is not None:
                    state.samples.append(sample)
            action = self._next(state, bucket)
        if action == "trace":
            return self._traced(state, bucket, args)
        if action == "trial":
            return self._trial(state, bucket, args)
        fn = state.fn or self._unscheduled
        return fn(*args)

    def _next(self, state: _Bucket, bucket: int) -> str:
        """What this call does; advances the phase (under the lock)."""
        if state.fn is not None:
            return "run"
        if self._shared.reason:
            self._decide(state, bucket, False, self._shared.reason)
            return "run"
        if state.phase == "wait":
            if self.baseline.mode_of(bucket) is None:
                return "run"
            state.phase = "profile"
        if state.phase == "profile":
            return "trace"
        if state.phase == "trial":
            return "trial"
        return "run"  # build: in progress on another thread

    def _traced(self, state: _Bucket, bucket: int, args: Sequence[np.ndarray]) -> Any:
        shared, rows = self._shared, rows_of(args)
        with self._owner._lock:
            if shared.trace is None and not shared.reason:
                try:
                    shared.trace = Trace(self._owner.session, *self.key, pool=self._pool)
                except tf.errors.OpError as err:
                    shared.reason = f"cannot be traced: {err.message}"
            trace = shared.trace
            if trace is None:
                return self._unscheduled(*args)
            results = trace(*args)
            enough = trace.runs(rows) >= self._owner.options.profile_runs
            enough = enough or self._owner.stored(trace, rows) is not None
        if enough:
            with self._lock:
                start = state.phase == "profile"
                if start:
                    state.phase = "build"
            if start:
                if self._settling:
                    self._build(state, bucket)
                else:
                    self._owner.background(lambda: self._build(state, bucket))
        return results

    def _build(self, state: _Bucket, bucket: int) -> None:
        try:
            build = self._owner.build(self._shared, bucket, self.signature)
            fn = None
            if not build.reason:
                options = config_pb2.CallableOptions(feed=build.feeds, fetch=build.fetches)
                if self._pool is not None:
                    options.run_options.inter_op_thread_pool = self._pool
                fn = self._owner.session._make_callable_from_options(options)
        except Exception as err:  # never let a schedule break serving
            log.exception("Building the schedule of %s failed", self.signature)
            build, fn = Build(reason=f"the build failed: {err}"), None
        with self._lock:
            state.build = build
            if fn is None:
                self._decide(state, bucket, False, build.reason)
            elif self._owner.options.mode == "on":
                self._decide(state, bucket, True, "--scheduler=on", scheduled_fn=fn)
            else:
                state.scheduled = fn
                state.trial = Trial(self._owner.options.trials, self._owner.options.min_gain)
                state.phase = "trial"

    def _trial(self, state: _Bucket, bucket: int, args: Sequence[np.ndarray]) -> Any:
        with self._lock:
            trial = state.trial
            use = trial.next_arm() if trial is not None else 0
            fn = state.scheduled if use else self._unscheduled
        if fn is None:  # decided meanwhile
            return (state.fn or self._unscheduled)(*args)
        start = time.perf_counter()
        try:
            results = fn(*args)
        except tf.errors.OpError:
            if not use:
                raise
            return self._unscheduled(*args)  # the unscheduled graph words the error
        elapsed = time.perf_counter() - start
        with self._lock:
            live = state.fn is None and state.phase == "trial"
            if live and trial is not None and trial.record(use, elapsed):
                self._judge(state, bucket, trial)
        return results

    def _judge(self, state: _Bucket, bucket: int, trial: Trial) -> None:
        base, sched = trial.medians()
        faster = trial.winner() == 1
        reason = f"median {sched * 1e3:.3f} ms scheduled against {base * 1e3:.3f} ms unscheduled"
        self._decide(state, bucket, faster, reason, state.scheduled if faster else None,
                     base, sched)  # fmt: skip

    def _decide(
        self,
        state: _Bucket,
        bucket: int,
        scheduled: bool,
        reason: str,
        scheduled_fn: Callable[..., Any] | None = None,
        base_s: float = 0.0,
        sched_s: float = 0.0,
    ) -> None:
        """Final for this bucket (under the lock): every later run takes one graph."""
        fn = self._guarded(scheduled_fn) if scheduled and scheduled_fn is not None else None
        # Unscheduled: straight to the bucket's session callable once the Runner has chosen it
        # (this call path already found the bucket).
        state.fn = fn or self.baseline.fn_of(bucket) or self._unscheduled
        state.phase, state.samples, state.scheduled, state.trial = "done", [], None, None
        plan = state.build.plan if state.build is not None else None
        mode = self.baseline.mode_of(bucket)
        baseline = "" if mode is None else ("pool", "inline")[mode]
        decision = Decision(self.signature, bucket, fn is not None, reason, base_s * 1e3,
                            sched_s * 1e3, plan, baseline)  # fmt: skip
        self.decisions[bucket] = decision
        where = "" if self._pool is None else f" on lane {self._pool}"
        log.info(
            "%s v%d %s%s, rows up to %d: %s graph (%s)",
            self._owner.model,
            self._owner.version,
            self.signature,
            where,
            bucket,
            "scheduled" if fn is not None else "unscheduled",
            reason,
        )
        if self._owner.metrics is not None and base_s and sched_s:
            self._owner.metrics.scheduler_speedup.labels(
                self._owner.model, str(self._owner.version), self.signature, str(bucket)
            ).set(base_s / sched_s)
        if self._owner.metrics is not None:
            self._owner.metrics.scheduler_decisions.labels(
                self._owner.model, "scheduled" if fn is not None else "unscheduled"
            ).inc()

    def _guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        baseline = self._unscheduled

        def run(*args: np.ndarray) -> Any:
            try:
                return fn(*args)
            except tf.errors.OpError:
                return baseline(*args)

        return run

    def settle(self) -> None:
        """Replays each undecided bucket's samples until it decides (synchronous builds)."""
        self._settling = True
        try:
            for bucket, state in list(self._buckets.items()):
                if self._shared.reason and state.fn is None:  # nothing is replayed
                    with self._lock:
                        self._decide(state, bucket, False, self._shared.reason)
                samples = list(state.samples)
                for i in range(SETTLE_CALLS):
                    if state.fn is not None or not samples:
                        break
                    try:
                        self(*samples[i % len(samples)])
                    except tf.errors.OpError as err:
                        with self._lock:
                            self._decide(state, bucket, False, f"a sample failed: {err.message}")
        finally:
            self._settling = False
            self.stop_sampling()

    def stop_sampling(self) -> None:
        """After load: live calls are never kept (their buckets decide on live calls)."""
        with self._lock:
            self.sampling = False
            for state in self._buckets.values():
                state.samples = []
