"""Ranking requests for a zoo model: one user and N candidates.

Two forms of the same request:
- `flat`: every input has N rows, the user's row repeated N times (what a stock TF-Serving
  client sends to `serving_default`);
- `structured`: user inputs once (batch dimension 1), item inputs N rows (for the
  `serving_default_structured` signature that saved_model_tools adds).

Which inputs exist, their dtypes and shapes come from the SavedModel's `serving_default`
signature; which are per-user and their value domains from the zoo's sidecar
(`benchmarks.models.features`). Requests are deterministic: the same seed gives byte-identical
arrays, `PredictRequest`s and files.

Files are TFRecords of `PredictionLog{predict_log{request}}`, TF-Serving's warmup format, so one
file is warmup data (TF-Serving reads at most 1000 records from
`<version>/assets.extra/tf_serving_warmup_requests`), replay input and benchmark input.

    python -m benchmarks.workloads --model-dir DIR/din/1 --n 100 --count 20 --seed 0 \\
        --form flat --out din_flat.tfrecord
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from benchmarks.models.features import Feature, Sidecar, sample

FORMS = ("flat", "structured")
SIGNATURES = {"flat": "serving_default", "structured": "serving_default_structured"}
SIZES = (100, 500, 1000)
MAX_WARMUP_RECORDS = 1000
_DTYPES = {
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_FLOAT: "float32",
    types_pb2.DT_STRING: "string",
}

Arrays = dict[str, np.ndarray]
Seed = int | Sequence[int]  # anything np.random.default_rng takes


def read_signature(
    version_dir: Path | str, signature: str = "serving_default"
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Input name -> (dtype, shape with -1 for unknown dims) of a `serve` MetaGraph signature."""
    path = Path(version_dir) / "saved_model.pb"
    model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta in model.meta_graphs:
        if "serve" in meta.meta_info_def.tags and signature in meta.signature_def:
            inputs = meta.signature_def[signature].inputs
            return {
                name: (_DTYPES.get(info.dtype, str(info.dtype)), _shape(info.tensor_shape))
                for name, info in inputs.items()
            }
    raise ValueError(f"{version_dir}: no 'serve' MetaGraph with signature {signature!r}")


def _shape(proto: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...]:
    if proto.unknown_rank:
        raise ValueError("inputs of unknown rank cannot be generated")
    return tuple(d.size for d in proto.dim)


def _compatible(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Same rank, and every known dimension of `shape` equals `expected`'s."""
    if len(shape) != len(expected):
        return False
    return all(s in (-1, e) for s, e in zip(shape, expected, strict=True))


@dataclasses.dataclass(frozen=True)
class Workload:
    """Request generator for one model version."""

    model: str  # the model name put in requests
    features: tuple[Feature, ...]  # the signature's inputs, user inputs first

    @classmethod
    def load(cls, version_dir: Path | str, model: str | None = None) -> Workload:
        """Reads the signature and sidecar; checks that they agree."""
        sidecar = Sidecar.read(Path(version_dir))
        signature = read_signature(version_dir)
        if set(signature) != {f.name for f in sidecar.features}:
            raise ValueError(
                f"{version_dir}: signature inputs {sorted(signature)} differ from the sidecar's"
            )
        for f in sidecar.features:
            dtype, shape = signature[f.name]
            if dtype != f.dtype or not _compatible(shape, (-1, *f.shape)):
                raise ValueError(f"{version_dir}: signature has {f.name} as {dtype}{list(shape)}")
        return cls(model or sidecar.model, sidecar.features)

    def request(self, n: int, seed: Seed, form: str = "flat") -> Arrays:
        """One user and `n` candidates. Flat rows repeat the user's row; structured user inputs
        keep batch dimension 1. Both forms draw the same values for the same seed."""
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, not {form!r}")
        rng = np.random.default_rng(seed)
        arrays = {f.name: sample(f, 1 if f.per_user else n, rng) for f in self.features}
        if form == "flat":
            for f in self.features:
                if f.per_user:
                    arrays[f.name] = np.repeat(arrays[f.name], n, axis=0)
        return arrays

    def predict_requests(
        self, sizes: Sequence[int], count: int, seed: int, form: str = "flat"
    ) -> Iterator[predict_pb2.PredictRequest]:
        """`count` requests; request i has sizes[i % len(sizes)] candidates and seed (seed, i)."""
        for i, n in zip(range(count), itertools.cycle(sizes)):
            yield predict_request(self.request(n, (seed, i), form), self.model, SIGNATURES[form])


def make_request(version_dir: Path | str, n: int, seed: Seed, form: str = "flat") -> Arrays:
    """One request for the model version at `version_dir` (see `Workload.request`)."""
    return Workload.load(version_dir).request(n, seed, form)


def predict_request(inputs: Arrays, model: str, signature: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def request_arrays(request: predict_pb2.PredictRequest) -> Arrays:
    """The inputs of a request as arrays (strings as object arrays of bytes)."""
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def write_tfrecord(path: Path | str, requests: Iterable[predict_pb2.PredictRequest]) -> int:
    """Writes requests as PredictionLog records; returns how many."""
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString(deterministic=True))
            count += 1
    return count


def read_tfrecord(path: Path | str) -> Iterator[predict_pb2.PredictRequest]:
    """The requests of a PredictionLog TFRecord file (record checksums are verified)."""
    for record in tf.compat.v1.io.tf_record_iterator(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: a {log.WhichOneof('log_type')} record is not a predict log")
        yield log.predict_log.request


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.workloads", description="Write ranking requests as a TFRecord."
    )
    parser.add_argument("--model-dir", required=True, help="a zoo model's version directory")
    parser.add_argument("--n", type=int, nargs="+", default=list(SIZES), help="candidates")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", choices=FORMS, default="flat")
    parser.add_argument("--model-name", help="model name in the requests (default: the zoo's)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    workload = Workload.load(args.model_dir, args.model_name)
    requests = workload.predict_requests(args.n, args.count, args.seed, args.form)
    count = write_tfrecord(args.out, requests)
    size = Path(args.out).stat().st_size
    sizes = ",".join(map(str, args.n))
    print(f"{args.out}: {count} {args.form} requests for {workload.model} (n={sizes}) {size} bytes")
    if count > MAX_WARMUP_RECORDS:
        print(f"note: TF-Serving warmup stops at {MAX_WARMUP_RECORDS} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
