"""An in-memory zoo model ready to export: its inputs, outputs, and how to save and run it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.models.features import Feature

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Built:
    """What a builder returns; `features` lists the user inputs, then the item inputs."""

    name: str
    features: tuple[Feature, ...]
    outputs: tuple[str, ...]
    save: Callable[[Path], None]  # writes a serving SavedModel into the given version dir
    predict: Callable[[Arrays], Arrays]  # the in-memory model, for checking the export
    weight_bytes: int  # size of the model's distinct variables


def keras_inputs(features: tuple[Feature, ...]) -> dict[str, keras.KerasTensor]:
    return {f.name: keras.Input(shape=f.shape, dtype=f.dtype, name=f.name) for f in features}


def from_keras(name: str, features: tuple[Feature, ...], model: keras.Model) -> Built:
    """A Keras 3 functional model with dict inputs and dict outputs, saved by `model.export`."""

    def save(version_dir: Path) -> None:
        model.export(str(version_dir), format="tf_saved_model", verbose=False)

    def predict(inputs: Arrays) -> Arrays:
        outputs = model(inputs, training=False)
        return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}

    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    return Built(name, features, tuple(model.output_names), save, predict, size)


def from_module(
    name: str, features: tuple[Feature, ...], outputs: tuple[str, ...], module: tf.Module
) -> Built:
    """A `tf.Module` whose `serve` tf.function takes a dict of named inputs."""

    def save(version_dir: Path) -> None:
        signature = module.serve.get_concrete_function()
        tf.saved_model.save(module, str(version_dir), signatures={"serving_default": signature})

    def predict(inputs: Arrays) -> Arrays:
        result = module.serve({k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    size = sum(v.shape.num_elements() * v.dtype.size for v in module.variables)
    return Built(name, features, outputs, save, predict, size)


def input_signature(features: tuple[Feature, ...]) -> list[dict[str, tf.TensorSpec]]:
    """A tf.function input signature whose names become the SignatureDef's input keys."""
    dtypes = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
    specs = {
        f.name: tf.TensorSpec([None, *f.shape], dtypes[f.dtype], name=f.name) for f in features
    }
    return [specs]
