"""Keras 3 building blocks of the zoo. Every block works row by row (no batch statistics), so a
row's output never depends on which other rows share its batch."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

Tensor = Any  # a symbolic KerasTensor while building, a tf.Tensor when traced or run

# Larger than Keras' default (uniform +-0.05) so that scores visibly differ between rows.
EMBEDDING_INIT = {"class_name": "RandomNormal", "config": {"stddev": 0.3}}


def embedding(rows: int, width: int, name: str) -> keras.layers.Embedding:
    return keras.layers.Embedding(rows, width, embeddings_initializer=EMBEDDING_INIT, name=name)


def mlp(x: Tensor, units: tuple[int, ...], name: str) -> Tensor:
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, activation="relu", name=f"{name}_{i}")(x)
    return x


def score(x: Tensor, name: str = "score") -> Tensor:
    """A [batch, 1] probability."""
    return keras.layers.Dense(1, activation="sigmoid", name=name)(x)


def padding_mask(ids: Tensor) -> Tensor:
    """True where a zero-padded id sequence holds an id."""
    return ops.not_equal(ids, 0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [batch, steps, width] over the steps where mask [batch, steps] is true."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


class TargetAttention(keras.layers.Layer):
    """DIN's attention unit: an MLP over [q, k, q-k, q*k] weighs each behaviour against the
    candidate; the interest is the weighted sum of the behaviours (no softmax, as in DIN)."""

    def __init__(self, units: tuple[int, ...], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(u, activation="sigmoid") for u in units]
        self.scorer = keras.layers.Dense(1)

    def call(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        # [b, w], [b, t, w], [b, t] -> [b, w]
        q = ops.repeat(ops.expand_dims(query, 1), keys.shape[1], axis=1)
        x = ops.concatenate([q, keys, q - keys, q * keys], axis=-1)
        for layer in self.hidden:
            x = layer(x)
        w = self.scorer(x) * ops.expand_dims(ops.cast(mask, x.dtype), -1)
        return ops.sum(w * keys, axis=1)


class BilinearAttention(keras.layers.Layer):
    """DIEN's candidate attention: softmax over unmasked steps of h_t . W q, then sum w_t h_t."""

    def __init__(self, width: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.project = keras.layers.Dense(width, use_bias=False)

    def call(self, query: Tensor, states: Tensor, mask: Tensor) -> Tensor:
        # [b, w], [b, t, h], [b, t] -> [b, h]
        logits = ops.sum(states * ops.expand_dims(self.project(query), 1), axis=-1)
        # A large negative rather than -inf: a user with no history gets finite outputs.
        weights = ops.softmax(ops.where(mask, logits, -1e9), axis=-1)
        return ops.sum(ops.expand_dims(weights, -1) * states, axis=1)


class CrossV2(keras.layers.Layer):
    """One DCN-v2 cross layer: x0 * (W x + b) + x, with a full-rank W."""

    def __init__(self, width: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.linear = keras.layers.Dense(width)

    def call(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.linear(x) + x


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per sequence position."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.table = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal", name="positions"
        )

    def call(self, x: Tensor) -> Tensor:
        return x + self.table


class EncoderBlock(keras.layers.Layer):
    """Post-norm transformer encoder block; padded steps are masked out as keys."""

    def __init__(self, width: int, heads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(heads, width // heads)
        self.norm_attention = keras.layers.LayerNormalization()
        self.expand = keras.layers.Dense(4 * width, activation="relu")
        self.contract = keras.layers.Dense(width)
        self.norm_ffn = keras.layers.LayerNormalization()

    def call(self, x: Tensor, mask: Tensor) -> Tensor:
        # [b, t, w], [b, t] -> [b, t, w]
        keys = ops.repeat(ops.expand_dims(mask, 1), x.shape[1], axis=1)
        x = self.norm_attention(x + self.attention(x, x, attention_mask=keys))
        return self.norm_ffn(x + self.contract(self.expand(x)))
