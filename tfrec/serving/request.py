"""The one internal Predict request every transport decodes its wire message into, and the
limits one request must stay within.

gRPC hands over its parsed `PredictRequest` fields (inputs stay TensorProtos until the core
decodes each one once, in signature order); REST hands over arrays parsed from JSON; warmup
replays hand over the logged TensorProtos. Classify, Regress and MultiInference requests are
TF-Serving's own messages (`tensorflow.serving.Input`), which need no internal twin.

`Budget` admits a request's inputs one by one against `Limits` before each is decoded: a
request past a limit is refused with RESOURCE_EXHAUSTED naming the input and the flag, and
nothing past the limit is ever allocated (its cost is read from the TensorProto's header:
`codecs.plan`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis.model_pb2 import ModelSpec

from tfrec.base import codecs
from tfrec.base.errors import ResourceExhausted
from tfrec.base.settings import Settings

_DEFAULTS = Settings()


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


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits (the flags of the same names; 0: no limit)."""

    max_request_bytes: int = _DEFAULTS.max_request_bytes
    max_request_rows: int = _DEFAULTS.max_request_rows
    max_structured_items: int = _DEFAULTS.max_structured_items

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_request_bytes, settings.max_request_rows, settings.max_structured_items
        )

    def check_examples(self, count: int, nbytes: int) -> None:
        """Classify/Regress/MultiInference: `count` serialized examples of `nbytes` decoded
        bytes in all (context copies included), before they are built."""
        limit = self.max_structured_items
        if limit and count > limit:
            raise ResourceExhausted(
                f"Input has {count} examples, more than --max_structured_items={limit}"
            )
        limit = self.max_request_bytes
        if limit and nbytes > limit:
            raise ResourceExhausted(
                f"Input's {count} serialized examples decode to {nbytes} bytes, more than "
                f"--max_request_bytes={limit}"
            )


def array_nbytes(array: np.ndarray) -> int:
    """What an input already decoded costs, by `codecs.plan`'s measure (the characters of
    strings aside: counting them would touch every element)."""
    if array.dtype.kind == "O":
        return array.size * (codecs.POINTER_BYTES + codecs.BYTES_OVERHEAD)
    return array.nbytes


class Budget:
    """One request's admission against Limits: each input is admitted before it is decoded."""

    __slots__ = ("limits", "used")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used = 0

    def admit(
        self, alias: str, shape: tuple[int, ...], nbytes: int, structured: str | None = None
    ) -> None:
        """Counts an input of `shape` decoding to `nbytes`; `structured` names the structured
        signature when the input is one of its per-item inputs (dim 0 is then N)."""
        limits = self.limits
        rows = shape[0] if shape else 1
        if limits.max_request_rows and rows > limits.max_request_rows:
            raise ResourceExhausted(
                f"Input '{alias}' has {rows} rows, more than "
                f"--max_request_rows={limits.max_request_rows}"
            )
        items = limits.max_structured_items
        if structured is not None and items and shape and rows > items:
            raise ResourceExhausted(
                f"Input '{alias}' has {rows} items (N of structured signature {structured}), "
                f"more than --max_structured_items={items}"
            )
        self.used += nbytes
        limit = limits.max_request_bytes
        if limit and self.used > limit:
            together = f", {self.used} with the inputs before it," if self.used > nbytes else ","
            raise ResourceExhausted(
                f"Input '{alias}' decodes to {nbytes} bytes{together} more than "
                f"--max_request_bytes={limit}"
            )
