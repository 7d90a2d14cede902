"""Serving structured signatures: their own checks, N=0, the client helper, and dedup."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests import structured_model
from tfrec.base import codecs
from tfrec.client import structured_request

N = 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ranker")
    structured_model.build(base)
    return base


def features(n: int = N, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    user = {
        "user_id": np.int64(rng.integers(0, 100)),
        "user_hist": rng.integers(0, 100, structured_model.SEQ, dtype=np.int64),
    }
    items = {"item_id": rng.integers(0, 500, n, dtype=np.int64)}
    return user, items


def flat_request(user: dict, items: dict, n: int = N) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"
    for name, value in user.items():
        tiled = np.repeat(np.asarray(value)[np.newaxis], n, axis=0)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(tiled))
    for name, value in items.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def scores(response: predict_pb2.PredictResponse) -> np.ndarray:
    return codecs.to_ndarray(response.outputs["score"])


def dedup_count(running, result: str) -> int:  # type: ignore[no-untyped-def]
    labels = f'model_name="ranker",signature="serving_default",result="{result}"'
    for line in running.server.metrics.render().decode().splitlines():
        if line.startswith(":tfrec:structured_dedup{") and labels in line:
            return int(line.rsplit(" ", 1)[1])
    return 0


def test_structured_request_equals_flat(serve, model_dir: Path) -> None:
    running = serve(model_name="ranker", model_base_path=str(model_dir), structured_dedup="off")
    user, items = features()
    flat = running.predict.Predict(flat_request(user, items))
    structured = running.predict.Predict(structured_request("ranker", user, items))
    assert structured.model_spec.signature_name == "serving_default_structured"
    assert scores(flat).shape == (N, 1)
    np.testing.assert_allclose(scores(structured), scores(flat), rtol=1e-6)


def test_structured_requests_are_checked(serve, model_dir: Path) -> None:
    running = serve(model_name="ranker", model_base_path=str(model_dir))
    user, items = features()
    request = structured_request("ranker", user, items)
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(np.array([1, 2], np.int64)))
    with pytest.raises(grpc.RpcError) as info:
        running.predict.Predict(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "Input user_id is a per-user input of structured signature serving_default_structured: "
        "it takes exactly 1 row, got 2 rows"
    )
    request = structured_request("ranker", user, items)
    request.inputs["item_id"].CopyFrom(tf.make_tensor_proto(np.int64(3)))
    with pytest.raises(grpc.RpcError) as info:
        running.predict.Predict(request)
    assert "Input item_id is a per-item input" in info.value.details()
    # The server keeps serving.
    assert scores(running.predict.Predict(structured_request("ranker", user, items))).shape == (
        N,
        1,
    )


def test_zero_candidates_give_empty_outputs(serve, model_dir: Path) -> None:
    running = serve(model_name="ranker", model_base_path=str(model_dir))
    user, _ = features()
    response = running.predict.Predict(
        structured_request("ranker", user, {"item_id": np.zeros(0, np.int64)})
    )
    assert scores(response).shape == (0, 1)


def test_dedup_runs_unchanged_clients_on_the_twin(serve, model_dir: Path) -> None:
    running = serve(model_name="ranker", model_base_path=str(model_dir))
    user, items = features(seed=1)
    expected = scores(running.predict.Predict(structured_request("ranker", user, items)))
    response = running.predict.Predict(flat_request(user, items))
    # The client gets the response of the signature it asked for.
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(scores(response), expected, rtol=1e-6)
    assert dedup_count(running, "hit") == 1
    # User rows that differ: no dedup, and still the right answer.
    request = flat_request(user, items)
    hist = codecs.to_ndarray(request.inputs["user_hist"]).copy()
    hist[3] = (hist[3] + 1) % 100
    request.inputs["user_hist"].CopyFrom(tf.make_tensor_proto(hist))
    mixed = scores(running.predict.Predict(request))
    assert dedup_count(running, "miss") == 1
    np.testing.assert_allclose(mixed[:3], expected[:3], rtol=1e-6)
    assert not np.allclose(mixed[3], expected[3])


def test_dedup_can_be_switched_off(serve, model_dir: Path) -> None:
    running = serve(model_name="ranker", model_base_path=str(model_dir), structured_dedup="off")
    user, items = features()
    running.predict.Predict(flat_request(user, items))
    assert dedup_count(running, "hit") == 0 and dedup_count(running, "miss") == 0


def test_structured_and_deduped_runs_pass_the_batching_stage(serve, model_dir: Path) -> None:
    """With --enable_batching, twin runs (user batch 1, items N) are not concatenated with
    others: they go past the batch queue, structured or deduped, and flat misses still batch."""
    running = serve(model_name="ranker", model_base_path=str(model_dir), enable_batching=True)
    user, items = features(seed=2)
    expected = scores(running.predict.Predict(structured_request("ranker", user, items)))
    deduped = running.predict.Predict(flat_request(user, items))
    np.testing.assert_allclose(scores(deduped), expected, rtol=1e-6)
    assert dedup_count(running, "hit") == 1
    request = flat_request(user, items)
    hist = codecs.to_ndarray(request.inputs["user_hist"]).copy()
    hist[0] = (hist[0] + 1) % 100
    request.inputs["user_hist"].CopyFrom(tf.make_tensor_proto(hist))
    mixed = scores(running.predict.Predict(request))  # a miss: the flat run is batched
    np.testing.assert_allclose(mixed[1:], expected[1:], rtol=1e-6)
