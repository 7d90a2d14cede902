"""Propose the per-user inputs from sample flat requests (`--infer-user-inputs`).

A sample file is a TFRecord of `tensorflow.serving.PredictionLog`, TF-Serving's warmup format.
In a flat ranking request every per-user input repeats one row N times, and per-item inputs
vary across the N candidates. The proposal: the inputs whose rows repeat within every request
that has at least two rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from saved_model_tools.errors import ConversionError
from saved_model_tools.requests import Arrays, read_samples


def propose(
    path: Path, meta: meta_graph_pb2.MetaGraphDef, signature: str
) -> tuple[list[str], list[Arrays]]:
    """The proposed user inputs (in signature key order), and the samples read."""
    if not Path(path).is_file():
        raise ConversionError(f"sample requests {path} do not exist")
    try:
        samples = read_samples(Path(path), signature)
    except Exception as err:  # a corrupt record or not a TFRecord at all
        raise ConversionError(f"cannot read sample requests from {path}: {err}") from err
    keys = sorted(meta.signature_def[signature].inputs)
    informative = [s for s in samples if max((_rows(v) for v in s.values()), default=0) >= 2]
    if not informative:
        raise ConversionError(
            f"{path} holds no request to {signature} with two or more rows: nothing to infer from"
        )
    return [k for k in keys if all(_repeats(s.get(k)) for s in informative)], samples


def _rows(value: np.ndarray) -> int:
    return value.shape[0] if value.ndim else 0


def _repeats(value: np.ndarray | None) -> bool:
    if value is None or value.ndim == 0 or value.shape[0] < 2:
        return False
    return bool(np.array_equal(value, np.broadcast_to(value[:1], value.shape)))
