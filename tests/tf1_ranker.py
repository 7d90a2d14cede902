"""A TF1-style ranking model built with `tf.compat.v1`, the way pre-Keras serving graphs were:
placeholders, ref variables (`use_resource=False`), a `HashTable` that maps a string user id
to a row, and a `tf.Example` classify signature next to the predict ones.

The graph also holds what a converter must get right beyond a plain MLP:
- a per-user reduction over the behaviour sequence and a `Reshape` with -1 (row-wise);
- a bias column made with `tf.fill([tf.shape(user_dense)[0], 1])` (a shape op that sees N);
- `log(N)` from `tf.shape(item_id)[0]` and a batch-level sum of `user_dense` (mixes rows: it
  must stay at N rows in the structured signature, where it equals N times one row).
Signatures: `serving_default` (score, listwise, affinity), `score` (score; it also takes
`user_unused`, which no output reads), `classify` (tf.Example input).

    python -m tests.tf1_ranker OUT_DIR   # writes OUT_DIR/1
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

USER_INPUTS = ("user_id", "user_dense", "user_hist")
ITEM_INPUTS = ("item_id", "item_dense")
USER_IDS = tuple(f"u{i}" for i in range(12))
ITEMS = 30
HIST = 5
EMB = 4


def _variable(rng: np.random.Generator, shape: tuple[int, ...], name: str):
    init = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    return tf.compat.v1.Variable(init, use_resource=False, name=name)


def build(out_dir: Path | str, version: int = 1) -> Path:
    """Writes the model to `<out_dir>/<version>` and returns that directory."""
    path = Path(out_dir) / str(version)
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        v1 = tf.compat.v1
        user_id = v1.placeholder(tf.string, [None], name="user_id")
        user_dense = v1.placeholder(tf.float32, [None, 4], name="user_dense")
        user_hist = v1.placeholder(tf.int64, [None, HIST], name="user_hist")
        item_id = v1.placeholder(tf.int64, [None], name="item_id")
        item_dense = v1.placeholder(tf.float32, [None, 3], name="item_dense")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(USER_IDS), tf.range(1, len(USER_IDS) + 1, dtype=tf.int64)
            ),
            default_value=0,
            name="user_ids",
        )
        user_table = _variable(rng, (len(USER_IDS) + 1, EMB), "user_embedding")
        item_table = _variable(rng, (ITEMS, EMB), "item_embedding")
        user = tf.gather(user_table, table.lookup(user_id))
        hist = tf.nn.embedding_lookup(item_table, user_hist)  # [b, HIST, EMB]
        hist_mean = tf.reduce_mean(hist, axis=1)
        hist_flat = tf.reshape(hist, [-1, HIST * EMB])
        item = tf.nn.embedding_lookup(item_table, item_id)
        bias = tf.fill(tf.stack([tf.shape(user_dense)[0], 1]), 1.0)
        x = tf.concat([user, hist_mean, hist_flat, user_dense, bias, item, item_dense], axis=1)
        w1 = _variable(rng, (x.shape[1], 16), "w1")
        b1 = _variable(rng, (16,), "b1")
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1)
        w2 = _variable(rng, (16, 1), "w2")
        logit = tf.squeeze(tf.matmul(hidden, w2), axis=1)
        n = tf.cast(tf.shape(item_id)[0], tf.float32)
        batch_sum = tf.reduce_sum(user_dense[:, 0])  # mixes rows: N times one user's value
        score = tf.sigmoid(logit, name="score")
        listwise = tf.sigmoid(logit + 0.1 * tf.math.log(n) + 0.01 * batch_sum, name="listwise")
        affinity = tf.reduce_sum(user * item, axis=1, name="affinity")

        serialized = v1.placeholder(tf.string, [None], name="examples")
        parsed = tf.io.parse_example(
            serialized, {"x": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])}
        )
        classes = tf.sigmoid(parsed["x"] * 2.0, name="classes")

        session.run(v1.global_variables_initializer())
        session.run(v1.tables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        inputs = {
            "user_id": user_id,
            "user_dense": user_dense,
            "user_hist": user_hist,
            "item_id": item_id,
            "item_dense": item_dense,
        }
        predict = v1.saved_model.signature_def_utils.build_signature_def(
            {k: info(v) for k, v in inputs.items()},
            {
                k: info(v)
                for k, v in {"score": score, "listwise": listwise, "affinity": affinity}.items()
            },
            v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
        )
        unused = v1.placeholder(tf.float32, [None, 2], name="user_unused")
        score_only = v1.saved_model.signature_def_utils.build_signature_def(
            {k: info(v) for k, v in inputs.items()} | {"user_unused": info(unused)},
            {"score": info(score)},
            v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
        )
        classify = v1.saved_model.signature_def_utils.classification_signature_def(
            serialized, tf.constant(["no", "yes"]), classes
        )
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={
                "serving_default": predict,
                "score": score_only,
                "classify": classify,
            },
            main_op=v1.tables_initializer(),
            strip_default_attrs=True,
        )
        builder.save()
    return path


def requests(n: int, seed: int) -> dict[str, np.ndarray]:
    """One user and N candidates in the flat form (the user's row repeated)."""
    rng = np.random.default_rng(seed)
    user = {
        "user_id": np.array([USER_IDS[seed % len(USER_IDS)].encode()] * n, dtype=object),
        "user_dense": np.repeat(rng.standard_normal((1, 4)).astype(np.float32), n, 0),
        "user_hist": np.repeat(rng.integers(0, ITEMS, (1, HIST)), n, 0),
    }
    items = {
        "item_id": rng.integers(0, ITEMS, n),
        "item_dense": rng.standard_normal((n, 3)).astype(np.float32),
    }
    return user | items


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
