"""The operator scheduler's options, what a bucket's build produced, and what was decided."""

from __future__ import annotations

import dataclasses
from typing import Any

from tfrec.schedule import planner
from tfrec.schedule.costmodel import Trace

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

    plan: planner.Plan | None = None
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
    plan: planner.Plan | None = None
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
        self.graph: planner.Graph | None = None
        self.reason = ""  # set when the signature cannot be scheduled at all
        self.builds: dict[int, Build] = {}
