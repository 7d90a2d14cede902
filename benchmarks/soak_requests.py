"""The soak's request catalogue: every kind of request the traffic threads send, encoded once.

A `Kind` is one request (gRPC bytes for the stock PredictionService method, or a REST path and
JSON body), the codes it is expected to get (`{"OK"}` for normal requests; the error a stock
TF-Serving returns for invalid ones) and, for normal requests, a check of the reply's values
against a reference (the demo ranker's scores, taken once at start-up from a flat gRPC
Predict; half_plus_two's y = x / 2 + 2). Codes are gRPC code names or `HTTP_<status>`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import orjson
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from benchmarks.soak_setup import DEMO, HPT
from tfrec.base import codecs
from tfrec.client import structured_request

PREDICT = "/tensorflow.serving.PredictionService/Predict"
CLASSIFY = "/tensorflow.serving.PredictionService/Classify"
REGRESS = "/tensorflow.serving.PredictionService/Regress"
DENSE = 8
SIZES = (10, 100, 400)  # items per normal demo request
HEAVY_N = 100_000  # items of an abandoned heavy request (~30-60 ms of the demo MLP on 2 vCPUs)
OK = frozenset({"OK"})
UNKNOWN = "no_such_model"
Check = Callable[[bytes], bool]


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    protocol: str  # "grpc" or "rest"
    target: str  # gRPC method or REST path
    body: bytes
    model: str
    expect: frozenset[str] = OK
    weight: float = 1.0
    check: Check | None = None

    @property
    def normal(self) -> bool:
        return self.expect == OK


def _user(n_items: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    user: dict[str, np.ndarray] = {
        "user_id": np.asarray(seed * 7 + 3, np.int64),
        "user_dense": rng.random(DENSE, np.float32),
    }
    items: dict[str, np.ndarray] = {
        "item_id": rng.integers(0, 5000, n_items, dtype=np.int64),
        "item_dense": rng.random((n_items, DENSE), np.float32),
    }
    return user, items


def flat_inputs(n_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A stock client's request: the user's features repeated on every item row."""
    user, items = _user(n_items, seed)
    return {
        "user_id": np.full(n_items, user["user_id"], np.int64),
        "user_dense": np.tile(user["user_dense"], (n_items, 1)),
        **items,
    }


def predict_request(
    model: str, inputs: dict[str, np.ndarray], signature: str = ""
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    for name, value in inputs.items():
        codecs.from_ndarray(np.asarray(value), True, request.inputs[name])
    return request


def heavy_body() -> bytes:
    return predict_request(DEMO, flat_inputs(HEAVY_N, seed=99)).SerializeToString()


def _grpc_scores(reference: np.ndarray) -> Check:
    def check(raw: bytes) -> bool:
        outputs = predict_pb2.PredictResponse.FromString(raw).outputs
        return "score" in outputs and _close(codecs.to_ndarray(outputs["score"]), reference)

    return check


def _rest_scores(reference: np.ndarray) -> Check:
    def check(raw: bytes) -> bool:
        return _close(np.asarray(orjson.loads(raw)["outputs"], np.float32), reference)

    return check


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-5))


def _json(inputs: dict[str, np.ndarray], signature: str = "") -> bytes:
    doc: dict[str, object] = {"inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
    if signature:
        doc["signature_name"] = signature
    return json.dumps(doc).encode()


def _structured(
    n_items: int, seed: int
) -> tuple[dict[str, np.ndarray], predict_pb2.PredictRequest]:
    user, items = _user(n_items, seed)
    request = structured_request(DEMO, user, items)
    inputs = {
        "user_id": np.asarray([user["user_id"]]),
        "user_dense": user["user_dense"][np.newaxis],
        **items,
    }
    return inputs, request


def demo_kinds(references: dict[int, np.ndarray]) -> list[Kind]:
    """Flat and structured demo requests over gRPC and REST, one of each per size in SIZES;
    `references[n]` is the score of the flat request of n items (seed n)."""
    rest_path = f"/v1/models/{DEMO}:predict"
    sig = "serving_default_structured"
    kinds = []
    for n in SIZES:
        ref = references[n]
        flat = flat_inputs(n, seed=n)
        s_inputs, s_request = _structured(n, seed=n)
        body = predict_request(DEMO, flat).SerializeToString()
        kinds += [
            Kind(f"grpc_flat_{n}", "grpc", PREDICT, body, DEMO, weight=3, check=_grpc_scores(ref)),
            Kind(
                f"grpc_struct_{n}",
                "grpc",
                PREDICT,
                s_request.SerializeToString(),
                DEMO,
                weight=3,
                check=_grpc_scores(ref),
            ),
            Kind(
                f"rest_flat_{n}",
                "rest",
                rest_path,
                _json(flat),
                DEMO,
                weight=2,
                check=_rest_scores(ref),
            ),
            Kind(
                f"rest_struct_{n}",
                "rest",
                rest_path,
                _json(s_inputs, sig),
                DEMO,
                weight=2,
                check=_rest_scores(ref),
            ),
        ]
    return kinds


def _examples() -> tuple[list[float], classification_pb2.ClassificationRequest]:
    xs = [1.0, 2.0, 6.0]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = HPT
    request.model_spec.signature_name = "classify_x_to_y"
    for x in xs:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return xs, request


def hpt_kinds() -> list[Kind]:
    """half_plus_two: Predict, Classify and Regress over gRPC and REST (y = x / 2 + 2)."""
    xs, classify = _examples()
    want = np.asarray([[x / 2 + 2] for x in xs], np.float32)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = HPT
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.CopyFrom(classify.input)

    def classified(raw: bytes) -> bool:
        result = classification_pb2.ClassificationResponse.FromString(raw).result
        got = [[c.classes[0].score] for c in result.classifications]
        return _close(np.asarray(got, np.float32), want)

    def regressed(raw: bytes) -> bool:
        result = regression_pb2.RegressionResponse.FromString(raw).result
        return _close(np.asarray([[r.value] for r in result.regressions], np.float32), want)

    def rest_list(key: str) -> Check:
        def check(raw: bytes) -> bool:
            got = orjson.loads(raw)[key]
            if key == "results" and got and isinstance(got[0], list):  # classify: [[label, score]]
                got = [row[0][1] for row in got]
            return _close(np.asarray(got, np.float32).reshape(-1, 1), want)

        return check

    predict = predict_request(HPT, {"x": np.asarray(xs, np.float32).reshape(-1, 1)})
    examples = [{"x": x} for x in xs]
    url = f"/v1/models/{HPT}"
    return [
        Kind(
            "grpc_hpt_predict",
            "grpc",
            PREDICT,
            predict.SerializeToString(),
            HPT,
            weight=2,
            check=_grpc_scores_named("y", want),
        ),
        Kind(
            "grpc_hpt_classify",
            "grpc",
            CLASSIFY,
            classify.SerializeToString(),
            HPT,
            check=classified,
        ),
        Kind(
            "grpc_hpt_regress", "grpc", REGRESS, regress.SerializeToString(), HPT, check=regressed
        ),
        Kind(
            "rest_hpt_predict",
            "rest",
            f"{url}:predict",
            json.dumps({"instances": xs}).encode(),
            HPT,
            check=rest_list("predictions"),
        ),
        Kind(
            "rest_hpt_classify",
            "rest",
            f"{url}:classify",
            json.dumps({"signature_name": "classify_x_to_y", "examples": examples}).encode(),
            HPT,
            check=rest_list("results"),
        ),
        Kind(
            "rest_hpt_regress",
            "rest",
            f"{url}:regress",
            json.dumps({"signature_name": "regress_x_to_y", "examples": examples}).encode(),
            HPT,
            check=rest_list("results"),
        ),
    ]


def _grpc_scores_named(output: str, reference: np.ndarray) -> Check:
    def check(raw: bytes) -> bool:
        outputs = predict_pb2.PredictResponse.FromString(raw).outputs
        got = codecs.to_ndarray(outputs[output]) if output in outputs else np.zeros(0)
        return _close(
            got.reshape(reference.shape) if got.size == reference.size else got, reference
        )

    return check


def invalid_kinds() -> list[Kind]:
    """Requests a server must refuse, with the code stock TF-Serving answers them with."""
    invalid = frozenset({"INVALID_ARGUMENT"})
    bad_rest = frozenset({"HTTP_400"})
    flat = flat_inputs(10, seed=1)
    wrong_dtype = {**flat, "user_id": flat["user_id"].astype(np.float32)}
    wrong_shape = {**flat, "item_dense": np.zeros((10, 3), np.float32)}
    missing = {k: v for k, v in flat.items() if k != "item_dense"}
    _, two_users = _structured(10, seed=1)
    codecs.from_ndarray(np.asarray([3, 4], np.int64), True, two_users.inputs["user_id"])
    rest = f"/v1/models/{DEMO}:predict"
    grpc_cases = [
        ("bad_grpc_dtype", _bytes(DEMO, wrong_dtype), DEMO, invalid),
        ("bad_grpc_shape", _bytes(DEMO, wrong_shape), DEMO, invalid),
        ("bad_grpc_missing", _bytes(DEMO, missing), DEMO, invalid),
        ("bad_grpc_unknown_model", _bytes(UNKNOWN, flat), UNKNOWN, frozenset({"NOT_FOUND"})),
        ("bad_grpc_struct_two_users", two_users.SerializeToString(), DEMO, invalid),
    ]
    rest_cases = [
        ("bad_rest_malformed_json", rest, b'{"inputs": {"user_id": [3', DEMO, bad_rest),
        ("bad_rest_dtype", rest, _json({**flat, "user_id": np.asarray(["a"] * 10)}), DEMO,
         bad_rest),
        ("bad_rest_missing", rest, _json(missing), DEMO, bad_rest),
        ("bad_rest_unknown_model", f"/v1/models/{UNKNOWN}:predict", _json(flat), UNKNOWN,
         frozenset({"HTTP_404"})),
    ]  # fmt: skip
    kinds = [Kind(name, "grpc", PREDICT, body, model, expect)
             for name, body, model, expect in grpc_cases]  # fmt: skip
    kinds += [Kind(name, "rest", path, body, model, expect)
              for name, path, body, model, expect in rest_cases]  # fmt: skip
    return [dataclasses.replace(k, weight=0.4) for k in kinds]


def _bytes(model: str, inputs: dict[str, np.ndarray]) -> bytes:
    return predict_request(model, inputs).SerializeToString()


def reference_requests() -> dict[int, bytes]:
    """The flat gRPC Predict whose reply is each size's reference score."""
    return {n: _bytes(DEMO, flat_inputs(n, seed=n)) for n in SIZES}
