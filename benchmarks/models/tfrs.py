"""A string-heavy ranker in the style of TensorFlow Recommenders (Keras 3): every id is a string.

TFRS models take raw string ids and map them with `StringLookup` -> `Embedding` inside the
serving graph. Here a user tower embeds the user id and mean-pools the embeddings of the user's
last 50 items (item-id strings, sharing the candidate's lookup and table), an item tower embeds
the candidate's id, and a small MLP scores [user, item, user * item]. A flat request of N rows
carries N * 52 strings (~52k at N = 1000): the zoo's string-decoding workload.
"""

from __future__ import annotations

import keras
from keras import ops

from benchmarks.models import blocks
from benchmarks.models.built import Built, from_keras, keras_inputs
from benchmarks.models.features import strings
from benchmarks.models.scales import STRING_HIST_LEN, Dims, string_vocab


def string_ranker(dims: Dims) -> Built:
    users = string_vocab("user", dims.string_users)
    items = string_vocab("item", dims.string_items)
    features = (
        strings("user_id", users),
        strings("user_hist_items", items, STRING_HIST_LEN),
        strings("item_id", items),
    )
    x = keras_inputs(features)
    user_lookup = keras.layers.StringLookup(vocabulary=list(users), name="user_lookup")
    item_lookup = keras.layers.StringLookup(vocabulary=list(items), name="item_lookup")
    item_table = blocks.embedding(len(items) + 1, dims.emb, "item_embedding")
    user_emb = blocks.embedding(len(users) + 1, dims.emb, "user_embedding")(
        user_lookup(x["user_id"])
    )
    history = ops.mean(item_table(item_lookup(x["user_hist_items"])), axis=1)
    user = blocks.mlp(ops.concatenate([user_emb, history], axis=-1), dims.mlp[:-1], "user_tower")
    user = keras.layers.Dense(dims.emb, name="user_vector")(user)
    item = blocks.mlp(item_table(item_lookup(x["item_id"])), dims.mlp[:-1], "item_tower")
    item = keras.layers.Dense(dims.emb, name="item_vector")(item)
    hidden = blocks.mlp(ops.concatenate([user, item, user * item], axis=-1), dims.mlp[-1:], "rank")
    model = keras.Model(x, {"score": blocks.score(hidden)}, name="strings")
    return from_keras("strings", features, model)
