"""What moves to the per-user part, on small TF1 graphs built for one rule each: ops that mix
rows stay at N rows, unknown ops stay at N rows, shape ops that see N are recomputed, an
attention whose query is the item broadcasts the user's keys for free, v1 while loops move as
one unit, and the FLOP count is exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.ops import control_flow_util

from benchmarks.models.session import ServingSession
from saved_model_tools import ConversionResult, convert, flops

v1 = tf.compat.v1
Build = Callable[[], tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]]


def save(path: Path, build: Build, v1_loops: bool = False) -> Path:
    graph = tf.Graph()
    previous = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = not v1_loops
    try:
        with graph.as_default(), v1.Session(graph=graph) as session:
            inputs, outputs = build()
            session.run(v1.global_variables_initializer())
            v1.saved_model.simple_save(session, str(path), inputs, outputs)
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = previous
    return path


def weight(shape: tuple[int, ...], seed: int = 0) -> tf.Variable:
    value = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return v1.Variable(value, use_resource=True)


def check(result: ConversionResult, user: dict[str, np.ndarray], items: dict[str, np.ndarray]):
    """The twin on (user at batch 1, items at N) equals the original on the flat request."""
    n = len(next(iter(items.values())))
    flat = {k: np.repeat(v, n, axis=0) for k, v in user.items()} | items
    with ServingSession(result.dst) as session:
        want = session.run(flat)
        got = session.run(user | items, "serving_default_structured")
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    return result.signatures["serving_default"]


def worlds_of(result: ConversionResult, op_type: str) -> set[str]:
    """Where the twin runs the copies of ops of a type ("user" or "item")."""
    model = saved_model_pb2.SavedModel.FromString((result.dst / "saved_model.pb").read_bytes())
    prefix = "serving_default_structured/"
    return {
        n.name[len(prefix) :].split("/")[0]
        for n in model.meta_graphs[0].graph_def.node
        if n.name.startswith(prefix) and n.op == op_type
    }


def test_ops_mixing_rows_stay_at_n_rows(tmp_path: Path) -> None:
    def build():
        u = v1.placeholder(tf.float32, [None, 3], name="u")
        i = v1.placeholder(tf.float32, [None, 3], name="i")
        running = tf.math.cumsum(u, axis=0)  # row k sums k+1 user rows
        centred = u - tf.reduce_mean(u * 2.0, axis=0, keepdims=True)
        per_row = tf.reduce_sum(u * u, axis=1, keepdims=True)  # row-wise: per user
        return {"u": u, "i": i}, {"y": (running + centred + per_row) * i}

    src = save(tmp_path / "m" / "1", build)
    result = convert(src, tmp_path / "m" / "2", ["u"])
    rng = np.random.default_rng(0)
    check(
        result,
        {"u": rng.standard_normal((1, 3), np.float32)},
        {"i": rng.standard_normal((9, 3), np.float32)},
    )
    assert worlds_of(result, "Cumsum") == {"item"}
    assert worlds_of(result, "Mean") == {"item"}
    assert worlds_of(result, "Sum") == {"user"}


def test_unknown_ops_stay_at_n_rows(tmp_path: Path) -> None:
    def build():
        u = v1.placeholder(tf.float32, [None, 4], name="u")
        i = v1.placeholder(tf.float32, [None, 4], name="i")
        rolled = tf.roll(u, shift=1, axis=1)  # no rule for Roll: never moved
        return {"u": u, "i": i}, {"y": tf.nn.relu(u) + rolled * i}

    src = save(tmp_path / "m" / "1", build)
    result = convert(src, tmp_path / "m" / "2", ["u"])
    rng = np.random.default_rng(1)
    stats = check(
        result,
        {"u": rng.standard_normal((1, 4), np.float32)},
        {"i": rng.standard_normal((5, 4), np.float32)},
    )
    assert worlds_of(result, "Roll") == {"item"} and worlds_of(result, "Relu") == {"user"}
    assert "u:0" in stats.broadcasts  # into Roll, as the original had it


def test_shape_ops_that_see_n_are_rewired(tmp_path: Path) -> None:
    def build():
        u = v1.placeholder(tf.float32, [None, 2], name="u")
        i = v1.placeholder(tf.float32, [None, 6], name="i")
        rows = tf.shape(u)[0]
        ones = tf.fill(tf.stack([rows, 1]), 1.0)  # per user: one row of ones
        user = tf.concat([u, ones], axis=1)
        item = tf.reshape(i, tf.stack([rows, 2, 3]))  # needs N, taken from the user input
        mixed = tf.reduce_sum(item, axis=2) * user[:, :2]
        scale = tf.cast(tf.size(u), tf.float32)  # 2N
        return {"u": u, "i": i}, {"y": mixed + scale, "z": tf.tile(user, [1, 2])}

    src = save(tmp_path / "m" / "1", build)
    result = convert(src, tmp_path / "m" / "2", ["u"])
    rng = np.random.default_rng(2)
    for n in (1, 6):
        stats = check(
            result,
            {"u": rng.standard_normal((1, 2), np.float32)},
            {"i": rng.standard_normal((n, 6), np.float32)},
        )
    assert stats.recomputed_shape_ops >= 2  # Shape(u) for the reshape, Size(u)
    assert worlds_of(result, "Fill") == {"user"}


def test_attention_with_the_item_as_query_broadcasts_the_keys_for_free(tmp_path: Path) -> None:
    def build():
        hist = v1.placeholder(tf.int64, [None, 6], name="user_hist")
        item = v1.placeholder(tf.int64, [None], name="item_id")
        table = weight((20, 4))
        keys = tf.nn.embedding_lookup(table, hist)  # [b, 6, 4]: per user
        query = tf.expand_dims(tf.nn.embedding_lookup(table, item), 1)  # [b, 1, 4]
        scores = tf.nn.softmax(tf.matmul(query, keys, transpose_b=True))  # [b, 1, 6]
        interest = tf.squeeze(tf.matmul(scores, keys), axis=1)
        return {"user_hist": hist, "item_id": item}, {"y": tf.reduce_sum(interest, axis=1)}

    src = save(tmp_path / "m" / "1", build)
    result = convert(src, tmp_path / "m" / "2", ["user_hist"])
    rng = np.random.default_rng(3)
    stats = check(
        result, {"user_hist": rng.integers(0, 20, (1, 6))}, {"item_id": rng.integers(0, 20, 11)}
    )
    assert stats.broadcasts == []
    assert len(stats.implicit_broadcasts) == 1  # the keys, read by both BatchMatMulV2
    assert "user" in worlds_of(result, "ResourceGather")


def test_v1_while_loops_move_as_one_unit(tmp_path: Path) -> None:
    def build():
        hist = v1.placeholder(tf.float32, [None, 5, 3], name="user_hist")
        item = v1.placeholder(tf.float32, [None, 3], name="item")
        w = weight((3, 3))

        def encode(seq):  # a tiny RNN over the sequence axis
            steps = tf.transpose(seq, [1, 0, 2])
            state = tf.zeros_like(steps[0])

            def body(t, h):
                return t + 1, tf.tanh(tf.matmul(h, w) + tf.gather(steps, t))

            return v1.while_loop(lambda t, h: t < tf.shape(steps)[0], body, [0, state])[1]

        user_state = encode(hist)  # per user
        mixed = encode(hist * tf.expand_dims(item, 1))  # depends on the item
        return {"user_hist": hist, "item": item}, {"y": user_state * item + mixed}

    src = save(tmp_path / "m" / "1", build, v1_loops=True)
    result = convert(src, tmp_path / "m" / "2", ["user_hist"])
    rng = np.random.default_rng(4)
    stats = check(
        result,
        {"user_hist": rng.standard_normal((1, 5, 3), np.float32)},
        {"item": rng.standard_normal((7, 3), np.float32)},
    )
    assert stats.loop_frames == {"user": 1, "item": 1}
    assert worlds_of(result, "Enter") == {"user", "item"}


def test_flops_are_exact(tmp_path: Path) -> None:
    def build():
        u = v1.placeholder(tf.float32, [None, 4], name="u")
        i = v1.placeholder(tf.float32, [None, 4], name="i")
        return {"u": u, "i": i}, {"y": tf.matmul(tf.concat([u, i], axis=1), weight((8, 3)))}

    src = save(tmp_path / "m" / "1", build)
    result = convert(src, tmp_path / "m" / "2", ["u"])
    stats = result.signatures["serving_default"]
    assert len(stats.decompositions) == 1
    # before: 2*8*3 per row; after: 2*4*3 once, 2*4*3 + 3 (the add) per row
    assert stats.flops[100] == (48 * 100, 24 + 27 * 100)
    assert flops(result.dst, "serving_default", 10, structured=False) == 480
    assert flops(result.dst, "serving_default", 10, structured=True) == 24 + 270


@pytest.mark.parametrize("decompose", [True, False])
def test_decomposed_and_plain_twins_agree(tmp_path: Path, decompose: bool) -> None:
    def build():
        u = v1.placeholder(tf.float32, [None, 5, 2], name="u")
        i = v1.placeholder(tf.float32, [None, 5, 3], name="i")
        x = tf.concat([i[:, :, :1], u, i[:, :, 1:]], axis=2)  # item, user, item parts
        y = tf.einsum("btc,cd->btd", x, weight((5, 4)))
        z = tf.tensordot(x, weight((5, 2), 1), axes=[[2], [0]])
        return {"u": u, "i": i}, {"y": tf.reduce_sum(y, axis=[1, 2]) + tf.reduce_sum(z, [1, 2])}

    src = save(tmp_path / "m" / "1", build)
    result = convert(src, tmp_path / "m" / "2", ["u"], decompose=decompose)
    rng = np.random.default_rng(5)
    stats = check(
        result,
        {"u": rng.standard_normal((1, 5, 2), np.float32)},
        {"i": rng.standard_normal((4, 5, 3), np.float32)},
    )
    assert len(stats.decompositions) == (2 if decompose else 0)
