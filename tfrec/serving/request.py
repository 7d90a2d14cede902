"""The one internal Predict request every transport decodes its wire message into.

gRPC hands over its parsed `PredictRequest` fields (inputs stay TensorProtos until the core
decodes each one once, in signature order); REST hands over arrays parsed from JSON; warmup
replays hand over the logged TensorProtos. Classify, Regress and MultiInference requests are
TF-Serving's own messages (`tensorflow.serving.Input`), which need no internal twin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis.model_pb2 import ModelSpec

from tfrec.base import codecs


@dataclasses.dataclass(slots=True)
class Request:
    """A Predict: which model, the inputs by alias, which outputs, until when."""

    spec: ModelSpec | None
    inputs: Mapping[str, tensor_pb2.TensorProto | np.ndarray | Any]
    output_filter: Sequence[str] = ()
    deadline: float | None = None  # time.monotonic() past which the client has gone

    @staticmethod
    def decode(value: Any) -> np.ndarray:
        """One input as an array: a TensorProto by TF's FromProto rules, else as given.

        Raises codecs.TensorParseError (the core names the alias)."""
        if isinstance(value, tensor_pb2.TensorProto):
            return codecs.to_ndarray(value)
        return np.asarray(value)
