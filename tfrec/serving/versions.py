"""A model's versions as the Manager keeps them: states, harnesses, the unload policy."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from tfrec.base.errors import ServingError
from tfrec.serving import config as config_lib
from tfrec.serving.servable import Servable


class State(enum.IntEnum):
    """ModelVersionStatus.State, the numbers GetModelStatus reports."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: State
    error: ServingError | None = None


@dataclasses.dataclass(eq=False)
class _Version:
    """The harness of one model version."""

    version: int
    path: Path
    state: State = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    leases: int = 0
    aspired: bool = True


@dataclasses.dataclass(eq=False)
class _Model:
    name: str
    config: config_lib.ModelConfig | None
    versions: dict[int, _Version] = dataclasses.field(default_factory=dict)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def latest(self) -> _Version | None:
        best = None
        for harness in self.versions.values():
            if harness.state != State.AVAILABLE:
                continue
            if best is None or harness.version > best.version:
                best = harness
        return best


def _due_to(error: ServingError | None) -> str:
    return f" due to error: {error.code.name}: {error.message}" if error else ""


def unloadable(model: _Model) -> list[_Version]:
    """AvailabilityPreservingPolicy: the unaspired AVAILABLE versions that may go now."""
    aspired = [h for h in model.versions.values() if h.aspired]
    serving_aspired = any(h.state == State.AVAILABLE for h in aspired)
    unaspired = sorted(
        (h for h in model.versions.values() if not h.aspired and h.state == State.AVAILABLE),
        key=lambda h: h.version,
    )
    if not aspired or serving_aspired:
        return unaspired
    return unaspired[:-1]  # keep the highest one serving until an aspired one is ready
