"""Rankers over a user behaviour sequence (Keras 3): DIN, DIEN-style, and a user-heavy ranker.

Behaviour sequences and candidates share the item and category embedding tables, as in the
papers, so one variable is read by both the per-user and the per-item side of the graph.
"""

from __future__ import annotations

import keras
from keras import ops

from benchmarks.models import blocks
from benchmarks.models.built import Built, from_keras, keras_inputs
from benchmarks.models.features import dense, ids, strings
from benchmarks.models.scales import COUNTRIES, LONG_SEQ_LEN, SEQ_LEN, Dims
from benchmarks.models.tabular import AGE_BUCKETS


def _behaviour_features(dims: Dims, length: int) -> tuple:
    return (
        ids("user_id", dims.users),
        dense("user_dense", dims.dense),
        ids("user_hist_items", dims.items, length),
        ids("user_hist_categories", dims.categories, length),
        ids("item_id", dims.items),
        ids("item_category", dims.categories),
    )


class _ItemEmbedding:
    """Item-id and category embeddings, concatenated; shared by history and candidates."""

    def __init__(self, dims: Dims) -> None:
        self.items = blocks.embedding(dims.items, dims.emb, "item_embedding")
        self.categories = blocks.embedding(dims.categories, dims.emb, "category_embedding")

    def __call__(self, item: blocks.Tensor, category: blocks.Tensor) -> blocks.Tensor:
        return ops.concatenate([self.items(item), self.categories(category)], axis=-1)


def din(dims: Dims) -> Built:
    """Deep Interest Network: the candidate attends over the 100-long behaviour sequence."""
    features = _behaviour_features(dims, SEQ_LEN)
    x = keras_inputs(features)
    embed = _ItemEmbedding(dims)
    history = embed(x["user_hist_items"], x["user_hist_categories"])
    candidate = embed(x["item_id"], x["item_category"])
    mask = blocks.padding_mask(x["user_hist_items"])
    interest = blocks.TargetAttention(dims.attention, name="din_attention")(
        candidate, history, mask
    )
    user = blocks.embedding(dims.users, dims.emb, "user_embedding")(x["user_id"])
    parts = [user, x["user_dense"], blocks.masked_mean(history, mask), interest, candidate]
    hidden = blocks.mlp(ops.concatenate(parts, axis=-1), dims.mlp, "din_mlp")
    return from_keras("din", features, keras.Model(x, {"score": blocks.score(hidden)}, name="din"))


def dien(dims: Dims) -> Built:
    """DIEN-style: a GRU extracts interest states from the behaviour sequence, then the
    candidate attends over those states (no auxiliary loss: this is a serving graph)."""
    features = _behaviour_features(dims, SEQ_LEN)
    x = keras_inputs(features)
    embed = _ItemEmbedding(dims)
    history = embed(x["user_hist_items"], x["user_hist_categories"])
    candidate = embed(x["item_id"], x["item_category"])
    mask = blocks.padding_mask(x["user_hist_items"])
    extractor = keras.layers.GRU(
        dims.gru, return_sequences=True, return_state=True, name="interest_extractor"
    )
    states, last_state = extractor(history, mask=mask)
    interest = blocks.BilinearAttention(dims.gru, name="interest_attention")(
        candidate, states, mask
    )
    user = blocks.embedding(dims.users, dims.emb, "user_embedding")(x["user_id"])
    parts = [user, x["user_dense"], interest, candidate, last_state]
    hidden = blocks.mlp(ops.concatenate(parts, axis=-1), dims.mlp, "dien_mlp")
    return from_keras(
        "dien", features, keras.Model(x, {"score": blocks.score(hidden)}, name="dien")
    )


def user_heavy(dims: Dims) -> Built:
    """Most FLOPs are per-user: a transformer encoder over a 200-long behaviour sequence plus
    profile features make the user tower; a light item tower; a small scoring MLP."""
    features = (
        ids("user_id", dims.users),
        ids("user_age_bucket", AGE_BUCKETS),
        strings("user_country", COUNTRIES),
        dense("user_profile", 2 * dims.dense),
        ids("user_hist_items", dims.items, LONG_SEQ_LEN),
        ids("user_hist_categories", dims.categories, LONG_SEQ_LEN),
        ids("item_id", dims.items),
        ids("item_category", dims.categories),
        dense("item_dense", dims.dense),
    )
    x = keras_inputs(features)
    embed = _ItemEmbedding(dims)
    user = _user_tower(x, dims, embed)
    item = ops.concatenate([embed(x["item_id"], x["item_category"]), x["item_dense"]], axis=-1)
    item = keras.layers.Dense(dims.model_dim, name="item_vector")(item)
    pair = ops.concatenate([user, item, user * item], axis=-1)
    hidden = blocks.mlp(pair, dims.mlp[-1:], "scoring")
    model = keras.Model(x, {"score": blocks.score(hidden)}, name="user_heavy")
    return from_keras("user_heavy", features, model)


def _user_tower(x: dict, dims: Dims, embed: _ItemEmbedding) -> blocks.Tensor:
    """Encoded behaviour sequence (mean over its real steps) and profile -> MLP -> vector."""
    mask = blocks.padding_mask(x["user_hist_items"])
    seq = embed(x["user_hist_items"], x["user_hist_categories"])
    seq = keras.layers.Dense(dims.model_dim, name="sequence_projection")(seq)
    seq = blocks.PositionEmbedding(name="positions")(seq)
    for i in range(dims.blocks):
        seq = blocks.EncoderBlock(dims.model_dim, dims.heads, name=f"encoder_{i}")(seq, mask)
    lookup = keras.layers.StringLookup(vocabulary=list(COUNTRIES), name="country_lookup")
    profile = [
        blocks.embedding(dims.users, dims.emb, "user_embedding")(x["user_id"]),
        blocks.embedding(AGE_BUCKETS, dims.emb, "age_embedding")(x["user_age_bucket"]),
        blocks.embedding(len(COUNTRIES) + 1, dims.emb, "country_embedding")(
            lookup(x["user_country"])
        ),
        x["user_profile"],
    ]
    user = ops.concatenate([blocks.masked_mean(seq, mask), *profile], axis=-1)
    user = blocks.mlp(user, dims.mlp[:-1], "user_tower")
    return keras.layers.Dense(dims.model_dim, name="user_vector")(user)
