"""Which signatures to convert, which of their inputs are per-user, and the refusals.

Each check that fails raises ConversionError with one line naming what is wrong.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from saved_model_tools.errors import ConversionError
from saved_model_tools.graphs import INIT_OP_SIGNATURE, Graph, tensor_ref

DEFAULT = "serving_default"
SUFFIX = "_structured"
EXAMPLE_METHODS = {"tensorflow/serving/classify", "tensorflow/serving/regress"}
PARSE_OPS = {
    "ParseExample",
    "ParseExampleV2",
    "ParseSingleExample",
    "ParseSequenceExample",
    "ParseSequenceExampleV2",
    "ParseSingleSequenceExample",
}
PASS_OPS = {"Identity", "IdentityN", "Reshape", "Squeeze", "ExpandDims", "StopGradient"}


@dataclasses.dataclass
class Target:
    """One signature to convert."""

    name: str
    signature: meta_graph_pb2.SignatureDef
    user: list[str]  # per-user input keys, in the order given
    item: list[str]  # the other input keys, sorted

    @property
    def twin(self) -> str:
        return self.name + SUFFIX

    @property
    def outputs(self) -> dict[str, tuple[str, int]]:
        return {k: tensor_ref(v.name) for k, v in sorted(self.signature.outputs.items())}

    @property
    def placeholders(self) -> dict[str, str]:
        return {k: tensor_ref(v.name)[0] for k, v in self.signature.inputs.items()}

    def shapes(self) -> dict[str, tf.TensorShape]:
        return {k: tf.TensorShape(v.tensor_shape) for k, v in self.signature.inputs.items()}

    def dtypes(self) -> dict[str, tf.DType]:
        return {k: tf.as_dtype(v.dtype) for k, v in self.signature.inputs.items()}


def candidates(meta: meta_graph_pb2.MetaGraphDef) -> list[str]:
    return [n for n in sorted(meta.signature_def) if n != INIT_OP_SIGNATURE]


def select(
    meta: meta_graph_pb2.MetaGraphDef,
    src: Path,
    user_inputs: list[str],
    names: list[str] | None,
) -> list[Target]:
    """The signatures to convert: `names`, or `serving_default`, or else every signature that
    has all the user inputs."""
    available = candidates(meta)
    if names is None:
        if DEFAULT in available:
            names = [DEFAULT]
        else:
            names = [n for n in available if set(user_inputs) <= set(meta.signature_def[n].inputs)]
            if not names:
                raise ConversionError(
                    f"no signature of {src} has all of {', '.join(user_inputs)}; "
                    f"signatures: {', '.join(available) or 'none'}"
                )
    targets = []
    for name in names:
        if name not in available:
            raise ConversionError(
                f"signature {name!r} does not exist in {src}; it has: {', '.join(available)}"
            )
        if name + SUFFIX in meta.signature_def:
            raise ConversionError(f"{src} already has signature {name + SUFFIX}")
        targets.append(_target(name, meta.signature_def[name], user_inputs))
    return targets


def _target(name: str, sig: meta_graph_pb2.SignatureDef, user_inputs: list[str]) -> Target:
    keys = sorted(sig.inputs)
    for key in user_inputs:
        if key not in sig.inputs:
            raise ConversionError(
                f"unknown input {key!r} for signature {name!r}; its inputs are: {', '.join(keys)}"
            )
    if sig.method_name in EXAMPLE_METHODS:
        raise _examples(name, f"it is a {sig.method_name.rsplit('/', 1)[-1]} signature")
    for key, info in sig.inputs.items():
        if info.WhichOneof("encoding") != "name":
            raise ConversionError(
                f"signature {name!r}: input {key!r} is sparse or composite; "
                "only dense inputs can be split into user and item parts"
            )
        if tensor_ref(info.name)[1] != 0:
            raise ConversionError(f"signature {name!r}: input {key!r} is not an op's first output")
        rank = tf.TensorShape(info.tensor_shape).rank
        if rank is None or rank == 0:
            what = "has unknown rank" if rank is None else "is a scalar"
            raise ConversionError(
                f"signature {name!r}: input {key!r} {what}; per-user and "
                "per-item inputs need a batch dimension"
            )
    item = [k for k in keys if k not in user_inputs]
    return Target(name, sig, list(user_inputs), item)


def check_graph(target: Target, graph: Graph) -> None:
    """Refusals that need the flat graph: tf.Example inputs, user inputs nothing consumes."""
    for key, node in target.placeholders.items():
        parser = _parser_of(graph, node)
        if parser is not None:
            raise _examples(target.name, f"input {key!r} feeds {parser}")
    if not target.item:
        raise ConversionError(
            f"signature {target.name!r}: every input is per-user; at least "
            "one per-item input is needed (its rows are the N candidates)"
        )
    for key in target.user:
        node = target.placeholders[key]
        if node not in graph.nodes or not graph.consumers[node]:
            raise ConversionError(
                f"signature {target.name!r}: no output depends on user input {key!r}"
            )


def _parser_of(graph: Graph, node: str) -> str | None:
    stack, seen = [node], set()
    while stack:
        name = stack.pop()
        if name in seen or name not in graph.nodes:
            continue
        seen.add(name)
        for consumer in graph.consumers[name]:
            if graph.op(consumer) in PARSE_OPS:
                return graph.op(consumer)
            if graph.op(consumer) in PASS_OPS:
                stack.append(consumer)
    return None


def _examples(name: str, why: str) -> ConversionError:
    return ConversionError(
        f"signature {name!r} takes serialized tf.Example inputs ({why}): user and item "
        "features inside each example are out of scope; export a signature with one input "
        "per feature"
    )
