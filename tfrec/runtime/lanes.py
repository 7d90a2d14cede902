"""Lanes: a model version's SessionGroup as a stage of its chain, and the lanes' metrics.

Every run that reaches this stage (a request, or a merged batch with `--enable_batching`) runs
on one lane: `tfrec.runtime.lane_dispatch` decides which (cost estimates, the `reserve` and
`least_work` policies, light runs on the caller's thread), the lane's Runners stage runs it on
the lane's inter-op pool and device. `tfrec.runtime.session_group` builds the group itself.

Thread-safety: `LaneStage.run` is called from any number of threads; the dispatcher keeps its
state under one lock held for a few microseconds per run.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfrec.base.affinity import format_cpus
from tfrec.runtime.lane_dispatch import HEAVY_FLOOR_S, POLICIES, Cost, Dispatcher, Ticket
from tfrec.runtime.runner import Runners
from tfrec.runtime.session_group import GroupOptions, SessionGroup
from tfrec.runtime.stage import Key, Run, rows_of

if TYPE_CHECKING:
    from tensorflow.core.protobuf import config_pb2

    from tfrec.base.metrics import Metrics
    from tfrec.schedule.scheduled import OpScheduler

__all__ = ["HEAVY_FLOOR_S", "POLICIES", "Cost", "Dispatcher", "LaneStage", "ServerLanes",
           "Ticket", "rows_of"]  # fmt: skip

log = logging.getLogger(__name__)


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


class LaneStage:
    """A model version's SessionGroup as a stage: the dispatcher picks a lane for each run, and
    the lane's own Runners stage (its inter-op pool, its device's tensors) runs it."""

    def __init__(
        self,
        group: SessionGroup,
        dispatcher: Dispatcher,
        lanes: Sequence[Runners],
        metrics: LaneMetrics | None,
    ) -> None:
        self.group = group
        self.dispatcher = dispatcher
        self._lanes = list(lanes)
        self._metrics = metrics
        self._ran: set[tuple[Key, int]] = set()  # (key, lane) pairs that ran once

    @property
    def session(self) -> tf.compat.v1.Session:
        return self.group.session

    def run(self, run: Run) -> list[np.ndarray]:
        """Runs on the lane the dispatcher picks; a lane's first run of a key is not learned
        from (a callable's first run builds kernels and caches)."""
        key, rows = run.key, run.rows
        ticket = self.dispatcher.acquire(key, rows)
        run.inline = ticket.inline
        start = time.perf_counter()
        ok = False
        try:
            results = self._lanes[ticket.lane].run(run)
            ok = (key, ticket.lane) in self._ran or self._first_run(key, ticket.lane)
        finally:
            self.dispatcher.release(ticket, key, rows, time.perf_counter() - start, ok)
        return results

    def _first_run(self, key: Key, lane: int) -> bool:
        self._ran.add((key, lane))
        return False

    def run_on(
        self, lane: int, key: Key, args: Sequence[np.ndarray], inline: bool = False
    ) -> list[np.ndarray]:
        """Runs on a given lane (on the calling thread with `inline`: what light runs take
        while heavy ones are in flight), outside the dispatcher (tests, checks)."""
        run = Run(key, args)
        run.inline = inline
        return self._lanes[lane].run(run)

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
        if self._metrics is not None:
            self._metrics.close()
        self.group.close()


class ServerLanes:
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
    ) -> SessionGroup:
        """Loads one model version as a group (one session); raises ServingError."""
        group = SessionGroup.load(path, tags, base_config, self.options)
        log.info("Session group of {name: %s version: %d}: %s", name, version, group.describe())
        return group

    def stage(
        self, group: SessionGroup, name: str, version: int, schedules: OpScheduler | None
    ) -> LaneStage:
        """The lanes stage of a loaded group: a Runners stage per lane, its dispatcher."""
        label = f"{name} v{version}"
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
        lanes = [
            Runners(
                group.session,
                label=label,
                pool=lane,
                inline=self.inline_light,
                tensor=functools.partial(group.tensor, lane),
                schedules=schedules,
            )
            for lane in range(len(group.lanes))
        ]
        return LaneStage(group, dispatcher, lanes, metrics)
