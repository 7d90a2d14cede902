"""Feature-crossing rankers over id and dense features (Keras 3): WDL, DCN-v2, MMoE."""

from __future__ import annotations

import keras
from keras import ops

from benchmarks.models import blocks
from benchmarks.models.built import Built, from_keras, keras_inputs
from benchmarks.models.features import dense, ids, strings
from benchmarks.models.scales import COUNTRIES, Dims, brand_vocab

AGE_BUCKETS = 10


def wdl(dims: Dims) -> Built:
    """Wide & deep. String ids go through `StringLookup`; the wide part has a user x item
    cross (country x category), the deep part an MLP over embeddings and dense features."""
    brands = brand_vocab(dims)
    features = (
        ids("user_id", dims.users),
        ids("user_age_bucket", AGE_BUCKETS),
        strings("user_country", COUNTRIES),
        dense("user_dense", dims.dense),
        ids("item_id", dims.items),
        ids("item_category", dims.categories),
        strings("item_brand", brands),
        dense("item_dense", dims.dense),
    )
    x = keras_inputs(features)
    country = keras.layers.StringLookup(vocabulary=list(COUNTRIES), name="country_lookup")
    brand = keras.layers.StringLookup(vocabulary=list(brands), name="brand_lookup")
    sparse = {  # name: (row ids, table rows)
        "user_id": (x["user_id"], dims.users),
        "user_age_bucket": (x["user_age_bucket"], AGE_BUCKETS),
        "user_country": (country(x["user_country"]), len(COUNTRIES) + 1),
        "item_id": (x["item_id"], dims.items),
        "item_category": (x["item_category"], dims.categories),
        "item_brand": (brand(x["item_brand"]), len(brands) + 1),
    }
    cross = sparse["user_country"][0] * dims.categories + x["item_category"]
    sparse["cross"] = (cross, (len(COUNTRIES) + 1) * dims.categories)
    dense_in = ops.concatenate([x["user_dense"], x["item_dense"]], axis=-1)
    logit = keras.layers.Add()([_wide(sparse, dense_in), _deep(sparse, dense_in, dims)])
    out = {"score": keras.layers.Activation("sigmoid", name="score")(logit)}
    return from_keras("wdl", features, keras.Model(x, out, name="wdl"))


def _wide(sparse: dict, dense_in: blocks.Tensor) -> blocks.Tensor:
    """A linear model: one weight per id (crosses included) plus a linear map of dense inputs."""
    terms = [blocks.embedding(rows, 1, f"wide_{n}")(v) for n, (v, rows) in sparse.items()]
    return keras.layers.Add()([*terms, keras.layers.Dense(1, name="wide_dense")(dense_in)])


def _deep(sparse: dict, dense_in: blocks.Tensor, dims: Dims) -> blocks.Tensor:
    embs = [
        blocks.embedding(rows, dims.emb, f"deep_{n}")(v)
        for n, (v, rows) in sparse.items()
        if n != "cross"
    ]
    hidden = blocks.mlp(ops.concatenate([*embs, dense_in], axis=-1), dims.mlp, "deep")
    return keras.layers.Dense(1, name="deep_logit")(hidden)


def _profile_features(dims: Dims) -> tuple:
    return (
        ids("user_id", dims.users),
        ids("user_age_bucket", AGE_BUCKETS),
        ids("user_city", dims.cities),
        dense("user_dense", dims.dense),
        ids("item_id", dims.items),
        ids("item_category", dims.categories),
        dense("item_dense", dims.dense),
    )


def _embed_all(x: dict, dims: Dims) -> blocks.Tensor:
    """Concatenated embeddings of every id input, then the dense inputs."""
    vocab = {
        "user_id": dims.users,
        "user_age_bucket": AGE_BUCKETS,
        "user_city": dims.cities,
        "item_id": dims.items,
        "item_category": dims.categories,
    }
    embs = [blocks.embedding(rows, dims.emb, f"{n}_embedding")(x[n]) for n, rows in vocab.items()]
    return ops.concatenate([*embs, x["user_dense"], x["item_dense"]], axis=-1)


def dcn_v2(dims: Dims) -> Built:
    """DCN-v2, parallel form: full-rank cross layers and a deep MLP over the same x0."""
    features = _profile_features(dims)
    x = keras_inputs(features)
    x0 = _embed_all(x, dims)
    crossed = x0
    for i in range(dims.cross_layers):
        crossed = blocks.CrossV2(x0.shape[-1], name=f"cross_{i}")(x0, crossed)
    deep = blocks.mlp(x0, dims.mlp, "deep")
    out = {"score": blocks.score(ops.concatenate([crossed, deep], axis=-1))}
    return from_keras("dcn_v2", features, keras.Model(x, out, name="dcn_v2"))


def mmoe(dims: Dims) -> Built:
    """Multi-gate mixture of experts with two tasks, `ctr` and `cvr`."""
    features = _profile_features(dims)
    x = keras_inputs(features)
    shared = _embed_all(x, dims)
    experts = ops.stack(
        [blocks.mlp(shared, dims.mlp[:-1], f"expert_{e}") for e in range(dims.experts)], axis=1
    )
    out = {}
    for task in ("ctr", "cvr"):
        gate = keras.layers.Dense(dims.experts, activation="softmax", name=f"{task}_gate")(shared)
        mixed = ops.sum(ops.expand_dims(gate, -1) * experts, axis=1)
        out[task] = blocks.score(blocks.mlp(mixed, dims.mlp[-1:], f"{task}_tower"), name=task)
    return from_keras("mmoe", features, keras.Model(x, out, name="mmoe"))
