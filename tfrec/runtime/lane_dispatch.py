"""Which lane of a SessionGroup takes each run: cost estimates, the policies, the accounting.

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
run; `LaneStage.run` is called from any number of threads.
"""

from __future__ import annotations

import collections
import math
import operator
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from tfrec.base.errors import ResourceExhausted
from tfrec.runtime.stage import Key

if TYPE_CHECKING:
    from tfrec.runtime.lanes import LaneMetrics

POLICIES = ("reserve", "least_work")
HEAVY_RATIO = 4.0
HEAVY_FLOOR_S = 1e-3
REFERENCE_TAU_S = 10.0  # the reference (cheapest recent run) rises by e per this many seconds
_CLASS_RUNS = 16  # runs per size class the cost fit takes the fastest of
_DEFAULT_ROW_S = 10e-6  # cost per row before a signature's first measured run
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
