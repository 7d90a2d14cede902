"""The built-in demo ranking model that `make serve` serves.

One user against N candidate items: user id and user dense features, item id and item dense
features; embeddings + an MLP; output `score` in (0, 1), shape [N, 1]. Weights are random
but seeded, so every build gives the same model. Exported with `tf.saved_model.save` in
TF-Serving's version layout (`<out>/1/`).

    python -m tfrec_tools.demo_model models/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USER_VOCAB, ITEM_VOCAB, EMBED, DENSE = 1000, 5000, 16, 8


def build(out: Path, version: int = 1) -> Path:
    """Writes the demo SavedModel to out/<version> and returns that directory."""
    import tensorflow as tf

    tf.random.set_seed(7)

    class Ranker(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="demo_ranker")
            init = tf.random_normal_initializer(stddev=0.1, seed=7)
            self.user_embedding = tf.Variable(init([USER_VOCAB, EMBED]), name="user_embedding")
            self.item_embedding = tf.Variable(init([ITEM_VOCAB, EMBED]), name="item_embedding")
            width = 2 * EMBED + 2 * DENSE
            self.w1 = tf.Variable(init([width, 64]), name="w1")
            self.b1 = tf.Variable(tf.zeros([64]), name="b1")
            self.w2 = tf.Variable(init([64, 32]), name="w2")
            self.b2 = tf.Variable(tf.zeros([32]), name="b2")
            self.w3 = tf.Variable(init([32, 1]), name="w3")
            self.b3 = tf.Variable(tf.zeros([1]), name="b3")

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.int64, name="user_id"),
                tf.TensorSpec([None, DENSE], tf.float32, name="user_dense"),
                tf.TensorSpec([None], tf.int64, name="item_id"),
                tf.TensorSpec([None, DENSE], tf.float32, name="item_dense"),
            ]
        )
        def serve(self, user_id, user_dense, item_id, item_dense):  # type: ignore[no-untyped-def]
            user = tf.gather(self.user_embedding, tf.math.floormod(user_id, USER_VOCAB))
            item = tf.gather(self.item_embedding, tf.math.floormod(item_id, ITEM_VOCAB))
            x = tf.concat([user, user_dense, item, item_dense], axis=1)
            x = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
            x = tf.nn.relu(tf.matmul(x, self.w2) + self.b2)
            return {"score": tf.sigmoid(tf.matmul(x, self.w3) + self.b3)}

    ranker = Ranker()
    target = out / str(version)
    tf.saved_model.save(ranker, str(target), signatures={"serving_default": ranker.serve})
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="model base path, e.g. models/demo")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)
    target = build(args.out, args.version)
    print(f"demo ranking model written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
