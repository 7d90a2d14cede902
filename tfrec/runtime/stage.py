"""The run that descends a model version's stages, and the interface every stage has.

A version's runtime is a chain of stages built once, at load, by constructors
(`tfrec.serving.loader`), each calling only the stage below it:

    route (structured dedup) -> [batch] -> [lanes] -> runner ([op schedule]) -> TensorFlow

A stage that is off is not in the chain. The serving core validates a request once and hands
the chain one `Run`: its feeds and fetches, the rows (computed once, here), the signature it
came from and the client's deadline. Results and errors travel back up as return values and
exceptions; no stage calls back up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tfrec.base.errors import DeadlineExceeded

Key = tuple[tuple[str, ...], tuple[str, ...]]  # (feed tensor names, fetch tensor names)


def rows_of(args: Sequence[np.ndarray]) -> int:
    """A run's size: the largest dim 0 among its feeds (structured requests: N, not 1)."""
    return max((a.shape[0] for a in args if a.ndim), default=1) or 1


def bucket_of(rows: int) -> int:
    """The power of two at or above `rows`: the bucket whose costs and modes a run uses."""
    return 1 << max(0, int(rows) - 1).bit_length()


class Run:
    """One session run on its way down: what every stage reads, computed once."""

    __slots__ = ("aliases", "args", "deadline", "inline", "key", "outputs", "rows", "signature")

    def __init__(
        self,
        key: Key,
        args: Sequence[np.ndarray],
        signature: str = "",
        aliases: tuple[str, ...] = (),
        outputs: tuple[str, ...] = (),
        deadline: float | None = None,
        rows: int | None = None,
    ) -> None:
        self.key = key
        self.args = list(args)  # the feeds, in key[0] order
        self.rows = rows_of(self.args) if rows is None else rows
        self.signature = signature  # the SignatureDef key these tensors come from ("" if none)
        self.aliases = aliases  # input alias of each feed (Predict), else ()
        self.outputs = outputs  # output alias of each fetch (Predict), else ()
        self.deadline = deadline  # time.monotonic() past which nobody waits for the result
        self.inline = False  # set by the lanes stage: run on the calling thread

    def check_deadline(self) -> None:
        """Raises DEADLINE_EXCEEDED once the client has given up: its work is dropped."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Dropped("Deadline exceeded before the model ran", WAITING)

    def timeout_ms(self) -> int | None:
        """What is left of the deadline, for TensorFlow's RunOptions.timeout_in_ms (>= 1)."""
        if self.deadline is None:
            return None
        return max(1, int((self.deadline - time.monotonic()) * 1e3))


WAITING, RUNNING = "waiting", "running"


class Dropped(DeadlineExceeded):
    """Work stopped because its client's deadline passed: while it waited (`WAITING`: for a
    worker, in a batch queue, before the session run) or in TensorFlow (`RUNNING`)."""

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


class Stage(Protocol):
    """One layer of a version's runtime. `run` is called from any number of threads."""

    def run(self, run: Run) -> list[np.ndarray]: ...

    def close(self) -> None: ...
