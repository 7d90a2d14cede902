"""Scheduled graphs at run time: profile, plan, import, time, and keep whichever is faster.

`--scheduler` (`auto` by default) wraps every signature's `Runner` (the *unscheduled* run: TF's
inter-op pool or the calling thread, whichever `tfrec.runtime.runner` measured faster) in a
`ScheduledRunner`. Per bucket of rows (`costmodel.bucket_of`) a ScheduledRunner goes through:

1. **wait** until the Runner has chosen the bucket's mode: that choice is the baseline;
2. **profile**: `PROFILE_RUNS` runs are traced (`costmodel.Trace`: they are real runs, traced);
3. **build**: the bucket's costs are planned onto the pool's slots (`tfrec.schedule.planner`), the
   rewritten graph imported into the session as a new copy (`tfrec_schedule<i>/...`, its
   variables and tables input-mapped onto the one restored copy, as SessionGroup replicas are)
   and a callable made for it. Buckets whose plans agree share one copy;
4. **trial** (`auto`): runs alternate between the two graphs, `TRIALS` each; the scheduled one
   is kept only if its median is at least `MIN_GAIN` below the unscheduled median. `on` keeps
   it without timing; `off` never builds one.

At load, warmup requests drive these phases and `OpScheduler.settle` then replays the samples
they left (a few per bucket) until every bucket seen has decided, building synchronously: a
version becomes AVAILABLE with its decisions made. Without warmup data the first live calls of
a bucket drive them instead; the build then runs on a background thread while requests keep
running unscheduled.

A run of the scheduled copy that fails is run again unscheduled, so errors read exactly as
they would without the scheduler. Thread-safety: `ScheduledRunner.__call__` runs from any
number of threads; a decided bucket costs one dict lookup. Phase changes happen under the
runner's lock; builds (graph imports) under the scheduler's.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from tfrec.runtime.stage import bucket_of, rows_of
from tfrec.schedule import costmodel
from tfrec.schedule import planner as scheduler
from tfrec.schedule.costmodel import CostModel, Trace

if TYPE_CHECKING:
    from tfrec.base.metrics import Metrics
    from tfrec.runtime.runner import Runner

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
PROFILE_RUNS = 5
TRIALS = 20
MIN_GAIN = 0.05  # the scheduled graph must be this much faster (median) to be kept: the
# trial runs at concurrency 1, where a schedule gains most; under load it gains less
SAMPLES = 4  # requests kept per bucket for `settle`
SETTLE_CALLS = 400  # at most this many replays per bucket at load
CACHE_FILE = "tfrec_schedule.json"
# Served schedules are enforced by control edges on the lane's own device (`scheduler`'s `order`
# realisation); `place` (a logical device per slot) is for `tfrec-schedule explain` only.
REALISATION = "order"
Key = tuple[tuple[str, ...], tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class SchedulerOptions:
    """How every model version's signatures are scheduled (from the flags)."""

    mode: str = "auto"
    profile_runs: int = PROFILE_RUNS
    trials: int = TRIALS
    min_gain: float = MIN_GAIN
    cache_dir: str = ""  # where built cost models and decisions are written; "" keeps none

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--scheduler must be one of {', '.join(MODES)}, not {self.mode!r}")


@dataclasses.dataclass
class Build:
    """A bucket's schedule, imported; or why there is none."""

    plan: scheduler.Plan | None = None
    feeds: list[str] = dataclasses.field(default_factory=list)  # session tensor names
    fetches: list[str] = dataclasses.field(default_factory=list)
    reason: str = ""


@dataclasses.dataclass
class Decision:
    """What one ScheduledRunner decided for one bucket (for logs, metrics and reports)."""

    signature: str
    bucket: int
    scheduled: bool
    reason: str
    unscheduled_ms: float = 0.0
    scheduled_ms: float = 0.0
    plan: scheduler.Plan | None = None
    baseline: str = ""  # how unscheduled runs execute: "pool" or "inline" (tfrec.runtime.runner)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "signature": self.signature,
            "bucket": self.bucket,
            "graph": "scheduled" if self.scheduled else "unscheduled",
            "reason": self.reason,
            "baseline": self.baseline,
            "unscheduled_ms": round(self.unscheduled_ms, 4),
            "scheduled_ms": round(self.scheduled_ms, 4),
        }
        if self.plan is not None:
            doc["plan"] = self.plan.to_json()
        return doc


class _Shared:
    """What every lane's runner of one (feeds, fetches) shares: the trace, the cost model,
    the graphs built per bucket."""

    def __init__(self) -> None:
        self.trace: Trace | None = None
        self.graph: scheduler.Graph | None = None
        self.reason = ""  # set when the signature cannot be scheduled at all
        self.builds: dict[int, Build] = {}


class OpScheduler:
    """One model version's scheduling: shared traces, plans and imported copies."""

    def __init__(
        self,
        options: SchedulerOptions,
        session: tf.compat.v1.Session,
        slots: int,
        *,
        model: str,
        version: int,
        stored: Sequence[CostModel] = (),
        metrics: Metrics | None = None,
        writers: scheduler.StateWriters | None = None,
    ) -> None:
        self.options = options
        self.session = session
        self.slots = slots
        self.model, self.version = model, version
        self.metrics = metrics
        self._stored = {(tuple(m.feeds), tuple(m.fetches)): m for m in stored}
        self._shared: dict[Key, _Shared] = {}
        self._copies: dict[tuple, tuple[list[str], list[str]]] = {}
        self._runners: list[ScheduledRunner] = []
        self._lock = threading.Lock()  # builds and graph imports, one at a time
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._writers = writers or scheduler.StateWriters(session.graph)

    def runner(
        self, baseline: Runner, key: Key, signature: str, pool: int | None = None
    ) -> ScheduledRunner:
        with self._lock:
            shared = self._shared.get(key)
            if shared is None:
                shared = self._shared[key] = _Shared()
                writers = self._writers(key[1])
                if writers:
                    shared.reason = f"it changes state ({', '.join(writers)}): never reordered"
        runner = ScheduledRunner(self, baseline, key, signature, shared, pool)
        self._runners.append(runner)
        return runner

    def settle(self) -> None:
        """Replays the kept samples of every undecided bucket until it decides (at load)."""
        for runner in list(self._runners):
            runner.settle()

    def decisions(self) -> list[Decision]:
        return [d for r in self._runners for d in r.decisions.values()]

    def cost_models(self) -> list[CostModel]:
        out = []
        for shared in self._shared.values():
            if shared.trace is not None and len(shared.trace.graphs) == 1:
                signature = next((r.signature for r in self._runners if r._shared is shared), "")
                out.append(shared.trace.model(signature))
        return out

    def report(self) -> dict[str, Any]:
        return {
            "format": costmodel.FORMAT,
            "model": self.model,
            "version": self.version,
            "slots": self.slots,
            "realisation": REALISATION,
            "mode": self.options.mode,
            "decisions": [d.to_json() for d in self.decisions()],
            "cost_models": [m.to_json() for m in self.cost_models()],
        }

    def write_cache(self) -> Path | None:
        """Writes the report under --scheduler_cache_dir (model/version/); None without one."""
        if not self.options.cache_dir:
            return None
        path = Path(self.options.cache_dir) / self.model / str(self.version) / CACHE_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(costmodel.json.dumps(self.report(), indent=1) + "\n")
            tmp.replace(path)
        except OSError as err:
            log.warning("Cannot write the schedule cache %s: %s", path, err)
            return None
        return path

    def close(self) -> None:
        self._closed = True
        for thread in list(self._threads):
            thread.join(timeout=30)

    # ------------------------------------------------------------------ building

    def build(self, shared: _Shared, bucket: int, signature: str) -> Build:
        """The bucket's schedule, planned and imported once (under the lock)."""
        with self._lock:
            done = shared.builds.get(bucket)
            if done is not None:
                return done
            try:
                result = self._build(shared, bucket, signature)
            except (scheduler.ScheduleError, ValueError, tf.errors.OpError) as err:
                result = Build(reason=f"cannot be scheduled: {err}")
            shared.builds[bucket] = result
            return result

    def _build(self, shared: _Shared, bucket: int, signature: str) -> Build:
        if self._closed:
            return Build(reason="the version is unloading")
        if self.slots < 2:
            return Build(reason=f"{self.slots} execution slot: nothing runs concurrently")
        trace = shared.trace
        assert trace is not None
        if shared.graph is None:
            shared.graph = scheduler.Graph(_one(trace.graphs))
        model = trace.model(signature)
        costs = self.stored(trace, bucket) or model.nearest(bucket)
        assert costs is not None
        plan = scheduler.plan(shared.graph, costs, self.slots, REALISATION)
        if not plan.edges:
            return Build(plan, reason="no two costly ops can run concurrently")
        copy_key = plan.key
        names = self._copies.get(copy_key)
        if names is None:
            names = self._import(scheduler.rewrite(shared.graph, plan, lambda slot: ""))
            self._copies[copy_key] = names
        return Build(plan, names[0], names[1])

    def stored(self, trace: Trace, rows: int) -> costmodel.Bucket | None:
        """Costs of `rows`'s bucket stored with the model, if they are of this graph."""
        model = self._stored.get((tuple(trace.feeds), tuple(trace.fetches)))
        if model is None or not trace.graphs or bucket_of(rows) not in model.buckets:
            return None
        if len(trace.graphs) != 1 or model.graph != costmodel.fingerprint(trace.graphs[0]):
            return None
        return model.buckets[bucket_of(rows)]

    def _import(self, copy: scheduler.Copy) -> tuple[list[str], list[str]]:
        graph = self.session.graph
        scope = graph.unique_name("tfrec_schedule", mark_as_used=False)
        input_map = {f"{n}:0": graph.get_tensor_by_name(f"{n}:0") for n in copy.state}
        finalized = graph.finalized
        if finalized:
            graph._unsafe_unfinalize()
        try:
            with graph.as_default():
                tf.graph_util.import_graph_def(copy.graph, input_map=input_map, name=scope)
        finally:
            if finalized:
                graph.finalize()
        return [f"{scope}/{t}" for t in copy.feeds], [f"{scope}/{t}" for t in copy.fetches]

    def background(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name="tfrec-schedule-build", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()


def _one(graphs: list) -> Any:
    if len(graphs) != 1:
        raise scheduler.ScheduleError(f"it runs as {len(graphs)} partitions, not one")
    return graphs[0]


@dataclasses.dataclass
class _Bucket:
    phase: str = "wait"  # wait, profile, build, trial, done
    samples: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    fn: Callable[..., Any] | None = None  # set once decided: the graph every run takes
    scheduled: Callable[..., Any] | None = None  # the scheduled callable, while on trial
    times: tuple[list[float], list[float]] = dataclasses.field(default_factory=lambda: ([], []))
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
        self.decisions: dict[int, Decision] = {}

    def __call__(self, *args: np.ndarray) -> Any:
        return self.call(args, bucket_of(rows_of(args)))

    def call(self, args: Sequence[np.ndarray], bucket: int) -> Any:
        """A run of `bucket` (the Runners stage knows it): one lookup once decided."""
        state = self._buckets.get(bucket)
        if state is not None and state.fn is not None:
            return state.fn(*args)
        return self._undecided(args, bucket)

    def _undecided(self, args: Sequence[np.ndarray], bucket: int) -> Any:
        with self._lock:
            state = self._buckets.setdefault(bucket, _Bucket())
            if len(state.samples) < SAMPLES and not self._settling:
                state.samples.append([np.array(a, copy=True) for a in args])
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
                state.phase = "trial"

    def _trial(self, state: _Bucket, bucket: int, args: Sequence[np.ndarray]) -> Any:
        with self._lock:
            base, sched = state.times
            use = 1 if len(sched) < len(base) else 0
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
            if state.fn is None and state.phase == "trial":
                state.times[use].append(elapsed)
                trials = self._owner.options.trials
                if min(len(t) for t in state.times) >= trials:
                    self._judge(state, bucket)
        return results

    def _judge(self, state: _Bucket, bucket: int) -> None:
        base = statistics.median(state.times[0])
        sched = statistics.median(state.times[1])
        faster = sched < (1.0 - self._owner.options.min_gain) * base
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
        state.phase, state.samples, state.scheduled = "done", [], None
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


class ServerScheduling:
    """What `Servable.load` needs to give each model version a OpScheduler (built in main)."""

    def __init__(self, options: SchedulerOptions, metrics: Metrics | None = None) -> None:
        self.options = options
        self.metrics = metrics

    def describe(self) -> str:
        o = self.options
        cache = o.cache_dir or "none (kept in memory)"
        return (
            f"--scheduler={o.mode}: per signature and bucket of rows, {REALISATION} schedules "
            f"profiled over {o.profile_runs} traced runs, kept when {o.min_gain:.0%} faster over "
            f"{o.trials} timed runs each; cache: {cache}"
        )

    def create(
        self,
        session: tf.compat.v1.Session,
        slots: int,
        name: str,
        version: int,
        path: Path,
        writers: scheduler.StateWriters | None = None,
    ) -> OpScheduler:
        """A version's scheduler; costs stored with the model (`tfrec-schedule profile`) are
        used where they match the executed graph."""
        stored = costmodel.read(Path(path) / costmodel.COST_FILE)
        return OpScheduler(self.options, session, slots, model=name, version=version,
                         stored=stored, metrics=self.metrics, writers=writers)  # fmt: skip
