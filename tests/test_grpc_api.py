"""PredictionService and ModelService over a real gRPC channel with the stock TF-Serving stubs.

The expected values are TF-Serving's own (reference/tfserving.md §6): half_plus_two gives
y = 0.5x + 2, half_plus_three y = 0.5x + 3, all at version 123.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from tests.conftest import EXPECTED, HALF_PLUS_THREE, HALF_PLUS_TWO, TF2, Running, start


@pytest.fixture(scope="module")
def server():
    running = start(model_name="default", model_base_path=str(HALF_PLUS_TWO))
    yield running
    running.close()


@pytest.fixture(scope="module")
def tf2_server():
    running = start(model_name="default", model_base_path=str(TF2))
    yield running
    running.close()


def predict_request(name: str = "default", signature: str = "", **inputs: object):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature:
        request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        array = np.asarray(value)
        dtype = tf.float32 if array.dtype == np.float64 else None
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
    return request


def example_input(message, **features: float) -> None:
    example = message.input.example_list.examples.add()
    for key, value in features.items():
        example.features.feature[key].float_list.value.append(value)


def expect_error(call, request, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert info.value.code() == code, info.value.details()
    assert info.value.details() == message


# ---------------------------------------------------------------------------- Predict


def test_predict_half_plus_two(server: Running) -> None:
    response = server.predict.Predict(predict_request(x=[2.0]))
    assert response.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(response.outputs["y"].float_val) == [3.0]
    assert not response.outputs["y"].tensor_content
    spec = response.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == (
        "default",
        "serving_default",
        123,
    )


def test_predict_with_output_filter_and_batch(server: Running) -> None:
    request = predict_request(x=[[1.0], [2.0], [5.0]])
    request.output_filter.append("y")
    y = tf.make_ndarray(server.predict.Predict(request).outputs["y"])
    np.testing.assert_array_equal(y, [[2.5], [3.0], [4.5]])


def test_shapes_are_not_validated(server: Running) -> None:
    # TF-Serving runs a [3] tensor through a [-1,1] input: elementwise models just work.
    y = tf.make_ndarray(server.predict.Predict(predict_request(x=[1.0, 2.0, 5.0])).outputs["y"])
    np.testing.assert_array_equal(y, [2.5, 3.0, 4.5])


def test_predict_specific_version_and_other_signature(server: Running) -> None:
    request = predict_request(signature="regress_x2_to_y3", inputs=[[4.0]])
    request.model_spec.version.value = 123
    response = server.predict.Predict(request)
    assert tf.make_ndarray(response.outputs["outputs"]).tolist() == [[5.0]]
    assert response.model_spec.signature_name == "regress_x2_to_y3"


def test_tf2_model_and_its_input_default(tf2_server: Running) -> None:
    response = tf2_server.predict.Predict(predict_request(x=[2.0]))
    assert list(response.outputs["y"].float_val) == [3.0]
    response = tf2_server.predict.Predict(predict_request())
    assert list(response.outputs["y"].float_val) == [2.0]


def test_stateful_counter_model(serve) -> None:
    from tests.conftest import COUNTER

    running = serve(model_name="counter", model_base_path=str(COUNTER))

    def call(signature: str, output_filter: str = "", **inputs: object) -> float:
        request = predict_request("counter", signature, **inputs)
        if output_filter:
            request.output_filter.append(output_filter)
        output = running.predict.Predict(request).outputs["output"]
        assert output.dtype == types_pb2.DT_FLOAT  # a DT_FLOAT_REF tensor is served as float
        return float(tf.make_ndarray(output))

    assert call("get_counter") == 0
    assert call("incr_counter") == 1
    assert call("reset_counter") == 0
    assert call("incr_counter", output_filter="output") == 1
    assert call("incr_counter_by", delta=np.float32(3)) == 4


def test_tensor_content_outputs_on_request(serve) -> None:
    running = serve(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        enable_serialization_as_tensor_content=True,
    )
    output = running.predict.Predict(predict_request(x=[2.0, 4.0])).outputs["y"]
    assert not output.float_val
    assert np.frombuffer(output.tensor_content, np.float32).tolist() == [3.0, 4.0]


def test_two_models_from_a_config_file(serve, tmp_path) -> None:
    template = (EXPECTED / "good_model_config.txt").read_text()
    config = tmp_path / "models.config"
    config.write_text(
        template.replace("${TEST_HALF_PLUS_TWO_DIR}", str(HALF_PLUS_TWO)).replace(
            "${TEST_HALF_PLUS_THREE_DIR}", str(HALF_PLUS_THREE)
        )
    )
    running = serve(model_config_file=str(config))
    two = running.predict.Predict(predict_request("half_plus_two", x=[2.0]))
    three = running.predict.Predict(predict_request("half_plus_three", x=[2.0]))
    assert list(two.outputs["y"].float_val) == [3.0]
    assert list(three.outputs["y"].float_val) == [4.0]


# ---------------------------------------------------------------------------- Classify etc.


@pytest.mark.parametrize("fixture", ["server", "tf2_server"])
def test_classify_and_regress(fixture: str, request: pytest.FixtureRequest) -> None:
    running: Running = request.getfixturevalue(fixture)
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "default"
    classify.model_spec.signature_name = "classify_x_to_y"
    example_input(classify, x=2.0)
    response = running.predict.Classify(classify)
    assert len(response.result.classifications) == 1
    (cls,) = response.result.classifications[0].classes
    assert (cls.label, cls.score) == ("", 3.0)
    spec = response.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == (
        "default",
        "classify_x_to_y",
        123,
    )

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    example_input(regress, x=2.0)
    example_input(regress, x=80.0)
    values = [r.value for r in running.predict.Regress(regress).result.regressions]
    assert values == [3.0, 42.0]


def test_regress_with_context_merges_features(server: Running) -> None:
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    with_context = regress.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(10.0)
    with_context.examples.add()
    values = [r.value for r in server.predict.Regress(regress).result.regressions]
    assert values == [7.0]


def test_multi_inference(server: Running) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in [
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ]:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
    example_input(request, x=2.0)
    response = server.predict.MultiInference(request)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in response.results] == [
        "regress_x_to_y",
        "classify_x_to_y",
    ]
    assert all(r.model_spec.version.value == 123 for r in response.results)


def test_get_model_status(server: Running) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    (status,) = server.models.GetModelStatus(request).model_version_status
    assert status.version == 123
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_get_model_metadata_matches_golden(server: Running) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    response = server.predict.GetModelMetadata(request)
    assert response.model_spec.name == "default" and response.model_spec.version.value == 123
    assert not response.model_spec.signature_name
    assert list(response.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    golden = json.loads((EXPECTED / "half_plus_two_model_metadata.json").read_text())
    expected = json_format.ParseDict(
        golden["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
    )
    assert signatures == expected


# ---------------------------------------------------------------------------- error table (§2)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_missing_and_empty_model_spec(server: Running) -> None:
    expect_error(server.predict.Predict, predict_pb2.PredictRequest(), INVALID, "Missing ModelSpec")
    expect_error(
        server.predict.Predict, predict_request(""), INVALID, "ModelSpec has no name specified."
    )


def test_unknown_model_version_label(server: Running) -> None:
    expect_error(
        server.predict.Predict,
        predict_request("nope", x=[1.0]),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )
    request = predict_request(x=[1.0])
    request.model_spec.version.value = 999
    expect_error(
        server.predict.Predict,
        request,
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(default, 999)",
    )
    request = predict_request(x=[1.0])
    request.model_spec.version_label = "stable"
    expect_error(
        server.predict.Predict, request, INVALID, "Unrecognized servable version label: stable"
    )


def test_unknown_signature_per_rpc(server: Running) -> None:
    expect_error(
        server.predict.Predict,
        predict_request(signature="nope", x=[1.0]),
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "default"
    classify.model_spec.signature_name = "nope"
    example_input(classify, x=1.0)
    expect_error(
        server.predict.Classify, classify, INVALID, "No signature was found with the name: nope"
    )
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name = "default"
    task.model_spec.signature_name = "nope"
    example_input(multi, x=1.0)
    expect_error(
        server.predict.MultiInference,
        multi,
        INVALID,
        "Requested signature not found in model graph: nope",
    )
    task.model_spec.signature_name = "serving_default"
    task.method_name = "tensorflow/serving/predict"
    expect_error(
        server.predict.MultiInference,
        multi,
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )


def test_input_count_and_name_errors(server: Running, tf2_server: Running) -> None:
    expect_error(
        server.predict.Predict,
        predict_request(x=[1.0], unknown_key1=[1.0], unknown_key2=[1.0]),
        INVALID,
        "input size does not match signature: 3!=1 len({unknown_key1,unknown_key2,x}) != "
        "len({x}). Sent extra: {unknown_key1,unknown_key2}. Missing but required: {}.",
    )
    expect_error(
        server.predict.Predict,
        predict_request(),
        INVALID,
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
        "Missing but required: {x}.",
    )
    expect_error(
        server.predict.Predict,
        predict_request(z=[1.0]),
        INVALID,
        "Signature input alias: x(feed name: x:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {z}, or default input alias set: ",
    )
    expect_error(
        tf2_server.predict.Predict,
        predict_request(z=[1.0]),
        INVALID,
        "Inputs contains invalid name. Used request inputs: , request input: z",
    )


def test_tensor_and_dtype_errors(server: Running) -> None:
    request = predict_request(x=[1.0, 2.0])
    request.inputs["x"].tensor_content = b"\x00" * 7
    expect_error(server.predict.Predict, request, INVALID, "tensor parsing error: x")
    request.inputs["x"].tensor_shape.dim[0].size = 2**40
    expect_error(server.predict.Predict, request, INVALID, "tensor parsing error: x")
    expect_error(
        server.predict.Predict,
        predict_request(x=np.array([b"a"], dtype=object)),
        INVALID,
        "Expects arg[0] to be float but string is provided",
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], dtype=np.float64)))
    expect_error(
        server.predict.Predict,
        request,
        INVALID,
        "Expects arg[0] to be float but double is provided",
    )
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([True])))
    expect_error(
        server.predict.Predict, request, INVALID, "Expects arg[0] to be float but bool is provided"
    )


def test_output_filter_errors(server: Running) -> None:
    request = predict_request(x=[1.0])
    request.output_filter.append("output_filter")
    expect_error(
        server.predict.Predict,
        request,
        INVALID,
        "output tensor alias not found in signature: output_filter Outputs expected to be in "
        "the set {y}.",
    )
    request = predict_request(x=[1.0])
    request.output_filter.extend(["y", "y"])
    expect_error(server.predict.Predict, request, INVALID, "duplicate output tensor alias: y")


def test_long_messages_are_truncated(server: Running) -> None:
    request = predict_request(x=[1.0])
    request.output_filter.append("a" * 2000)
    with pytest.raises(grpc.RpcError) as info:
        server.predict.Predict(request)
    assert info.value.details().endswith("...TRUNCATED")
    assert len(info.value.details()) == 1024 + len("...TRUNCATED")


def test_classify_regress_input_errors(server: Running) -> None:
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    expect_error(server.predict.Regress, regress, INVALID, "Input is empty.")
    expect_error(
        server.predict.Regress, regression_pb2.RegressionRequest(), INVALID, "Missing ModelSpec"
    )
    # serving_default has input "x", not "inputs": not a regression signature.
    regress.model_spec.signature_name = "serving_default"
    example_input(regress, x=1.0)
    with pytest.raises(grpc.RpcError) as info:
        server.predict.Regress(regress)
    assert info.value.code() == INVALID
    assert info.value.details().startswith("No regression inputs found in SignatureDef: inputs {")


def test_metadata_and_status_errors(server: Running) -> None:
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "default"
    expect_error(
        server.predict.GetModelMetadata,
        metadata,
        INVALID,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    metadata.metadata_field.append("nope")
    expect_error(
        server.predict.GetModelMetadata, metadata, INVALID, "Metadata field nope is not supported"
    )
    status = get_model_status_pb2.GetModelStatusRequest()
    expect_error(server.models.GetModelStatus, status, INVALID, "Missing ModelSpec")
    status.model_spec.name = "nope"
    expect_error(
        server.models.GetModelStatus,
        status,
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )
    status.model_spec.name = "default"
    status.model_spec.version.value = 7
    expect_error(
        server.models.GetModelStatus,
        status,
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 7 of model default",
    )


def test_server_keeps_serving_after_errors(server: Running) -> None:
    response = server.predict.Predict(predict_request(x=[4.0]))
    assert list(response.outputs["y"].float_val) == [4.0]
