"""tfrec.wire: string inputs fed as serialized TensorProtos, on real TensorFlow.

A TF1 SavedModel and a TF2 `tf.Module` export are loaded twice, by the stock TF1 loader and by
`wire.load_with_wire`; fed by original names the two must agree, and fed through the wire
placeholders they must produce exactly the arrays `codecs.to_ndarray` would have fed.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.framework.tensor_pb2 import TensorProto

from tfrec.base import codecs, wire
from tfrec.base.codecs import TensorParseError

tf1 = tf.compat.v1
S = types_pb2.DT_STRING
IDS = np.array([[b"a", b"bb", b""], [b"\x00x\xff", b"y" * 40, b"z\x00"]], dtype=object)
FETCHES = ["hashed:0", "lengths:0", "ids:0", "q:0"]


def _tf1_graph() -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        ids = tf1.placeholder(tf.string, [None, 3], name="ids")
        offset = tf1.placeholder(tf.int64, [None], name="offset")
        q = tf1.placeholder(tf.string, None, name="q")  # any shape
        table = tf1.get_variable("table", [50], tf.int64, tf1.random_uniform_initializer(0, 99))
        bucket = tf.strings.to_hash_bucket_fast(ids, 50)
        tf.add(tf.gather(table, bucket), offset[:, None], name="hashed")
        tf.strings.length(q, name="lengths")
        tf.identity(ids, name="alias")
    return graph


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, dict]]:
    """(stock-loaded session, wire-loaded session, mapping) over one TF1 SavedModel."""
    path = tmp_path_factory.mktemp("tf1") / "model"
    graph = _tf1_graph()
    with tf1.Session(graph=graph) as session:
        session.run(tf1.global_variables_initializer())
        t = graph.get_tensor_by_name
        inputs = {k: t(f"{k}:0") for k in ("ids", "offset", "q")}
        inputs["via_alias"] = t("alias:0")  # a feed that is not a Placeholder: left alone
        outputs = {k: t(f"{k}:0") for k in ("hashed", "lengths")}
        tf1.saved_model.simple_save(session, str(path), inputs, outputs)
    stock = tf1.Session(graph=tf.Graph())
    tf1.saved_model.loader.load(stock, ["serve"], str(path))
    rewritten = tf1.Session(graph=tf.Graph())
    _, mapping = wire.load_with_wire(rewritten, str(path), ["serve"])
    yield stock, rewritten, mapping
    stock.close()
    rewritten.close()


def _feeds(q: np.ndarray) -> dict[str, np.ndarray]:
    return {"ids:0": IDS, "offset:0": np.array([5, 7], np.int64), "q:0": q}


def _wired(mapping: dict[str, str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same feeds, string arrays sent as TensorProtos through their wires when they may."""
    out = {}
    for name, array in feeds.items():
        try:
            out[mapping[name]] = wire.wire_value(codecs.from_ndarray(array), S)
        except (KeyError, wire.WireMismatch):  # the caller's fallback: the array, by name
            out[name] = array
    return out


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(map(np.asarray, a), map(np.asarray, b), strict=True):
        assert x.shape == y.shape and x.tolist() == y.tolist()
        assert x.dtype == y.dtype or {x.dtype.kind, y.dtype.kind} <= {"O", "S"}  # a scalar: bytes


def test_only_string_placeholders_are_rewritten(sessions: tuple[Any, Any, dict]) -> None:
    _, rewritten, mapping = sessions
    assert mapping == {"ids:0": "ids/tfrec_wire:0", "q:0": "q/tfrec_wire:0"}
    op = rewritten.graph.get_operation_by_name
    assert op("ids").type == "PlaceholderWithDefault" and op("q").type == "PlaceholderWithDefault"
    assert op("offset").type == "Placeholder" and op("alias").type == "Identity"
    assert op("ids").outputs[0].shape.as_list() == [None, 3]  # static shape kept


Q_VALUES = [
    np.array(b"", dtype=object),  # a scalar
    np.array([b"tail\x00\x00"], dtype=object),  # trailing NULs survive (np.bytes_ would not)
    np.array([[[b"a", "é".encode()]], [[b"x" * 1000, b"b"]]], dtype=object),  # rank 3
    np.empty((0, 4), dtype=object),  # no elements: fed as an array, next to the ids' wire
]


@pytest.mark.parametrize("q", Q_VALUES, ids=["scalar", "nul", "rank3", "empty"])
def test_wire_feeds_match_array_feeds(sessions: tuple[Any, Any, dict], q: np.ndarray) -> None:
    stock, rewritten, mapping = sessions
    feeds = _feeds(q)
    expected = stock.run(FETCHES, feeds)
    _same(rewritten.run(FETCHES, feeds), expected)  # by original names: unchanged
    _same(rewritten.run(FETCHES, _wired(mapping, feeds)), expected)
    assert np.asarray(rewritten.run("q:0", _wired(mapping, feeds))).tolist() == q.tolist()


def test_rewrite_graph_edge_cases() -> None:
    graph = tf.Graph()
    with graph.as_default():
        gate = tf.constant(1, name="gate")
        with tf.control_dependencies([gate]):
            x = tf1.placeholder(tf.string, [2], name="x")  # a control input
        tf.strings.join([x, x], name="joined")
    graph_def = graph.as_graph_def()
    next(n for n in graph_def.node if n.name == "x").attr.pop("shape")  # optional on Placeholder
    assert wire.rewrite_graph(graph_def, ["x", "gate:0", "joined:0", "missing:0"]) == {
        "x:0": "x/tfrec_wire:0"
    }
    assert wire.rewrite_graph(graph_def, ["x:0"]) == {}  # already rewritten: left alone
    with tf.Graph().as_default() as imported:
        tf.graph_util.import_graph_def(graph_def, name="")
    assert imported.get_operation_by_name("x").control_inputs[0].name == "gate"
    value = wire.wire_value(codecs.from_ndarray(np.array([b"p", b"q"], dtype=object)), S)
    with tf1.Session(graph=imported) as session:
        assert session.run("joined:0", {"x/tfrec_wire:0": value}).tolist() == [b"pp", b"qq"]


def _proto(dims: list[int], values: tuple[bytes, ...] = (), dtype: int = S) -> TensorProto:
    proto = TensorProto(dtype=dtype)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    proto.string_val.extend(values)
    return proto


def _unknown_rank() -> TensorProto:
    proto = _proto([])
    proto.tensor_shape.unknown_rank = True
    return proto


GUARDS = {
    "huge dims, no values": (_proto([2**30]), TensorParseError),
    "huge product": (_proto([2**20, 2**20, 2**20]), TensorParseError),
    "negative dim": (_proto([2, -1]), TensorParseError),
    "unknown rank": (_unknown_rank(), TensorParseError),
    "rank 255": (_proto([1] * 255, (b"a",)), TensorParseError),
    "padding bomb": (_proto([2**20], (b"x" * 4096,)), TensorParseError),
    "more values than elements": (_proto([1], (b"a", b"b")), wire.WireMismatch),
    "fewer values (padding)": (_proto([3], (b"a",)), wire.WireMismatch),
    "no elements": (_proto([0, 4]), wire.WireMismatch),
    "wrong dtype": (_proto([1], dtype=types_pb2.DT_INT64), wire.WireMismatch),
    "string tensor_content": (
        TensorProto(dtype=S, tensor_content=b"\x01a", tensor_shape=codecs.shape_proto([1])),
        wire.WireMismatch,
    ),
}


@pytest.mark.parametrize("case", GUARDS, ids=list(GUARDS))
def test_guards_raise_before_allocating(case: str) -> None:
    proto, error = GUARDS[case]
    tracemalloc.start()
    try:
        with pytest.raises(error):
            wire.wire_value(proto, S)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    assert not issubclass(wire.WireMismatch, TensorParseError)  # the caller falls back on it


def test_numeric_dtypes_take_the_ordinary_path() -> None:
    proto = codecs.from_ndarray(np.arange(6, dtype=np.int64).reshape(2, 3))
    with pytest.raises(wire.WireMismatch):
        wire.wire_value(proto, types_pb2.DT_INT64)


class _Ranker(tf.Module):
    def __init__(self) -> None:
        self.bias = tf.Variable(np.arange(50, dtype=np.int64))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.string, name="ids")])
    def __call__(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        buckets = tf.strings.to_hash_bucket_fast(ids, 50)
        return {"score": tf.reduce_sum(tf.gather(self.bias, buckets), axis=1)}


def test_tf2_module_export_through_load_with_wire(tmp_path: Path) -> None:
    module = _Ranker()
    tf.saved_model.save(module, str(tmp_path), signatures=module.__call__)
    expected = module(tf.constant(IDS))["score"].numpy()
    with tf1.Session(graph=tf.Graph()) as session:
        meta_graph, mapping = wire.load_with_wire(session, str(tmp_path), ["serve"])
        signature = meta_graph.signature_def["serving_default"]
        feed, fetch = signature.inputs["ids"].name, signature.outputs["score"].name
        assert mapping == {feed: f"{feed[:-2]}/tfrec_wire:0"}
        # by name: the inlined call's control edge from the fed node runs it on the default
        _same(session.run([fetch], {feed: IDS}), [expected])
        _same(session.run([fetch], _wired(mapping, {feed: IDS})), [expected])
