"""String inputs fed as their serialized TensorProto: no Python object per element.

Decoding a DT_STRING TensorProto into a numpy object array makes one `bytes` per element (51k
for a 1000-row request with a 50-id history), and feeding it converts every element back into
a TF_STRING. Instead, `rewrite_graph` turns each string signature-input `Placeholder` X, at load
time, into `PlaceholderWithDefault(Reshape(DecodeProtoV2(proto).string_val, DecodeRaw(dims)))`
with X's name, dtype, shape and attrs, fed from one new `X/tfrec_wire` (DT_STRING [2]: the
serialized TensorProto and its dims as little-endian int64):

- feeding X with an array works as before: the fed value replaces X's output. (A fed node
  with control out-edges still runs, though: TensorFlow redirects them only for Placeholders,
  and Grappler's inlining of a TF2 StatefulPartitionedCall adds one from every input. So the
  wire defaults to a scalar "" for X to compute from then: ~3 us; unfed, X is that scalar.)
- feeding `X/tfrec_wire` with `wire_value(proto)` makes TensorFlow copy `string_val` straight
  into the tensor's strings, in C++.

Why DecodeProtoV2 and not `ParseTensor` (`Tensor::FromProto`, TF-Serving's own decode):
ParseTensor first parses a C++ TensorProto, one heap string per element, and measured no faster
than the Python decode; DecodeProtoV2 writes each value into its tstring (1.7x faster end to end
on 1000x50 ids). Only DT_STRING gains: numeric typed fields decode in microseconds already
(`np.array` over upb's buffer) and re-serializing them costs more, so numeric inputs stay.

`wire_value` checks the proto in O(rank), touching no element. It raises `WireMismatch` where
the caller must take the ordinary `codecs.to_ndarray` path (another dtype, string
`tensor_content`, no elements, fewer values than elements, which FromProto pads with the last
one, or more, which it ignores), and `codecs.TensorParseError` where the request is refused
(bad shape, or over 2**31-1 bytes decoded, counting sizeof(tstring) per element).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from tfrec.base import codecs
from tfrec.base.codecs import TensorParseError

WIRE_SUFFIX = "tfrec_wire"
TSTRING_BYTES = 24  # sizeof(tstring): allocated per DT_STRING element before any character
_MAX_ELEMENTS = codecs.MAX_TENSOR_BYTES // TSTRING_BYTES
_INIT_OP_SIGNATURE = "__saved_model_init_op"
_SCALAR_SHAPE_VERSION = 22
# Fewer strings than this decode faster in Python than the graph's parse ops run (each op a
# few microseconds on the executor): measured on the zoo's WDL, 2,000 strings over two inputs
# ran 0.2 ms slower on the wire; the 50,000-string history of `strings` 1.3 ms faster.
MIN_STRINGS = 4096


class WireMismatch(ValueError):
    """Not for the wire path: decode the proto the ordinary way (which also words errors)."""


@functools.cache
def _template() -> graph_pb2.GraphDef:
    """The decoding subgraph: `w` is the wire (defaulting to a scalar ""), `reshape` X's input."""
    graph = tf.Graph()
    with graph.as_default():
        default = tf.constant([b"", b""], name="default")
        wire = tf.compat.v1.placeholder_with_default(default, [2], name="w")
        proto, shape = tf.unstack(wire, 2, name="unpack")
        _, (values,) = tf.io.decode_proto(
            proto, "tensorflow.TensorProto", ["string_val"], [tf.string], name="decode"
        )
        tf.reshape(values, tf.io.decode_raw(shape, tf.int64, name="shape"), name="reshape")
    return graph.as_graph_def()


def _is_cpu(device: str) -> bool:
    return tf.DeviceSpec.from_string(device).device_type in (None, "CPU")


def rewrite_graph(graph_def: graph_pb2.GraphDef, feeds: Iterable[str]) -> dict[str, str]:
    """Rewrites, in place, each feed `op:0` whose op is a DT_STRING Placeholder.

    Returns {feed tensor name: wire placeholder tensor name} for the nodes rewritten.
    """
    nodes = {node.name: node for node in graph_def.node}
    mapping: dict[str, str] = {}
    # GraphDefs up to version 21 read a Placeholder's empty `shape` as unknown, not scalar.
    legacy = graph_def.versions.producer < _SCALAR_SHAPE_VERSION
    for feed in feeds:
        op, _, index = feed.partition(":")
        node = nodes.get(op)
        if node is None or node.op != "Placeholder" or index not in ("", "0"):
            continue
        if node.attr["dtype"].type != types_pb2.DT_STRING:
            continue
        prefix = f"{op}/{WIRE_SUFFIX}"
        if any(name == prefix or name.startswith(prefix + "/") for name in nodes):
            continue  # taken (or already rewritten): left alone
        for template in _template().node:
            copy = graph_def.node.add()
            copy.CopyFrom(template)
            copy.name = prefix if template.name == "w" else f"{prefix}/{template.name}"
            del copy.input[:]
            copy.input.extend(prefix if i == "w" else f"{prefix}/{i}" for i in template.input)
            copy.device = node.device if _is_cpu(node.device) else ""  # string ops: CPU only
            nodes[copy.name] = copy
        node.op = "PlaceholderWithDefault"
        missing = "shape" not in node.attr  # optional on Placeholder, required here
        shape = node.attr["shape"].shape
        if missing or (legacy and not shape.dim and not shape.unknown_rank):
            shape.unknown_rank = True
        node.input.insert(0, f"{prefix}/reshape")  # data inputs precede control inputs
        mapping[f"{op}:0"] = f"{prefix}:0"
    return mapping


def signature_feeds(meta_graph: meta_graph_pb2.MetaGraphDef) -> list[str]:
    """The dense input tensor names of every served signature, sorted."""
    return sorted(
        {
            info.name
            for key, signature in meta_graph.signature_def.items()
            if key != _INIT_OP_SIGNATURE
            for info in signature.inputs.values()
            if info.WhichOneof("encoding") == "name"
        }
    )


def rewrite_meta_graph(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, str]:
    """`rewrite_graph` over the meta graph's signature inputs: call it before `load_graph`."""
    return rewrite_graph(meta_graph.graph_def, signature_feeds(meta_graph))


def load_with_wire(
    session: tf.compat.v1.Session, path: str, tags: Iterable[str]
) -> tuple[meta_graph_pb2.MetaGraphDef, dict[str, str]]:
    """`tf.compat.v1.saved_model.loader.load`, with the string signature inputs rewritten.

    The loader keeps the parsed SavedModel: `get_meta_graph_def_from_tags` returns the very
    MetaGraphDef that `load_graph` imports, so rewriting it first is the whole hook.
    """
    tags = list(tags)
    loader = loader_impl.SavedModelLoader(str(path))
    meta_graph = loader.get_meta_graph_def_from_tags(tags)
    mapping = rewrite_meta_graph(meta_graph)
    with session.graph.as_default():
        saver, _ = loader.load_graph(session.graph, tags)
        loader.restore_variables(session, saver)
        loader.run_init_ops(session, tags)
    return meta_graph, mapping


def wire_value(proto: tensor_pb2.TensorProto, expected_dtype_enum: int) -> np.ndarray:
    """What to feed the wire placeholder: [serialized proto, dims as little-endian int64]."""
    if expected_dtype_enum != types_pb2.DT_STRING or proto.dtype != expected_dtype_enum:
        raise WireMismatch(f"dtype {proto.dtype}, expected {expected_dtype_enum}")
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise TensorParseError("tensor shape has unknown rank")
    if len(shape.dim) > codecs.MAX_RANK:
        raise TensorParseError(f"tensor rank {len(shape.dim)} exceeds {codecs.MAX_RANK}")
    dims = [dim.size for dim in shape.dim]
    n = 1
    for size in dims:
        if size < 0:
            raise TensorParseError(f"tensor shape has a negative dimension {size}")
        n *= size
        if n > _MAX_ELEMENTS:
            raise TensorParseError(f"shape {dims} exceeds {codecs.MAX_TENSOR_BYTES} bytes")
    if proto.tensor_content:
        raise WireMismatch("string tensor_content")
    values = proto.string_val
    count = len(values)
    if 0 < count < n and n * TSTRING_BYTES + (n - count) * len(values[-1]) > (
        codecs.MAX_TENSOR_BYTES
    ):  # padding copies the last string n - count times
        raise TensorParseError(f"padding {n - count} strings exceeds the size limit")
    if count != n or n == 0:  # (DecodeProtoV2 returns at least one value)
        raise WireMismatch(f"{count} values for {n} elements")
    out = np.empty(2, dtype=object)
    out[0] = proto.SerializeToString()
    out[1] = np.array(dims, dtype="<i8").tobytes()
    return out
