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

import logging
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from tfrec.runtime.stage import Key, bucket_of
from tfrec.schedule import costmodel, planner
from tfrec.schedule.costmodel import CostModel, Trace
from tfrec.schedule.decisions import (
    CACHE_FILE,
    MODES,
    REALISATION,
    Build,
    Decision,
    SchedulerOptions,
    _Shared,
)
from tfrec.schedule.scheduled_runner import ScheduledRunner, _Bucket

if TYPE_CHECKING:
    from tfrec.base.metrics import Metrics
    from tfrec.runtime.runner import Runner

__all__ = ["CACHE_FILE", "MODES", "OpScheduler", "ScheduledRunner", "SchedulerOptions",
           "ServerScheduling", "_Bucket", "_Shared"]  # fmt: skip

log = logging.getLogger(__name__)


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
        writers: planner.StateWriters | None = None,
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
        self.sampling = True  # until `settle`: warmup calls are kept for it, live ones never
        self._lock = threading.Lock()  # builds and graph imports, one at a time
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._writers = writers or planner.StateWriters(session.graph)

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
        """Replays the kept samples of every undecided bucket until it decides (at load);
        from then on no call is kept."""
        self.sampling = False
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
        # The name is quoted into one path component: it cannot leave the cache directory
        # (config validation refuses separators too).
        name = urllib.parse.quote(self.model, safe="")
        if name in ("", ".", ".."):
            name = name.replace(".", "%2E") or "%00"
        path = Path(self.options.cache_dir) / name / str(self.version) / CACHE_FILE
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
            except (planner.ScheduleError, ValueError, tf.errors.OpError) as err:
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
            shared.graph = planner.Graph(_one(trace.graphs))
        model = trace.model(signature)
        costs = self.stored(trace, bucket) or model.nearest(bucket)
        assert costs is not None
        plan = planner.plan(shared.graph, costs, self.slots, REALISATION)
        if not plan.edges:
            return Build(plan, reason="no two costly ops can run concurrently")
        copy_key = plan.key
        names = self._copies.get(copy_key)
        if names is None:
            names = self._import(planner.rewrite(shared.graph, plan, lambda slot: ""))
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

    def _import(self, copy: planner.Copy) -> tuple[list[str], list[str]]:
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
        raise planner.ScheduleError(f"it runs as {len(graphs)} partitions, not one")
    return graphs[0]


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
        writers: planner.StateWriters | None = None,
    ) -> OpScheduler:
        """A version's scheduler; costs stored with the model (`tfrec-schedule profile`) are
        used where they match the executed graph."""
        stored = costmodel.read(Path(path) / costmodel.COST_FILE)
        return OpScheduler(self.options, session, slots, model=name, version=version,
                         stored=stored, metrics=self.metrics, writers=writers)  # fmt: skip
