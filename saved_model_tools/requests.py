"""Requests to check a conversion with and to count FLOPs on: one user and N candidates.

Values come from the best source at hand, per input:
1. the zoo's sidecar `assets.extra/tfrec_features.json` (id ranges, vocabularies, padding);
2. rows of sample requests (`--infer-user-inputs`, or the model's warmup file);
3. otherwise: small ints, standard-normal floats, strings the graph itself knows (lookup-table
   keys and vocabularies are constants in the graph), random booleans.
Each request exists in both forms: `structured` (user inputs with 1 row) and `flat` (the user
row repeated N times, what an unchanged TF-Serving client sends).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import tensor_util
from tensorflow_serving.apis import prediction_log_pb2

from saved_model_tools.graphs import attr

FEATURES = Path("assets.extra") / "tfrec_features.json"
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
FREE_DIM = 5  # the size of a non-batch dimension the signature leaves open
MAX_STRINGS = 1000
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Input:
    key: str
    dtype: tf.DType
    dims: tuple[int | None, ...]  # per-row dims (the signature shape without the batch)


@dataclasses.dataclass
class Request:
    structured: Arrays
    flat: Arrays
    n: int
    origin: str  # "random" or "sample <i>"


def inputs_of(signature: meta_graph_pb2.SignatureDef) -> list[Input]:
    out = []
    for key, info in sorted(signature.inputs.items()):
        dims = tuple(tf.TensorShape(info.tensor_shape).as_list()[1:])
        out.append(Input(key, tf.as_dtype(info.dtype), dims))
    return out


def read_samples(path: Path, signature: str, limit: int = 1000) -> list[Arrays]:
    """Inputs of the PredictRequests in a PredictionLog TFRecord that target `signature`."""
    out = []
    for record in tf.compat.v1.io.tf_record_iterator(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            continue
        request = log.predict_log.request
        if (request.model_spec.signature_name or "serving_default") != signature:
            continue
        out.append({k: tensor_util.MakeNdarray(v) for k, v in request.inputs.items()})
        if len(out) >= limit:
            break
    return out


def graph_strings(graph_def: graph_pb2.GraphDef) -> list[bytes]:
    """String constants of the graph (table keys, vocabularies): likely valid string inputs."""
    found: list[bytes] = []
    for node in graph_def.node:
        tensor = attr(node, "value").tensor if node.op == "Const" else None
        if tensor is not None and tensor.dtype == tf.string.as_datatype_enum:
            found.extend(tensor.string_val[: MAX_STRINGS - len(found)])
        if len(found) >= MAX_STRINGS:
            break
    return sorted(set(found)) or [b"a", b"b", b"c"]


class Domains:
    """Draws valid values for each input (see the module docstring)."""

    def __init__(
        self,
        inputs: list[Input],
        version_dir: Path | None,
        samples: list[Arrays],
        strings: list[bytes],
    ) -> None:
        self.inputs = {i.key: i for i in inputs}
        self.features = _features(version_dir)
        self.pools = _pools(inputs, samples)
        self.strings = np.array(strings, dtype=object)
        self.safe = False  # set when the graph rejected heuristic values: use zeros and ""

    def draw(self, key: str, rows: int, rng: np.random.Generator) -> np.ndarray:
        spec = self.inputs[key]
        if key in self.features:
            return _from_feature(self.features[key], spec, rows, rng)
        if key in self.pools:
            pool = self.pools[key]
            return pool[rng.integers(0, len(pool), size=rows)]
        shape = (rows, *(FREE_DIM if d is None else d for d in spec.dims))
        if spec.dtype.is_floating:
            return rng.standard_normal(shape).astype(spec.dtype.as_numpy_dtype)
        if spec.dtype == tf.bool:
            return rng.integers(0, 2, size=shape).astype(bool)
        if spec.dtype == tf.string:
            if self.safe:
                return np.full(shape, b"", dtype=object)
            return self.strings[rng.integers(0, len(self.strings), size=shape)]
        if spec.dtype.is_integer:
            high = 1 if self.safe else 10
            return rng.integers(0, high, size=shape).astype(spec.dtype.as_numpy_dtype)
        return np.zeros(shape, spec.dtype.as_numpy_dtype)

    def request(self, user: list[str], n: int, seed: int) -> Request:
        rng = np.random.default_rng(seed)
        structured = {k: self.draw(k, 1 if k in user else n, rng) for k in sorted(self.inputs)}
        return Request(structured, flatten(structured, user, n), n, "random")


def flatten(structured: Arrays, user: list[str], n: int) -> Arrays:
    return {k: np.repeat(v, n, axis=0) if k in user else v for k, v in structured.items()}


def from_samples(samples: list[Arrays], user: list[str], limit: int) -> Iterator[Request]:
    """Sample flat requests whose user rows all repeat row 0, in both forms."""
    count = 0
    for i, flat in enumerate(samples):
        if count >= limit or any(k not in flat for k in user):
            continue
        if not all(np.array_equal(flat[k], np.repeat(flat[k][:1], len(flat[k]), 0)) for k in user):
            continue
        n = max(len(v) for k, v in flat.items() if k not in user)
        structured = {k: v[:1] if k in user else v for k, v in flat.items()}
        count += 1
        yield Request(structured, flat, n, f"sample {i}")


def _features(version_dir: Path | None) -> dict[str, dict]:
    if version_dir is None or not (version_dir / FEATURES).is_file():
        return {}
    try:
        return dict(json.loads((version_dir / FEATURES).read_text()).get("features", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _from_feature(spec: dict, inp: Input, rows: int, rng: np.random.Generator) -> np.ndarray:
    dims = tuple(FREE_DIM if d is None or d < 0 else d for d in spec.get("shape", [-1])[1:])
    shape = (rows, *dims)
    if spec.get("vocab"):
        vocab = np.array([v.encode() for v in spec["vocab"]], dtype=object)
        return vocab[rng.integers(0, len(vocab), size=shape)]
    if spec.get("vocab_size"):
        values = rng.integers(1, int(spec["vocab_size"]), size=shape)
        if spec.get("padded") and dims:
            lengths = rng.integers(1, dims[-1] + 1, size=(rows, 1))
            values[np.arange(dims[-1]) >= lengths] = 0
        return values.astype(inp.dtype.as_numpy_dtype)
    if inp.dtype.is_floating:
        return rng.standard_normal(shape).astype(inp.dtype.as_numpy_dtype)
    return np.zeros(shape, inp.dtype.as_numpy_dtype)


def _pools(inputs: list[Input], samples: list[Arrays]) -> dict[str, np.ndarray]:
    """For each input, the rows of the samples (if they all have one row shape)."""
    pools = {}
    for spec in inputs:
        arrays = [s[spec.key] for s in samples if spec.key in s and s[spec.key].ndim >= 1]
        if arrays and len({a.shape[1:] for a in arrays}) == 1:
            pools[spec.key] = np.concatenate(arrays)
    return pools
