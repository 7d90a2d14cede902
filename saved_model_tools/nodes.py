"""Building NodeDefs by hand: the few ops the rewriter adds (broadcasts, batch size, slices of
weights, sums), with every attr set, defaults included, so the GraphDef is complete as written.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, node_def_pb2
from tensorflow.python.framework import op_def_registry, tensor_util

INT32 = tf.int32.as_datatype_enum


def make(name: str, op: str, inputs: list[str], **attrs: object) -> node_def_pb2.NodeDef:
    """A NodeDef; attr values may be DType enums (pass `dtype=`/`T=` as tf.DType), ints, bools,
    bytes, lists of ints, TensorShapes or TensorProtos. Missing attrs get their defaults."""
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(attr(value))
    fill_defaults(node)
    return node


def attr(value: object) -> attr_value_pb2.AttrValue:
    if isinstance(value, tf.DType):
        return attr_value_pb2.AttrValue(type=value.as_datatype_enum)
    if isinstance(value, bool):
        return attr_value_pb2.AttrValue(b=value)
    if isinstance(value, int):
        return attr_value_pb2.AttrValue(i=value)
    if isinstance(value, bytes | str):
        return attr_value_pb2.AttrValue(s=value.encode() if isinstance(value, str) else value)
    if isinstance(value, tf.TensorShape):
        return attr_value_pb2.AttrValue(shape=value.as_proto())
    if isinstance(value, list):
        return attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(i=value))
    return attr_value_pb2.AttrValue(tensor=value)


def fill_defaults(node: node_def_pb2.NodeDef) -> None:
    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return
    for spec in op_def.attr:
        if spec.name not in node.attr and spec.HasField("default_value"):
            node.attr[spec.name].CopyFrom(spec.default_value)


def const(name: str, value: np.ndarray | int | list[int], dtype: tf.DType = tf.int32):
    array = np.asarray(value, dtype=dtype.as_numpy_dtype)
    return make(name, "Const", [], dtype=dtype, value=tensor_util.make_tensor_proto(array))


def placeholder(name: str, dtype: tf.DType, shape: tf.TensorShape) -> node_def_pb2.NodeDef:
    return make(name, "Placeholder", [], dtype=dtype, shape=shape)


def identity(name: str, source: str, dtype: tf.DType) -> node_def_pb2.NodeDef:
    return make(name, "Identity", [source], T=dtype)


def copy_node(node: node_def_pb2.NodeDef, name: str, inputs: list[str]) -> node_def_pb2.NodeDef:
    """A copy under a new name with new inputs, without colocation constraints (`_class`
    names nodes of the original graph)."""
    new = node_def_pb2.NodeDef()
    new.CopyFrom(node)
    new.name = name
    del new.input[:]
    new.input.extend(inputs)
    if "_class" in new.attr:
        del new.attr["_class"]
    return new
