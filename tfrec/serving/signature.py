"""A SignatureDef prepared for serving: sorted aliases, tensor names, decoded defaults."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef

from tfrec.base import codecs

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class Signature:
    """A SignatureDef prepared for serving: sorted aliases, tensor names, decoded defaults."""

    name: str
    definition: SignatureDef
    inputs: dict[str, str]  # alias -> feed tensor name, sorted by alias
    outputs: dict[str, str]  # alias -> fetch tensor name, sorted by alias
    defaults: dict[str, np.ndarray]

    @classmethod
    def of(cls, name: str, definition: SignatureDef) -> Signature:
        defaults = {}
        for alias, proto in definition.defaults.items():
            try:
                defaults[alias] = codecs.to_ndarray(proto)
            except codecs.TensorParseError:
                log.warning("Signature %s: default of input %s cannot be decoded", name, alias)
        return cls(
            name,
            definition,
            {a: definition.inputs[a].name for a in sorted(definition.inputs)},
            {a: definition.outputs[a].name for a in sorted(definition.outputs)},
            defaults,
        )

    @property
    def method_name(self) -> str:
        return self.definition.method_name
