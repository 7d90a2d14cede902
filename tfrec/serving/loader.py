"""The Loader: how every model version of the server is loaded, warmed up and settled.

Built once by the server's composition root from the flags; the Manager calls it (on its load
threads) for each version it aspires to, and only ever sees a version ready to serve:

1. load the SavedModel and build its stages (`Servable.load`);
2. replay its warmup requests (`--enable_model_warmup`) through the same handlers clients use;
3. settle the decisions warmup started (run modes, schedules);
4. count the attempt and its latency in TF-Serving's load metrics.

A failure at any step closes what was built and raises ServingError.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from tensorflow.core.protobuf import config_pb2

from tfrec.base.errors import ServingError
from tfrec.base.metrics import Metrics
from tfrec.runtime.batching import ServerBatching
from tfrec.runtime.lanes import ServerLanes
from tfrec.schedule.scheduled import ServerScheduling
from tfrec.serving.handlers import Handlers
from tfrec.serving.servable import Servable
from tfrec.serving.warmup import warm_up


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """What every version is loaded with (resolved from the flags); a feature off is None."""

    tags: Sequence[str]
    session_config: config_pb2.ConfigProto
    batching: ServerBatching | None = None
    lanes: ServerLanes | None = None
    run_mode: int | None = None  # tfrec.runtime.runner POOLED / INLINE; None times both
    scheduling: ServerScheduling | None = None
    dedup: bool = True
    warmup: bool = True
    warmup_iterations: int = 1


class Loader:
    """`loader(name, version, path)` -> a Servable ready to serve; thread-safe."""

    def __init__(self, options: LoadOptions, handlers: Handlers, metrics: Metrics) -> None:
        self.options = options
        self._handlers = handlers
        self._metrics = metrics

    def __call__(self, name: str, version: int, path: Path) -> Servable:
        o, started = self.options, time.perf_counter()
        try:
            servable = Servable.load(
                name,
                version,
                path,
                o.tags,
                o.session_config,
                batching=o.batching,
                lanes=o.lanes,
                run_mode=o.run_mode,
                scheduling=o.scheduling,
                dedup=o.dedup,
                metrics=self._metrics,
            )
        except ServingError:
            self._metrics.load_attempt_count.labels(str(path), "fail").inc()
            raise
        self._metrics.load_attempt_count.labels(str(path), "success").inc()
        self._metrics.load_latency.labels(str(path)).inc((time.perf_counter() - started) * 1e6)
        try:
            if o.warmup:
                warm_up(self._handlers, servable, o.warmup_iterations, self._metrics)
            servable.settle()  # the decisions warmup started: run modes, schedules
        except BaseException:
            servable.close()
            raise
        return servable
