"""DLRM as a plain `tf.Module` (no Keras): bottom MLP over the dense features, one embedding
per sparse feature, pairwise dot interaction, top MLP. At `full` scale its embedding tables
hold about 425 MB of float32, the zoo's large-table model.

`user_country` arrives as a string and is mapped to a row by a `tf.lookup.StaticHashTable`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from benchmarks.models.built import Built, from_module, input_signature
from benchmarks.models.features import Feature, dense, ids, strings
from benchmarks.models.scales import COUNTRIES, Dims, dlrm_table_rows

USER_DENSE = 6  # Criteo's 13 dense features, split between user and item
ITEM_DENSE = 7
EMBEDDING_STDDEV = 0.3


def _features(dims: Dims) -> tuple[Feature, ...]:
    return (
        ids("user_id", dims.dlrm_users),
        ids("user_city", dims.cities),
        strings("user_country", COUNTRIES),
        dense("user_dense", USER_DENSE),
        ids("item_id", dims.dlrm_items),
        ids("item_category", dims.categories),
        dense("item_dense", ITEM_DENSE),
    )


class _Dense(tf.Module):
    def __init__(self, fan_in: int, units: int, rng: np.random.Generator, name: str) -> None:
        super().__init__(name=name)
        scale = np.float32(np.sqrt(2.0 / fan_in))
        self.kernel = tf.Variable(rng.standard_normal((fan_in, units), np.float32) * scale)
        self.bias = tf.Variable(np.zeros(units, np.float32))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias


def _mlp(fan_in: int, units: tuple[int, ...], rng: np.random.Generator, name: str) -> list:
    widths = (fan_in, *units)
    return [_Dense(widths[i], widths[i + 1], rng, f"{name}_{i}") for i in range(len(units))]


class DLRM(tf.Module):
    def __init__(self, dims: Dims, features: tuple[Feature, ...], seed: int) -> None:
        super().__init__(name="dlrm")
        rng = np.random.default_rng(seed)
        width = dims.dlrm_emb
        self.tables = {
            name: tf.Variable(_normal(rng, (rows, width)), name=f"{name}_embedding")
            for name, rows in dlrm_table_rows(dims).items()
        }
        self.countries = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(COUNTRIES), tf.range(1, len(COUNTRIES) + 1, dtype=tf.int64)
            ),
            default_value=0,
        )
        self.bottom = _mlp(USER_DENSE + ITEM_DENSE, (*dims.mlp[:2], width), rng, "bottom")
        vectors = len(self.tables) + 1
        upper = np.triu_indices(vectors, k=1)
        self.pairs = (upper[0] * vectors + upper[1]).astype(np.int32)  # i < j in z z^T
        self.top = _mlp(width + len(upper[0]), (*dims.mlp[:2], 1), rng, "top")
        self.serve = tf.function(self._serve, input_signature=input_signature(features))

    def _serve(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x = tf.concat([inputs["user_dense"], inputs["item_dense"]], axis=-1)
        for layer in self.bottom:
            x = tf.nn.relu(layer(x))
        rows = dict(inputs, user_country=self.countries.lookup(inputs["user_country"]))
        vectors = [x] + [tf.gather(table, rows[name]) for name, table in self.tables.items()]
        z = tf.stack(vectors, axis=1)  # [batch, vectors, width]
        dots = tf.reshape(tf.matmul(z, z, transpose_b=True), [-1, len(vectors) ** 2])
        x = tf.concat([x, tf.gather(dots, self.pairs, axis=1)], axis=-1)
        for layer in self.top[:-1]:
            x = tf.nn.relu(layer(x))
        return {"score": tf.sigmoid(self.top[-1](x))}


def _normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    table = rng.standard_normal(shape, np.float32)
    table *= EMBEDDING_STDDEV
    return table


def dlrm(dims: Dims, seed: int = 0) -> Built:
    features = _features(dims)
    return from_module("dlrm", features, ("score",), DLRM(dims, features, seed))
