"""A model's versions as the Manager keeps them: states, harnesses, the unload policy."""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tfrec.base.errors import Code, ServingError
from tfrec.serving import config as config_lib
from tfrec.serving.servable import Servable

log = logging.getLogger(__name__)


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


def wait_available(
    cond: threading.Condition,
    models: dict[str, _Model],
    names: list[str],
    noun: str,
    deadline: float | None,
    stopped: Callable[[], bool],
) -> None:
    """Waits like ServableStateMonitor for Latest(name): until each model's highest aspired
    version is AVAILABLE (success) or END (failure). No version yet means keep waiting, until
    `deadline` (time.monotonic()) or `stopped()` (the caller has gone, the server stops).
    `cond` guards `models` and is notified on every state change."""
    last_log = time.monotonic()
    with cond:
        while True:
            failed: list[tuple[str, _Version]] = []
            pending = []
            for name in names:
                aspired = [h for h in models[name].versions.values() if h.aspired]
                latest = max(aspired, key=lambda h: h.version, default=None)
                if latest is None or latest.state < State.AVAILABLE:
                    pending.append(name)
                elif latest.state != State.AVAILABLE:
                    failed.append((name, latest))
            if not pending:
                break
            if stopped():
                raise ServingError("Stopped while waiting for models to load", Code.CANCELLED)
            if deadline is not None and time.monotonic() >= deadline:
                raise ServingError(
                    f"Timed out waiting for models to become available: {pending}",
                    Code.DEADLINE_EXCEEDED,
                )
            if time.monotonic() - last_log > 10:
                log.info("Still waiting for models to become available: %s", pending)
                last_log = time.monotonic()
            cond.wait(0.2)
    if failed:
        parts = "".join(
            f"{{{{name: {name} version: {h.version}}}{_due_to(h.error)}}}, " for name, h in failed
        )
        raise ServingError(f"{len(failed)} {noun} did not become available: {{{parts}}}")
