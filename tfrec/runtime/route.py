"""Structured dedup (`--structured_dedup=auto`), the first stage of a version with twins.

An unchanged client sends the flat form of a ranking request: every user input repeats one
row N times. When every user row equals row 0, the signature's structured twin (user inputs at
batch 1) gives the same outputs for a fraction of the work; the run descends as the twin's,
and the client still gets the outputs of the signature it called (same aliases, same order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from tfrec.runtime.stage import Run, Stage

if TYPE_CHECKING:
    from tfrec.base.metrics import Metrics
    from tfrec.serving.signature import Signature
    from tfrec.serving.structured import Twin


class Route:
    """Sends a flat Predict run to its structured twin when its user rows are all equal."""

    def __init__(
        self,
        below: Stage,
        twins: Mapping[str, tuple[Twin, Signature]],
        model: str,
        metrics: Metrics | None = None,
    ) -> None:
        """`twins`: original signature name -> (its twin, the twin's Signature), only those
        whose shared inputs the graph feeds with the same dtypes (checked once, at load)."""
        self._below = below
        self._twins = dict(twins)
        self._model = model
        self._metrics = metrics

    def run(self, run: Run) -> list[np.ndarray]:
        entry = self._twins.get(run.signature) if run.aliases else None
        if entry is None:
            return self._below.run(run)
        twin, target = entry
        routed = None
        if all(a in target.outputs for a in run.outputs):
            deduped = dedup(twin, dict(zip(run.aliases, run.args, strict=True)))
            if deduped is not None:
                aliases = tuple(sorted(deduped))
                key = (
                    tuple(target.inputs[a] for a in aliases),
                    tuple(target.outputs[a] for a in run.outputs),
                )
                routed = Run(key, [deduped[a] for a in aliases], target.name, aliases,
                             run.outputs, run.deadline)  # fmt: skip
        if self._metrics is not None:
            result = "miss" if routed is None else "hit"
            self._metrics.structured_dedup.labels(self._model, run.signature, result).inc()
        return self._below.run(run if routed is None else routed)

    def close(self) -> None:
        self._below.close()


def dedup(twin: Twin, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The twin's inputs for a flat request whose user rows all equal row 0, else None."""
    if set(arrays) != set(twin.user_inputs) | set(twin.item_inputs):
        return None
    shapes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(shapes) != 1 or shapes.pop() < 1:
        return None
    out = dict(arrays)
    for alias in twin.user_inputs:
        array = arrays[alias]
        first = array[:1]
        if array.shape[0] > 1 and not np.array_equal(
            array[1:], np.broadcast_to(first, array[1:].shape)
        ):
            return None
        out[alias] = first
    return out
