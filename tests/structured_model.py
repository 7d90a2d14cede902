"""A small ranking model with a hand-written structured twin, as tfrec-convert lays one out.

`serving_default` takes user inputs repeated on every row; `serving_default_structured` takes
them once (batch 1), computes the user tower once and broadcasts it. Both share the variables.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

SEQ = 20
USER_INPUTS = ["user_id", "user_hist"]
ITEM_INPUTS = ["item_id"]


def build(base: Path, version: int = 1) -> Path:
    class Ranker(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            init = tf.random_normal_initializer(stddev=0.3, seed=3)
            self.user_table = tf.Variable(init([100, 8]))
            self.item_table = tf.Variable(init([500, 8]))
            self.w = tf.Variable(init([16, 1]))

        def user_tower(self, user_id, user_hist):  # type: ignore[no-untyped-def]
            hist = tf.reduce_mean(tf.gather(self.user_table, user_hist % 100), axis=1)
            return tf.tanh(tf.gather(self.user_table, user_id % 100) + hist)

        def score(self, user, item_id):  # type: ignore[no-untyped-def]
            item = tf.gather(self.item_table, item_id % 500)
            return {"score": tf.sigmoid(tf.matmul(tf.concat([user, item], 1), self.w))}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.int64, name="user_id"),
                tf.TensorSpec([None, SEQ], tf.int64, name="user_hist"),
                tf.TensorSpec([None], tf.int64, name="item_id"),
            ]
        )
        def flat(self, user_id, user_hist, item_id):  # type: ignore[no-untyped-def]
            return self.score(self.user_tower(user_id, user_hist), item_id)

        @tf.function(
            input_signature=[
                tf.TensorSpec([1], tf.int64, name="user_id"),
                tf.TensorSpec([1, SEQ], tf.int64, name="user_hist"),
                tf.TensorSpec([None], tf.int64, name="item_id"),
            ]
        )
        def structured(self, user_id, user_hist, item_id):  # type: ignore[no-untyped-def]
            user = self.user_tower(user_id, user_hist)
            return self.score(tf.tile(user, [tf.shape(item_id)[0], 1]), item_id)

    model = Ranker()
    target = base / str(version)
    tf.saved_model.save(
        model,
        str(target),
        signatures={"serving_default": model.flat, "serving_default_structured": model.structured},
    )
    sidecar = {
        "format": 1,
        "signatures": {
            "serving_default_structured": {
                "original": "serving_default",
                "user_inputs": USER_INPUTS,
                "item_inputs": ITEM_INPUTS,
                "outputs": ["score"],
            }
        },
    }
    (target / "assets.extra").mkdir(exist_ok=True)
    (target / "assets.extra" / "tfrec_structured.json").write_text(json.dumps(sidecar))
    return target
