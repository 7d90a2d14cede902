"""A TF1 SavedModel whose run is one long while loop (a GRU-like recurrence): what a deadline
must be able to stop. `serving_default`: x float [None, 64] -> y float [None, 64]; the loop
runs `steps` (an int32 input, default 20000) iterations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf


def export_loop_model(base: Path, version: int = 1) -> Path:
    path = base / str(version)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        steps = tf.compat.v1.placeholder_with_default(tf.constant(20000), [], name="steps")
        w = tf.constant(np.random.default_rng(0).normal(0, 0.1, (64, 64)).astype(np.float32))
        _, y = tf.while_loop(
            lambda i, h: i < steps, lambda i, h: (i + 1, tf.tanh(tf.matmul(h, w))), (0, x)
        )
        y = tf.identity(y, name="y")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(path))
            signature = tf.compat.v1.saved_model.predict_signature_def(
                {"x": x, "steps": steps}, {"y": y}
            )
            builder.add_meta_graph_and_variables(
                session, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()
    return base
