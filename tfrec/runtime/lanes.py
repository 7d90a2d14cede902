"""Lanes: which lane of a SessionGroup runs each session run, and the runs themselves.

Every `Servable.run_unbatched` (a request, or a merged batch with `--enable_batching`) becomes
one run on one lane. A run's *cost* is estimated as `a + b * rows` (rows: the largest dim 0 of
its feeds), fitted per (feeds, fetches) from runs that had their lane to themselves (warmup
replays, the light lane, quiet periods): see `Cost`.

Policy `reserve` (the default): a run is *heavy* when its estimated cost is at least
`HEAVY_RATIO` times the *reference*, the cheapest run seen lately, and at least
`HEAVY_FLOOR_S`. The reference drops at once to any cheaper run and otherwise rises by a
factor e every `REFERENCE_TAU_S` seconds, so it remembers light requests through a burst of
heavy ones (a moving quantile would forget them, and leave the first light requests after
the burst unprotected) and forgets them some seconds after they stop. Heavy runs may never
take the last lane that has no heavy run in flight, and light runs go to the least-loaded
lane among those free of heavy work: a light request never shares a pool with a heavy one.
Without light requests nothing is heavy (nothing is 4x the cheapest) and every lane takes
everything. The price: while light requests come, heavy ones get K-1 of the K lanes.

The reference is kept as the run's (feeds/fetches, rows) and priced with the current fit at
every decision. Under load the fit's intercept climbs (during a burst of 1000-row WDL runs a
10-row run was estimated at 1.2-1.6 ms, against a reference priced at under 0.4 ms before
the burst): a reference priced once made the light requests themselves look heavy, and they
queued behind the heavy runs (light p50 16 ms inside the server instead of 1 ms).

While a heavy run is in flight, a light run executes on the calling thread (the request's
handler) instead of its lane's pool, unless lanes are pinned to CPU sets: two thread
hand-offs fewer, each a wake-up that waits for a core while heavy work keeps both busy
(WDL, N=10 among N=1000 runs on 2 cores, one measurement: handler time p99 2.6 -> 1.8 ms).
Heavy runs stay on their pools, which bound how many run at once; with no heavy run in
flight, every run takes its lane's pool. So while heavy runs come, the reserved lane's pool
mostly idles: what protects light requests is that heavy work is held to K-1 lanes' threads,
which leaves the light ones a core's worth of CPU (and no queue to wait in). That headroom
is the price heavy throughput pays (WDL on 2 cores: 171 against 236 heavy req/s).

Policy `least_work`: every run goes to the lane with the least estimated work in flight.
Ties rotate. A lane holds at most `capacity` runs in flight (running or queued in its
inter-op pool); a run no open lane can take fails with RESOURCE_EXHAUSTED.

Thread-safety: `Dispatcher` keeps its state under one lock held for a few microseconds per
run; `LaneGroup.run` is called from any number of threads.
"""

from __future__ import annotations

import collections
import logging
import math
import operator
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import tensorflow as tf

from tfrec.base.affinity import format_cpus
from tfrec.base.errors import ResourceExhausted, from_tf_error
from tfrec.runtime.runner import Runner
from tfrec.runtime.session_group import GroupOptions, SessionGroup
from tfrec.schedule.costmodel import rows_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from tensorflow.core.protobuf import config_pb2

    from tfrec.base.metrics import Metrics
    from tfrec.schedule.scheduled import Scheduler

log = logging.getLogger(__name__)

POLICIES = ("reserve", "least_work")
HEAVY_RATIO = 4.0
HEAVY_FLOOR_S = 1e-3
REFERENCE_TAU_S = 10.0  # the reference (cheapest recent run) rises by e per this many seconds
_CLASS_RUNS = 16  # runs per size class the cost fit takes the fastest of
_DEFAULT_ROW_S = 10e-6  # cost per row before a signature's first measured run
Key = tuple[tuple[str, ...], tuple[str, ...]]
_seconds = operator.itemgetter(1)


class Cost:
    """`seconds ~ a + b * rows` for one feeds/fetches key, fitted by least squares over size
    classes (rows rounded to powers of two), one point each: the fastest of the class's last
    `_CLASS_RUNS` runs. The fastest, because noise only ever adds time (a busy neighbour, a
    descheduled thread); one point per class, so that a flood of light runs never washes out
    what a heavy one costs."""

    __slots__ = ("_classes", "_points", "a", "b")

    def __init__(self) -> None:
        self.a, self.b = 0.0, _DEFAULT_ROW_S
        self._classes: dict[int, collections.deque[tuple[int, float]]] = {}
        self._points: dict[int, tuple[int, float]] = {}  # class -> its fastest recent run

    def estimate(self, rows: int) -> float:
        return self.a + self.b * rows

    def observe(self, rows: int, seconds: float) -> None:
        """Adds a run; refits only when its class's fastest run changed (most runs do not
        change it: the fit then costs nothing on the request path)."""
        size = rows.bit_length()
        runs = self._classes.get(size)
        if runs is None:
            runs = self._classes[size] = collections.deque(maxlen=_CLASS_RUNS)
        runs.append((rows, seconds))
        point = min(runs, key=_seconds)
        if self._points.get(size) == point:
            return
        self._points[size] = point
        self._fit(list(self._points.values()))

    def _fit(self, points: list[tuple[int, float]]) -> None:
        n = len(points)
        mx = sum(r for r, _ in points) / n
        my = sum(t for _, t in points) / n
        var = sum((r - mx) ** 2 for r, _ in points)
        if n > 1 and var > 0:
            b = sum((r - mx) * (t - my) for r, t in points) / var
            a = my - b * mx
            if a >= 0 and b >= 0:
                self.a, self.b = a, b
                return
            if b < 0:  # costs that fall with size: treat them as fixed
                self.a, self.b = my, 0.0
                return
        self.a, self.b = 0.0, my / max(mx, 1.0)  # one size seen, or a negative intercept


class Ticket(NamedTuple):  # a tuple: built on every run, cheaper than a frozen dataclass
    lane: int
    cost: float
    heavy: bool
    inline: bool  # run on the calling thread (a light run while heavy ones are in flight)
    mark: int  # the lane's start count after this run started, if it started alone; else -1


class Dispatcher:
    """Lane choice, in-flight accounting and cost estimates of one SessionGroup."""

    def __init__(
        self,
        lanes: int,
        capacity: int,
        policy: str = "reserve",
        label: str = "",
        observer: LaneMetrics | None = None,
        inline_light: bool = False,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.lanes = lanes
        self.capacity = capacity
        self.reserve = policy == "reserve" and lanes > 1
        self.inline_light = inline_light and self.reserve
        self._label = label
        self._observer = observer
        self._lock = threading.Lock()
        self.in_flight = [0] * lanes
        self.work = [0.0] * lanes
        self.heavy = [0] * lanes
        self._starts = [0] * lanes
        self._next = 0
        self._costs: dict[Key, Cost] = {}
        self._reference: tuple[Key, int] | None = None  # the cheapest recent run (module doc)
        self._reference_at = time.monotonic()
        self.threshold = float("inf")  # heavy from this estimated cost on

    def estimate(self, key: Key, rows: int) -> float:
        cost = self._costs.get(key)
        return cost.estimate(rows) if cost is not None else _DEFAULT_ROW_S * rows

    def acquire(self, key: Key, rows: int) -> Ticket:
        """Picks the lane for a run and counts it in flight; raises ResourceExhausted."""
        with self._lock:
            cost = self.estimate(key, rows)
            now = time.monotonic()
            reference = self._reference_cost(now)
            if cost <= reference:
                self._reference, self._reference_at, reference = (key, rows), now, cost
            self.threshold = max(HEAVY_FLOOR_S, HEAVY_RATIO * reference)
            heavy = self.reserve and cost >= self.threshold
            lane = self._choose(heavy)
            if lane < 0:
                raise self._full(heavy, cost)
            alone = self.in_flight[lane] == 0
            inline = self.inline_light and not heavy and any(self.heavy)
            self.in_flight[lane] += 1
            self.work[lane] += cost
            self.heavy[lane] += heavy
            self._starts[lane] += 1
            ticket = Ticket(lane, cost, heavy, inline, self._starts[lane] if alone else -1)
        if self._observer is not None:
            self._observer.started(lane, cost, heavy)
        return ticket

    def _reference_cost(self, now: float) -> float:
        """The reference run priced with its key's current fit, aged since it was seen."""
        if self._reference is None:
            return math.inf
        growth = min(50.0, (now - self._reference_at) / REFERENCE_TAU_S)  # no overflow
        return self.estimate(*self._reference) * math.exp(growth)

    def _choose(self, heavy: bool) -> int:
        lanes, start = self.lanes, self._next
        order = [(start + j) % lanes for j in range(lanes)]
        open_ = [k for k in order if self.in_flight[k] < self.capacity]
        if self.reserve:
            clear = [k for k in open_ if self.heavy[k] == 0]
            if heavy:
                free = sum(1 for h in self.heavy if h == 0)
                open_ = [k for k in open_ if self.heavy[k] > 0 or free > 1]
            elif clear:
                open_ = clear
        if not open_:
            return -1
        lane = min(open_, key=lambda k: self.work[k])  # first of the rotation on ties
        self._next = (lane + 1) % lanes
        return lane

    def _full(self, heavy: bool, cost: float) -> ResourceExhausted:
        if self._observer is not None:
            self._observer.rejected()
        if heavy and any(n < self.capacity for n in self.in_flight):
            return ResourceExhausted(
                f"{self._label}: every lane open to heavy requests (this one is estimated at "
                f"{cost * 1e3:.1f} ms) holds {self.capacity} requests in flight; one lane is "
                "kept free of heavy work for light requests. Retry later or raise "
                "--session_group_queue_capacity"
            )
        return ResourceExhausted(
            f"{self._label}: all {self.lanes} lanes hold {self.capacity} requests in flight "
            "(--session_group_queue_capacity). Retry later"
        )

    def release(self, ticket: Ticket, key: Key, rows: int, seconds: float, ok: bool) -> None:
        """Counts the run out; a successful run that had its lane to itself refines the cost."""
        lane = ticket.lane
        with self._lock:
            solo = ticket.mark >= 0 and self._starts[lane] == ticket.mark
            self.in_flight[lane] -= 1
            self.work[lane] -= ticket.cost
            self.heavy[lane] -= ticket.heavy
            if ok and solo:
                self._costs.setdefault(key, Cost()).observe(rows, seconds)
        if self._observer is not None:
            self._observer.finished(lane, ticket.cost)


class LaneMetrics:
    """The lane series of one model version (children bound once: no lookups per run)."""

    def __init__(self, metrics: Metrics, model: str, version: int, group: SessionGroup) -> None:
        self._metrics, self._model, self._version = metrics, model, str(version)
        lanes = [str(lane.index) for lane in group.lanes]
        self._in_flight = [metrics.lane_in_flight.labels(model, k) for k in lanes]
        self._work = [metrics.lane_work_in_flight.labels(model, k) for k in lanes]
        self._requests = [
            (metrics.lane_requests.labels(model, k, "light"),
             metrics.lane_requests.labels(model, k, "heavy"))
            for k in lanes
        ]  # fmt: skip
        self._rejections = metrics.lane_rejections.labels(model)
        self._thread_labels = []
        for lane in group.lanes:
            for pool, tids in (("inter_op", lane.inter_tids), ("intra_op", lane.intra_tids)):
                labels = (model, self._version, str(lane.index), pool)
                metrics.lane_threads.labels(*labels).set(len(tids))
                self._thread_labels.append(labels)

    def started(self, lane: int, cost: float, heavy: bool) -> None:
        self._in_flight[lane].inc()
        self._work[lane].inc(cost * 1e6)
        self._requests[lane][heavy].inc()

    def finished(self, lane: int, cost: float) -> None:
        self._in_flight[lane].dec()
        self._work[lane].dec(cost * 1e6)

    def rejected(self) -> None:
        self._rejections.inc()

    def close(self) -> None:
        for labels in self._thread_labels:
            self._metrics.lane_threads.remove(*labels)


class LaneGroup:
    """A model version's SessionGroup with its dispatcher: what `Servable` runs through."""

    def __init__(
        self, group: SessionGroup, dispatcher: Dispatcher, metrics: LaneMetrics | None, label: str
    ) -> None:
        self.group = group
        self.dispatcher = dispatcher
        self._metrics = metrics
        self._label = label
        self._runners: dict[Key, list[Runner]] = {}
        self._ran: set[tuple[Key, int]] = set()  # (key, lane) pairs that ran once
        self._lock = threading.Lock()
        # --scheduler: set by `Servable` (pool lanes only); each lane's runner is wrapped.
        self.scheduler: Scheduler | None = None
        self.signature_of: Callable[[Key], str] = lambda key: ",".join(key[1])

    @property
    def session(self) -> tf.compat.v1.Session:
        return self.group.session

    def run(self, key: Key, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs feeds `args` (for `key[0]`) fetching `key[1]` on the lane the dispatcher picks."""
        runners = self._runners.get(key) or self._create(key)
        rows = rows_of(args)
        ticket = self.dispatcher.acquire(key, rows)
        start = time.perf_counter()
        ok = False
        try:
            runner = runners[ticket.lane]
            results = runner.inline(*args) if ticket.inline else runner(*args)
            # A callable's first run builds kernels and caches: not a cost to learn from.
            ok = (key, ticket.lane) in self._ran or self._first_run(key, ticket.lane)
        except tf.errors.OpError as err:
            raise from_tf_error(err) from None
        finally:
            self.dispatcher.release(ticket, key, rows, time.perf_counter() - start, ok)
        return [np.asarray(r) for r in results]

    def _first_run(self, key: Key, lane: int) -> bool:
        self._ran.add((key, lane))
        return False

    def run_on(
        self, lane: int, key: Key, args: Sequence[np.ndarray], inline: bool = False
    ) -> list[np.ndarray]:
        """Runs on a given lane (on the calling thread with `inline`: what light runs take
        while heavy ones are in flight), outside the dispatcher (tests, checks)."""
        runner = (self._runners.get(key) or self._create(key))[lane]
        try:
            return [np.asarray(r) for r in (runner.inline if inline else runner)(*args)]
        except tf.errors.OpError as err:
            raise from_tf_error(err) from None

    def _create(self, key: Key) -> list[Runner]:
        """The key's runner on every lane (creating a callable optimises its graph and builds
        its executor; stateful graphs forbid running it ahead of a request)."""
        with self._lock:
            runners = self._runners.get(key)
            if runners is not None:
                return runners
            group, feeds, fetches = self.group, key[0], key[1]
            label = f"{self._label} fetching {','.join(fetches)}"
            try:
                runners = [
                    Runner(
                        group.session,
                        [group.tensor(lane, name) for name in feeds],
                        [group.tensor(lane, name) for name in fetches],
                        label=f"{label} on lane {lane}",
                        pool=lane,
                        inline=self.dispatcher.inline_light,
                    )
                    for lane in range(len(group.lanes))
                ]
            except tf.errors.OpError as err:
                raise from_tf_error(err) from None
            if self.scheduler is not None:  # pool lanes: every lane runs the same tensors
                signature = self.signature_of(key)
                for lane, runner in enumerate(runners):
                    self.scheduler.attach(runner, key, signature, pool=lane)
            self._runners[key] = runners
        return runners

    def close(self) -> None:
        with self._lock:
            self._runners.clear()
        if self._metrics is not None:
            self._metrics.close()
        self.group.close()


class Lanes:
    """What `Servable.load` needs to build lane groups: options, policy, the metrics."""

    def __init__(
        self,
        options: GroupOptions,
        *,
        capacity: int = 16,
        policy: str = "reserve",
        metrics: Metrics | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.options = options
        self.capacity = capacity
        self.policy = policy
        self.metrics = metrics
        # Light runs take the caller's thread while heavy ones run (module doc): only `reserve`
        # tells light from heavy, and pinned lanes keep to their threads.
        self.inline_light = policy == "reserve" and options.lanes > 1 and not options.cpusets

    def describe(self) -> str:
        o = self.options
        cpusets = ";".join(map(format_cpus, o.cpusets)) if o.cpusets else "not pinned"
        devices = "virtual GPUs" if o.gpu else ("logical CPU devices" if o.replicas else "none")
        light = "; light runs on the request's thread while heavy ones are in flight"
        return (
            f"{o.lanes} lanes per model version: inter-op {o.inter_op} and intra-op {o.intra_op} "
            f"threads per lane, lane devices: {devices}, CPU sets: {cpusets}, policy "
            f"{self.policy}, at most {self.capacity} runs in flight per lane"
            f"{light if self.inline_light else ''}"
        )

    def load(
        self,
        name: str,
        version: int,
        path: Path,
        tags: Sequence[str],
        base_config: config_pb2.ConfigProto,
    ) -> LaneGroup:
        """Loads one model version as a group; raises ServingError."""
        group = SessionGroup.load(path, tags, base_config, self.options)
        label = f"{name} v{version}"
        log.info("Session group of {name: %s version: %d}: %s", name, version, group.describe())
        try:
            metrics = None
            if self.metrics is not None:
                metrics = LaneMetrics(self.metrics, name, version, group)
            dispatcher = Dispatcher(
                len(group.lanes),
                self.capacity,
                self.policy,
                label,
                metrics,
                inline_light=self.inline_light,
            )
        except Exception:
            group.close()
            raise
        return LaneGroup(group, dispatcher, metrics, label)
