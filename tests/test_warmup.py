"""Warmup replays assets.extra/tf_serving_warmup_requests before a version becomes AVAILABLE."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2, prediction_log_pb2

from server.flags import StartupError
from tests.conftest import COUNTER, HALF_PLUS_TWO, TWO_VERSIONS, copy_model, wait_for
from tests.test_grpc_api import predict_request
from tests.test_lifecycle import statuses


def counter_log(signature: str) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = "ignored"  # name and version are ignored
    log.predict_log.request.model_spec.signature_name = signature
    return log


def write_warmup(version_dir: Path, records: list[bytes]) -> None:
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def get_counter(running) -> float:  # type: ignore[no-untyped-def]
    response = running.predict.Predict(predict_request("counter", "get_counter"))
    return float(tf.make_ndarray(response.outputs["output"]))


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return copy_model(COUNTER, tmp_path / "counter")


def test_version_is_available_only_after_its_warmup_ran(serve, counter: Path) -> None:
    # The counter model makes warmup observable: each replayed incr_counter adds one, and the
    # first request a client can make already sees all of them.
    write_warmup(counter / "00000123", [counter_log("incr_counter").SerializeToString()] * 3)
    running = serve(model_name="counter", model_base_path=str(counter))
    assert get_counter(running) == 3.0
    page = running.server.metrics.render().decode()
    assert ":tensorflow:serving:model_warmup_records_read{" in page
    assert f'model_path="{counter / "00000123"}",status="OK"}} 3' in page


def test_iterations_and_switching_warmup_off(serve, counter: Path, tmp_path: Path) -> None:
    write_warmup(counter / "00000123", [counter_log("incr_counter").SerializeToString()] * 2)
    running = serve(
        model_name="counter", model_base_path=str(counter), num_request_iterations_for_warmup=3
    )
    assert get_counter(running) == 6.0
    other = copy_model(counter, tmp_path / "other")
    running = serve(model_name="counter", model_base_path=str(other), enable_model_warmup=False)
    assert get_counter(running) == 0.0


def test_all_request_kinds_replay(serve, tmp_path: Path) -> None:
    base = copy_model(HALF_PLUS_TWO, tmp_path / "m")
    records = []
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(predict_request("m", x=[[1.0], [2.0]]))
    records.append(log.SerializeToString())
    for kind, signature in (("classify_log", "classify_x_to_y"), ("regress_log", "regress_x_to_y")):
        log = prediction_log_pb2.PredictionLog()
        request = getattr(log, kind).request
        request.model_spec.signature_name = signature
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(1.0)
        records.append(log.SerializeToString())
    log = prediction_log_pb2.PredictionLog()
    task = log.multi_inference_log.request.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name = "m"
    task.model_spec.signature_name = "regress_x_to_y"
    log.multi_inference_log.request.input.example_list.examples.add().features.feature[
        "x"
    ].float_list.value.append(1.0)
    records.append(log.SerializeToString())
    write_warmup(base / "00000123", records)
    running = serve(model_name="m", model_base_path=str(base))
    assert 'status="OK"} 4' in running.server.metrics.render().decode()


def _bad_startup(serve, base: Path) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(StartupError) as info:
        serve(model_name="m", model_base_path=str(base))
    return str(info.value)


def test_failing_warmup_fails_the_load(serve, tmp_path: Path) -> None:
    base = copy_model(HALF_PLUS_TWO, tmp_path / "m")
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "no_such_signature"
    write_warmup(base / "00000123", [log.SerializeToString()])
    message = _bad_startup(serve, base)
    assert message.startswith("UNKNOWN: 1 servable(s) did not become available")
    assert 'FAILED_PRECONDITION: Serving signature key "no_such_signature" not found.' in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"this is not a tfrecord file at all",
            "Please verify your warmup data is in TFRecord format.",
        ),
        (None, "Number of warmup records exceeds the maximum (1000) at "),
        ("session_run", "UNIMPLEMENTED: Unsupported log_type for warmup: 5"),
        ("garbage_record", "INVALID_ARGUMENT: Failed to parse warmup record: "),
    ],
)
def test_bad_warmup_files(serve, tmp_path: Path, content: object, expected: str) -> None:
    base = copy_model(HALF_PLUS_TWO, tmp_path / "m")
    version = base / "00000123"
    if isinstance(content, bytes):
        (version / "assets.extra").mkdir()
        (version / "assets.extra" / "tf_serving_warmup_requests").write_bytes(content)
    elif content is None:
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(predict_request("m", x=[1.0]))
        write_warmup(version, [log.SerializeToString()] * 1001)
    elif content == "session_run":
        log = prediction_log_pb2.PredictionLog()
        log.session_run_log.SetInParent()
        write_warmup(version, [log.SerializeToString()])
    else:
        write_warmup(version, [b"\xff\xff\xff"])
    assert expected in _bad_startup(serve, base)


def test_failed_warmup_of_a_new_version_keeps_the_old_one(serve, tmp_path: Path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(model_name="default", model_base_path=str(base))
    shutil.copytree(TWO_VERSIONS / "00000124", base / "00000124")
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "nope"
    write_warmup(base / "00000124", [log.SerializeToString()])
    wait_for(
        lambda: statuses(running).get(124, (0,))[0] == get_model_status_pb2.ModelVersionStatus.END
    )
    assert "nope" in statuses(running)[124][2]
    response = running.predict.Predict(predict_request(x=[2.0]))
    assert response.model_spec.version.value == 123
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.version.value = 124
    with pytest.raises(grpc.RpcError):
        running.predict.Predict(request)
