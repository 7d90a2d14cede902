"""The REST API over real HTTP against in-process servers (reference/tfserving.md §3).

Three servers, each started once: `default` (TF-Serving's model server test: half_plus_two as
`default`, Prometheus on, CORS off); `handler` (TF-Serving's REST handler test:
saved_model_half_plus_two_2_versions with policy specific {123} and label Version_Label -> 123,
plus a model with a percent-encoded name, the demo ranking model and an echo model for the
json_tensor examples; CORS on); `slow` (a model whose run time is its input, for the timeout,
and the TF2 model under the name its metadata golden uses). Expected values and error texts
are TF-Serving's (§3.7); JSON is compared parsed, as TF-Serving's tests compare it.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import json
import logging
import re
import socket
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from server.rest import RestServer
from server.routes import Route, handle, parse_route
from tests.conftest import (
    EXPECTED,
    HALF_PLUS_TWO,
    TF2,
    TWO_VERSIONS,
    Running,
    free_port,
    start,
)
from tfrec.base.metrics import Metrics
from tfrec.base.settings import Settings
from tfrec_tools import demo_model

TWO = "saved_model_half_plus_two_2_versions"
# TF-Serving's test name less its `/` (tfrec refuses path separators in model names).
SPECIAL_NAME = "modelname!#$%&'()*+,:;=?@[]"
SPECIAL_ENCODED = "modelname%21%23%24%25%26%27%28%29%2A%2B%2C%3A%3B%3D%3F%40%5B%5D"
# The same name with every character a path may carry raw left raw (`+` must stay `+`).
SPECIAL_RAW = "modelname!%23$%25&'()*+,%3A;=%3F@%5B%5D"
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
STATUS_123 = {
    "model_version_status": [
        {
            "version": "123",
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
    ]
}
SLOW_TIMEOUT_MS = 500


# ----------------------------------------------------------------------------- HTTP client


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)  # accepts NaN / Infinity, as TF-Serving writes them

    @property
    def error(self) -> str:
        return self.json()["error"]


class Http:
    """A plain HTTP/1.1 client: sends the target exactly as written (no re-encoding)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(
        self,
        method: str,
        target: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str] | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> Response:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            reply = conn.getresponse()
            return Response(reply.status, dict(reply.getheaders()), reply.read())
        finally:
            if connection is None:
                conn.close()

    def post(self, target: str, body: Any, **kwargs: Any) -> Response:
        return self("POST", target, body, **kwargs)

    def get(self, target: str, **kwargs: Any) -> Response:
        return self("GET", target, **kwargs)


def expect_error(response: Response, status: int, message: str) -> None:
    assert response.status == status, response.body
    assert response.headers["Content-Type"] == "application/json"
    assert response.error == message


# ----------------------------------------------------------------------------- test models


def build_echo(base: Path) -> Path:
    """Signatures that hand their inputs back: the request/response examples of
    json_tensor_test.cc run through a real model. Plus example-based classify and regress."""

    def spec(dtype: tf.DType, name: str) -> tf.TensorSpec:
        return tf.TensorSpec(None, dtype, name=name)

    def echo(**tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        return {name: tf.identity(t) for name, t in tensors.items()}

    class Echo(tf.Module):
        @tf.function(input_signature=[spec(tf.int32, "x")])
        def ints(self, x):  # type: ignore[no-untyped-def]
            return echo(y=x)

        @tf.function(input_signature=[spec(tf.string, "x")])
        def strings(self, x):  # type: ignore[no-untyped-def]
            return echo(y_bytes=x)

        @tf.function(input_signature=[spec(tf.float32, "x")])
        def floats(self, x):  # type: ignore[no-untyped-def]
            return echo(y=x)

        @tf.function(
            input_signature=[
                spec(tf.int32, "int_tensor"),
                spec(tf.string, "str_tensor"),
                spec(tf.float32, "float_tensor"),
                spec(tf.float64, "dbl_tensor"),
            ]
        )
        def four(self, int_tensor, str_tensor, float_tensor, dbl_tensor):  # type: ignore[no-untyped-def]
            return echo(
                int_tensor=int_tensor,
                str_tensor=str_tensor,
                float_tensor=float_tensor,
                dbl_tensor=dbl_tensor,
            )

        @tf.function(
            input_signature=[
                spec(tf.int32, "int_tensor"),
                spec(tf.string, "str_tensor"),
                spec(tf.string, "bin_tensor"),
            ]
        )
        def three(self, int_tensor, str_tensor, bin_tensor):  # type: ignore[no-untyped-def]
            return echo(int_tensor=int_tensor, str_tensor=str_tensor, bin_tensor=bin_tensor)

        @tf.function(
            input_signature=[
                spec(tf.int32, "int_tensor"),
                spec(tf.string, "str_tensor"),
                spec(tf.float32, "float_tensor"),
                spec(tf.float64, "double_scalar_tensor"),
                spec(tf.string, "str_tensor_bytes"),
            ]
        )
        def five(
            self, int_tensor, str_tensor, float_tensor, double_scalar_tensor, str_tensor_bytes
        ):  # type: ignore[no-untyped-def]
            return echo(
                int_tensor=int_tensor,
                str_tensor=str_tensor,
                float_tensor=float_tensor,
                double_scalar_tensor=double_scalar_tensor,
                str_tensor_bytes=str_tensor_bytes,
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):  # type: ignore[no-untyped-def]
            features = tf.io.parse_example(inputs, {"s": tf.io.FixedLenFeature([3], tf.float32)})
            scores = features["s"]
            labels = tf.constant([["car", "bike", "bus"]])
            return {"classes": tf.tile(labels, [tf.shape(scores)[0], 1]), "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):  # type: ignore[no-untyped-def]
            features = tf.io.parse_example(inputs, {"v": tf.io.FixedLenFeature([], tf.float32)})
            return {"outputs": tf.identity(features["v"])}

    module = Echo()
    names = ["ints", "strings", "floats", "four", "three", "five", "classify", "regress"]
    signatures = {name: getattr(module, name) for name in names}
    tf.saved_model.save(module, str(base / "1"), signatures=signatures)
    return base


def build_slow(base: Path) -> Path:
    """`serving_default`: n (int32 scalar) -> y, after n loop iterations (~3 us each)."""

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="n")])
        def serve(self, n):  # type: ignore[no-untyped-def]
            _, acc = tf.while_loop(
                lambda i, a: i < n,
                lambda i, a: (i + 1, a * 0.5 + 1.0),
                (tf.constant(0), tf.constant(0.0)),
            )
            return {"y": tf.reshape(acc, [1])}

    module = Slow()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base


def config_file(path: Path, entries: list[str]) -> str:
    path.write_text("model_config_list {\n" + "".join(entries) + "}\n")
    return str(path)


def model_entry(name: str, base: Path, extra: str = "") -> str:
    return (
        f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }}\n'
    )


# ----------------------------------------------------------------------------- servers


@dataclasses.dataclass
class Served:
    running: Running
    http: Http


@pytest.fixture(scope="module")
def default() -> Any:
    running = start(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        rest_api_port=free_port(),
        monitoring_config_file=str(EXPECTED / "monitoring_config.txt"),
    )
    yield Served(running, Http(running.server.rest_port))
    running.close()


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("handler")
    demo_model.build(tmp / "demo")
    build_echo(tmp / "echo")
    labels = 'model_version_policy { specific { versions: 123 } } version_labels { key: "Version_Label" value: 123 }'  # noqa: E501
    path = config_file(
        tmp / "models.config",
        [
            model_entry(TWO, TWO_VERSIONS, labels),
            model_entry(SPECIAL_NAME, HALF_PLUS_TWO),
            model_entry("demo", tmp / "demo"),
            model_entry("echo", tmp / "echo"),
        ],
    )
    running = start(
        model_config_file=path,
        allow_version_labels_for_unavailable_models=True,
        rest_api_port=free_port(),
        rest_api_enable_cors_support=True,
    )
    yield Served(running, Http(running.server.rest_port))
    running.close()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("slow")
    build_slow(tmp / "slow")
    path = config_file(
        tmp / "models.config", [model_entry("slow", tmp / "slow"), model_entry(TWO, TF2)]
    )
    running = start(
        model_config_file=path,
        rest_api_port=free_port(),
        rest_api_timeout_in_ms=SLOW_TIMEOUT_MS,
    )
    served = Served(running, Http(running.server.rest_port))
    # The first run builds the session callable: on a loaded machine it may itself time out.
    for _ in range(20):
        if served.http.post("/v1/models/slow:predict", {"inputs": 3}).status == 200:
            break
    yield served
    running.close()


# ------------------------------------------------------------------- §3.7 model server test


def test_model_server_examples(default: Served) -> None:
    http = default.http
    response = http.post("/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"predictions": [3.0, 3.5, 4.0]}
    response = http.post("/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert response.json() == {"outputs": [3.0, 3.5, 4.0]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert http.post("/v1/models/default:classify", body).json() == {"results": [[["", 3.0]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert http.post("/v1/models/default:regress", body).json() == {"results": [3.0]}


def test_status_json(default: Served) -> None:
    for target in ("/v1/models/default", "/v1/models/default/versions/123"):
        response = default.http.get(target)
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == STATUS_123
    # The text itself is protobuf's JSON print, `status` included although it is OK.
    text = default.http.get("/v1/models/default").body.decode()
    assert '"version": "123"' in text and '"error_code": "OK"' in text


def test_metadata_golden(default: Served) -> None:
    response = default.http.get("/v1/models/default/metadata")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == json.loads(
        (EXPECTED / "half_plus_two_model_metadata.json").read_text()
    )


def test_prometheus_endpoint(default: Served) -> None:
    default.http.post("/v1/models/default:predict", {"instances": [1.0]})
    for method in ("GET", "POST"):  # registered for the path, any method
        response = default.http(method, "/monitoring/prometheus/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].split(";")[0] == "text/plain"
        page = response.body.decode()
        assert "# TYPE" in page
        assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in page
    response = default.http.get("/monitoring/prometheus/metrics?x=1")
    assert response.status == 400
    assert response.body == (
        b"Unexpected path: /monitoring/prometheus/metrics?x=1. Should be "
        b"/monitoring/prometheus/metrics"
    )


def test_prometheus_disabled_is_404(handler: Served) -> None:
    response = handler.http.get("/monitoring/prometheus/metrics")
    assert response.status == 404
    assert response.headers["Content-Type"].startswith("text/html")


def _sample(page: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}{{{re.escape(label_text)}}} (\S+)$", page, re.M)
    return float(match[1]) if match else 0.0


def test_metrics_count_rest_requests(default: Served) -> None:
    http = default.http
    count = ":tensorflow:serving:request_count"
    latency = ":tensorflow:serving:request_latency_count"

    def scrape() -> dict[str, float]:
        page = http.get("/monitoring/prometheus/metrics").body.decode()
        return {
            "ok": _sample(page, count, model_name="default", status="OK"),
            "invalid": _sample(page, count, model_name="default", status="INVALID_ARGUMENT"),
            "not_found": _sample(page, count, model_name="nope", status="NOT_FOUND"),
            "preflight": _sample(page, count, model_name="", status="OK"),
            "predict": _sample(
                page, latency, model_name="default", API="predict", entrypoint="REST"
            ),
            "get": _sample(page, latency, model_name="default", API="", entrypoint="REST"),
        }

    before = scrape()
    http.post("/v1/models/default:predict", {"instances": [1.0]})
    http.post("/v1/models/default:predict", {"inputs": [1.0]})
    http.get("/v1/models/default")
    http.post("/v1/models/default:PREDICT", {"instances": [1.0]})
    http.post("/v1/models/nope:predict", {"instances": [1.0]})
    http("OPTIONS", "/v1/models/default", headers={"Origin": "http://example.com"})
    after = scrape()
    deltas = {key: after[key] - before[key] for key in before}
    assert deltas == {
        "ok": 3,
        "invalid": 1,
        "not_found": 1,
        "preflight": 1,
        "predict": 2,
        "get": 1,
    }


# ------------------------------------------------------------------- §3.7 handler test


def test_handler_predict(handler: Served) -> None:
    http = handler.http
    body = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    response = http.post(f"/v1/models/{TWO}:predict", body)
    assert response.json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    for target in (f"/v1/models/{TWO}/versions/123", f"/v1/models/{TWO}/labels/Version_Label"):
        response = http.post(f"{target}:predict", {"instances": [1.0, 2.0]})
        assert response.json() == {"predictions": [2.5, 3.0]}
    target = f"/v1/models/{TWO}/versions/123:predict"
    body = {"signature_name": "serving_default", "instances": [3.0, 4.0]}
    assert http.post(target, body).json() == {"predictions": [3.5, 4.0]}
    body = {"signature_name": "serving_default", "inputs": [3.0, 4.0]}
    assert http.post(target, body).json() == {"outputs": [3.5, 4.0]}


def test_handler_classify_regress(handler: Served) -> None:
    http = handler.http
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    for target in (
        f"/v1/models/{TWO}",
        f"/v1/models/{TWO}/versions/123",
        f"/v1/models/{TWO}/labels/Version_Label",
    ):
        assert http.post(f"{target}:regress", regress).json() == {"results": [42]}
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
    assert http.post(f"/v1/models/{TWO}:classify", classify).json() == {"results": [[["", 12]]]}
    classify["examples"] = [{"x": 10.0}]
    response = http.post(f"/v1/models/{TWO}/labels/Version_Label:classify", classify)
    assert response.json() == {"results": [[["", 7]]]}


def test_handler_status_and_metadata(handler: Served) -> None:
    http = handler.http
    # The label is ignored by status: even an unknown one lists every version.
    for suffix in ("", "/versions/123", "/labels/Version_Label", "/labels/Version_Nonexistent"):
        response = http.get(f"/v1/models/{TWO}{suffix}")
        assert response.status == 200, response.body
        assert response.json() == STATUS_123
    golden = json.loads((EXPECTED / f"{TWO}_metadata.json").read_text())
    for suffix in ("", "/versions/123", "/labels/Version_Label"):
        response = http.get(f"/v1/models/{TWO}{suffix}/metadata")
        assert response.status == 200, response.body
        assert response.json() == golden
    # Metadata honours the label.
    response = http.get(f"/v1/models/{TWO}/labels/Version_Nonexistent/metadata")
    expect_error(response, 400, "Unrecognized servable version label: Version_Nonexistent")


def test_handler_errors(handler: Served) -> None:
    http = handler.http
    target = f"/v1/models/{TWO}:predict"
    for unknown in (
        "/v1/models/foo:predict",
        "/v1/models/foo/versions/50:predict",
        f"/v1/models/{TWO}99:predict",
        f"/v1/models/{TWO}/versions/124:predict",
    ):
        assert http.post(unknown, {"instances": [1]}).status == 404
    expect_error(
        http.post("/v1/models/foo:predict", {"instances": [1]}),
        404,
        "Servable not found for request: Latest(foo)",
    )
    expect_error(
        http.post(f"/v1/models/{TWO}/versions/124:predict", {"instances": [1]}),
        404,
        f"Servable not found for request: Specific({TWO}, 124)",
    )
    expect_error(http.post(target, b""), 400, "JSON Parse error: The document is empty")
    expect_error(
        http.post(target, b"instances = [1, 2]"),
        400,
        "JSON Parse error: Invalid value. at offset: 0",
    )
    response = http.post(target, {"instances": ["x", "y"]})
    expect_error(
        response,
        400,
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "x" Type: String is not of expected type: float',
    )
    response = http.post(
        f"/v1/models/{TWO}/labels/Version_Nonexistent:predict", {"instances": ["x", "y"]}
    )
    expect_error(response, 400, "Unrecognized servable version label: Version_Nonexistent")
    response = http.post(target, b'{ "signature_name": 100 }')
    assert response.status == 400
    assert response.error.endswith("'signature_name' key must be a string value.")
    # The error body as TF-Serving pretty-prints it, quotes escaped.
    response = http.post(target, {"signature_name": "nope", "instances": [1.0]})
    assert response.body == (
        b'{\n    "error": "Serving signature name: \\"nope\\" not found in signature def"\n}'
    )


# ------------------------------------------------------------------- §3.7 json_tensor test


def _echo(http: Http, signature: str, body: dict) -> Response:
    response = http.post("/v1/models/echo:predict", {"signature_name": signature, **body})
    assert response.status == 200, response.body
    return response


def test_json_tensor_request_examples(handler: Served) -> None:
    http = handler.http
    response = _echo(http, "ints", {"instances": [[1, 2], [3, 4], [5, 6]]})
    assert response.json() == {"predictions": [[1, 2], [3, 4], [5, 6]]}
    body = {"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}
    response = _echo(http, "strings", body)  # the output alias ends in _bytes: b64 back
    assert response.json() == {"predictions": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}
    body = {"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}
    assert _echo(http, "strings", body).json() == {"predictions": body["instances"]}
    text = """{"signature_name": "four", "instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    response = http.post("/v1/models/echo:predict", text)
    assert response.status == 200, response.body
    rows = response.json()["predictions"]
    assert [row["int_tensor"] for row in rows] == [
        [[1, 2], [3, 4], [5, 6]],
        [[7, 8], [9, 0], [1, 2]],
    ]
    assert [row["str_tensor"] for row in rows] == [["foo", "bar"], ["baz", "bat"]]
    floats = np.array([row["float_tensor"] for row in rows])
    np.testing.assert_array_equal(floats, [[1.0, np.nan], [2.0, np.inf]])
    np.testing.assert_array_equal([row["dbl_tensor"] for row in rows], [[np.nan], [2.0]])
    body = {
        "inputs": {
            "int_tensor": [[[1, 2], [3, 4], [5, 6]]],
            "str_tensor": ["foo", "bar"],
            "bin_tensor": {"b64": "aGVsbG8="},
        }
    }
    assert _echo(http, "three", body).json() == {
        "outputs": {
            "int_tensor": [[[1, 2], [3, 4], [5, 6]]],
            "str_tensor": ["foo", "bar"],
            "bin_tensor": "hello",
        }
    }
    body = {"inputs": [[[1, 2], [3, 4], [5, 6]]]}  # one input: its name may be left out
    assert _echo(http, "ints", body).json() == {"outputs": [[[1, 2], [3, 4], [5, 6]]]}


def test_json_tensor_response_examples(handler: Served) -> None:
    http = handler.http
    ints = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    assert _echo(http, "ints", {"instances": ints}).json() == {"predictions": ints}
    assert _echo(http, "ints", {"inputs": ints}).json() == {"outputs": ints}
    assert _echo(http, "ints", {"inputs": [1, 2, 3, 4, 5]}).json() == {"outputs": [1, 2, 3, 4, 5]}
    words = [["hello", "world"], ["tf", "serving"]]
    assert _echo(http, "strings", {"instances": words}).json() == {
        "predictions": [
            [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        ]
    }
    five = {
        "int_tensor": ints,
        "str_tensor": [["foo", "bar"], ["baz", "bat"]],
        "float_tensor": [[1.0], [2.0]],
        "double_scalar_tensor": [8.0, 9.0],
        "str_tensor_bytes": words,
    }
    b64 = [
        [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
        [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
    ]
    assert _echo(http, "five", {"inputs": five}).json() == {
        "outputs": {**five, "str_tensor_bytes": b64}
    }
    rows = [{name: value[i] for name, value in five.items()} for i in range(2)]
    assert _echo(http, "five", {"instances": rows}).json() == {
        "predictions": [
            {**rows[0], "str_tensor_bytes": b64[0]},  # double_scalar_tensor: 8.0
            {**rows[1], "str_tensor_bytes": b64[1]},  # double_scalar_tensor: 9.0
        ]
    }
    # Floats read back as the doubles of TF-Serving's `%.6g`-else-`%.9g` text (json_output
    # writes `9000000.0` where TF-Serving writes `9e+06`: same value, other notation).
    body = {"instances": [[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]]}
    expected = json.loads('{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}')
    assert _echo(http, "floats", body).json() == expected
    body_text = '{"signature_name": "floats", "instances": [[NaN, Infinity], [3, -Infinity]]}'
    text = http.post("/v1/models/echo:predict", body_text).body.decode()
    assert re.sub(r"\s", "", text) == '{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'


def test_json_classify_regress_results(handler: Served) -> None:
    http = handler.http
    body = {
        "signature_name": "classify",
        "examples": [{"s": [0.2, 0.7, 0.1]}, {"s": [0.7, 0.1, 0.2]}],
    }
    response = http.post("/v1/models/echo:classify", body)
    assert response.json() == {
        "results": [
            [["car", 0.2], ["bike", 0.7], ["bus", 0.1]],
            [["car", 0.7], ["bike", 0.1], ["bus", 0.2]],
        ]
    }
    body = {"signature_name": "regress", "examples": [{"v": 0.2}, {"v": 0.9}, {"v": 1.0}]}
    assert http.post("/v1/models/echo:regress", body).json() == {"results": [0.2, 0.9, 1.0]}
    text = '{"signature_name": "regress", "examples": [{"v": 0.2}, {"v": Infinity}, {"v": NaN}]}'
    response = http.post("/v1/models/echo:regress", text)
    assert re.sub(r"\s", "", response.body.decode()) == '{"results":[0.2,Infinity,NaN]}'


# ----------------------------------------------------------------------------- structured model


def test_demo_ranking_model_rows_and_columns(handler: Served) -> None:
    rng = np.random.default_rng(3)
    n = 6
    user_dense = rng.random(demo_model.DENSE).astype(np.float32)
    item_dense = rng.random((n, demo_model.DENSE)).astype(np.float32)
    item_id = np.arange(100, 100 + n, dtype=np.int64)
    columns = {
        "user_id": [7] * n,
        "user_dense": [user_dense.tolist()] * n,
        "item_id": item_id.tolist(),
        "item_dense": item_dense.tolist(),
    }
    rows = [{name: values[i] for name, values in columns.items()} for i in range(n)]
    by_rows = handler.http.post("/v1/models/demo:predict", {"instances": rows})
    by_columns = handler.http.post("/v1/models/demo:predict", {"inputs": columns})
    assert by_rows.status == 200 and by_columns.status == 200, (by_rows.body, by_columns.body)
    predictions = np.array(by_rows.json()["predictions"], np.float32)
    outputs = np.array(by_columns.json()["outputs"], np.float32)
    assert predictions.shape == (n, 1)
    np.testing.assert_array_equal(predictions, outputs)
    # The same request over gRPC gives the same scores, to the last bit.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "demo"
    for name, values in columns.items():
        array = np.asarray(values, np.float32 if "dense" in name else np.int64)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    scores = tf.make_ndarray(handler.running.predict.Predict(request).outputs["score"])
    np.testing.assert_array_equal(predictions, scores)
    assert ((predictions > 0) & (predictions < 1)).all()


# ----------------------------------------------------------------------------- URLs


def test_percent_decoded_names_versions_labels(handler: Served) -> None:
    http = handler.http
    for name in (SPECIAL_ENCODED, SPECIAL_RAW):
        response = http.post(f"/v1/models/{name}:predict", {"instances": [2.0]})
        assert response.json() == {"predictions": [3.0]}, response.body
        assert http.get(f"/v1/models/{name}").json() == STATUS_123
        metadata = http.get(f"/v1/models/{name}/versions/123/metadata").json()
        assert metadata["model_spec"]["name"] == SPECIAL_NAME
    # `+` is not a space, and an unknown name comes back decoded.
    expect_error(
        http.post("/v1/models/a+b%20c:predict", {"instances": [1.0]}),
        404,
        "Servable not found for request: Latest(a+b c)",
    )
    for target in (
        f"/v1/models/{TWO}/labels/Version%5FLabel:predict",
        f"/v1/models/{TWO}/versions/00000123:predict",
        f"/V1/MODELS/{TWO}/VERSIONS/123:predict",
        f"/v1/Models/{TWO}/Labels/Version_Label:predict",
    ):
        response = http.post(target, {"instances": [1.0]})
        assert response.json() == {"predictions": [2.5]}, (target, response.body)


MALFORMED = [
    ("GET", "/v1/models/default:predict"),
    ("POST", "/v1/models/default"),
    ("POST", "/v1/models"),
    ("POST", "/v1/models/foo/metadata"),
    ("POST", "/v1/models/foo/version/50:regress"),
    ("GET", "/v1/models/foo/version/50:predict"),
    ("POST", "/v1/models/foo/label/some_label:regress"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
    ("POST", "/v1/models/foo/versions/HELLO:regress"),
    ("POST", "/v1/models/foo/versions/some_label:regress"),
    ("POST", "/v1/models/default/versions/%31%32%33:predict"),
    ("POST", "/v1/models/default:PREDICT"),
    ("POST", "/v1/models/default:predict?x=1"),  # TF-Serving's uri_path() keeps the query
    ("PUT", "/v1/models/default:predict"),
    ("DELETE", "/v1/models/default"),
    ("GET", "/v1/foo"),
    ("POST", "/v1/foo"),
    ("GET", "/v1/models/debug/model_name"),
]


@pytest.mark.parametrize(("method", "target"), MALFORMED)
def test_malformed_urls(default: Served, method: str, target: str) -> None:
    response = default.http(method, target, {"instances": [1.0]})
    expect_error(response, 400, f"Malformed request: {method} {target}")


def test_other_url_errors(default: Served) -> None:
    http = default.http
    expect_error(http.get("/v1/models"), 400, "Missing model name in request.")
    expect_error(http.get("/v1/models/"), 400, "Malformed request: GET /v1/models/")
    response = http.post("/v1/models/foo/versions/18446744073709551615:regress", {"x": 1})
    assert (response.status, response.body) == (400, b"")  # returned before the JSON error
    assert response.headers["Content-Type"] == "application/json"
    response = http.get("/v1/models/default/versions/9223372036854775807")
    expect_error(response, 404, "Could not find version 9223372036854775807 of model default")
    expect_error(http.get("/v1/models/nope"), 404, "Could not find any versions of model nope")
    # The suffix `metadata` is matched case-insensitively but compared exactly: status.
    assert http.get("/v1/models/default/METADATA").json() == STATUS_123
    assert http.post("/V1/MODELS/default:predict", {"instances": [2.0]}).json() == {
        "predictions": [3.0]
    }


@pytest.mark.parametrize(
    "target", ["/", "/index", "/v2/models/default", "/v1", "/monitoring/prometheus/metricsX"]
)
def test_non_api_paths_are_404_pages(default: Served, target: str) -> None:
    for method in ("GET", "POST"):
        response = default.http(method, target)
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"404 Not Found" in response.body


# ----------------------------------------------------------------------------- HTTP details


def test_gzip_bodies(default: Served) -> None:
    http = default.http
    body = gzip.compress(json.dumps({"instances": [2.0, 3.0]}).encode())
    for encoding in ("gzip", "x-gzip"):
        response = http.post(
            "/v1/models/default:predict", body, headers={"Content-Encoding": encoding}
        )
        assert response.json() == {"predictions": [3.0, 3.5]}, response.body
    response = http.post(
        "/v1/models/default:predict", b"not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 400
    assert response.error.startswith("Failed to decompress the gzip request body")
    expect_error(
        http.post("/v1/models/default:predict", body[:-8], headers={"Content-Encoding": "gzip"}),
        400,
        "Failed to decompress the gzip request body: it is truncated",
    )
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(101)) + compressor.flush()
    response = http.post("/v1/models/default:predict", bomb, headers={"Content-Encoding": "gzip"})
    expect_error(
        response,
        413,
        "The request body inflated is larger than --rest_api_max_body_bytes=104857600 bytes",
    )


def test_cors_enabled(handler: Served) -> None:
    http = handler.http
    response = http.post(f"/v1/models/{TWO}:predict", {"instances": [1.0]})
    assert response.status == 200
    assert {k: response.headers[k] for k in CORS} == CORS
    response = http.post("/v1/models/nope:predict", {"instances": [1.0]})
    assert response.status == 404
    assert {k: response.headers[k] for k in CORS} == CORS
    for origin in ("http://example.com", "https://example.com:8443"):
        response = http("OPTIONS", f"/v1/models/{TWO}:predict", headers={"Origin": origin})
        assert (response.status, response.body) == (200, b"")
        assert "Content-Type" not in response.headers
        assert {k: response.headers[k] for k in CORS} == CORS
    for headers in ({}, {"Origin": "example.com"}):
        response = http("OPTIONS", f"/v1/models/{TWO}", headers=headers)
        assert (response.status, response.body) == (400, b"")
        assert "Content-Type" not in response.headers


def test_cors_disabled(default: Served) -> None:
    http = default.http
    for response in (
        http.post("/v1/models/default:predict", {"instances": [1.0]}),
        http.get("/v1/models/nope"),
        http("OPTIONS", "/v1/models/default", headers={"Origin": "http://example.com"}),
    ):
        assert not any(k.startswith("Access-Control") for k in response.headers)
    response = http("OPTIONS", "/v1/models/default", headers={"Origin": "http://example.com"})
    assert (response.status, response.body) == (200, b"")
    assert http("OPTIONS", "/v1/models/default").status == 400


def test_keep_alive_connection(default: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", default.http.port, timeout=30)
    try:
        for x in (1.0, 2.0, 3.0):
            response = default.http.post(
                "/v1/models/default:predict", {"instances": [x]}, connection=conn
            )
            assert response.json() == {"predictions": [0.5 * x + 2]}
    finally:
        conn.close()


def test_expect_100_continue_and_ipv6(default: Served) -> None:
    body = json.dumps({"instances": [2.0]}).encode()
    head = (
        f"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", default.http.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it
        sock.sendall(body)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b'{"predictions":[3.0]}')
    try:  # the port is dual stack where the machine has IPv6
        conn = socket.create_connection(("::1", default.http.port), timeout=10)
    except OSError:
        pytest.skip("no IPv6 loopback")
    conn.close()


def test_bad_input_changes_nothing(handler: Served) -> None:
    http = handler.http
    target = f"/v1/models/{TWO}:predict"
    good = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    expected = http.post(target, good).json()
    bad_bodies: list[bytes | str | dict] = [
        b"\xff\xfe\x00garbage",
        "[" * 100_000,
        '{"instances": [[1.0], [2.0, 3.0]]}',
        '{"instances": [1.0], "inputs": [1.0]}',
        '{"instances": []}',
        '{"inputs": {"b64": "!!"}}',
        {"instances": [{"y": 1.0}]},
        {"inputs": [True, False]},
        '{"instances": [1e400]}',
    ]
    for body in bad_bodies:
        response = http.post(target, body)
        assert response.status == 400, (body, response.body)
        assert "error" in response.json()
    bad_examples = {"signature_name": "regress_x_to_y", "examples": [{"x": [1, "a"]}]}
    assert http.post(f"/v1/models/{TWO}:regress", bad_examples).status == 400
    assert http.post(f"/v1/models/{TWO}:classify", {"examples": []}).status == 400
    assert http.post(target, good).json() == expected
    assert http.get(f"/v1/models/{TWO}").json() == STATUS_123


# ------------------------------------------------------------------- timeout, TF2, lifecycle


def test_timeout_answers_504_and_keeps_serving(slow: Served) -> None:
    http = slow.http
    fast = {"inputs": 3}

    def timeouts() -> float:
        page = slow.running.server.metrics.render().decode()
        count = ":tensorflow:serving:request_count"
        return _sample(page, count, model_name="slow", status="DEADLINE_EXCEEDED")

    before = timeouts()
    started = time.monotonic()
    response = http.post("/v1/models/slow:predict", {"inputs": 600_000})  # ~1.8 s of loop
    elapsed = time.monotonic() - started
    expect_error(
        response,
        504,
        f"Deadline exceeded: the request did not complete within {SLOW_TIMEOUT_MS} ms "
        "(--rest_api_timeout_in_ms)",
    )
    assert elapsed < 1.5  # answered at the deadline, not when the run ends
    # Served while the abandoned run still holds a worker.
    assert http.post("/v1/models/slow:predict", fast).json() == {"outputs": [1.75]}
    assert timeouts() - before == 1


def test_tf2_metadata_golden_without_defaults(slow: Served) -> None:
    def drop_defaults(metadata: dict) -> dict:
        for signature in metadata["metadata"]["signature_def"]["signature_def"].values():
            signature.pop("defaults", None)
        return metadata

    response = slow.http.get(f"/v1/models/{TWO}/metadata")
    assert response.status == 200
    golden = json.loads(
        (EXPECTED / "saved_model_half_plus_two_tf2_2_versions_metadata.json").read_text()
    )
    assert drop_defaults(response.json()) == drop_defaults(golden)


def test_stop_lets_requests_in_flight_finish(slow: Served) -> None:
    settings = Settings(rest_api_port=0, rest_api_num_threads=2, rest_api_timeout_in_ms=0)
    rest = RestServer(slow.running.server.service, Metrics(), settings, None)
    port = rest.start()
    client = Http(port)
    assert client.post("/v1/models/slow:predict", {"inputs": 3}).json() == {"outputs": [1.75]}
    replies: list[Response] = []
    worker = threading.Thread(
        target=lambda: replies.append(client.post("/v1/models/slow:predict", {"inputs": 100_000}))
    )
    worker.start()
    time.sleep(0.1)
    rest.stop(grace_s=10)
    worker.join()
    assert replies[0].status == 200 and replies[0].json() == {"outputs": [2.0]}
    with pytest.raises(ConnectionRefusedError):
        client.get("/v1/models/slow")
    rest.stop(grace_s=1)  # idempotent


def test_unexpected_exception_is_internal(caplog: pytest.LogCaptureFixture) -> None:
    route = parse_route("GET", "/v1/models/m")
    assert route == Route("GET", "/v1/models/m", matched=True, model="m")
    with caplog.at_level(logging.ERROR):
        reply = handle(None, route, bytes)  # type: ignore[arg-type]  # no Service: a bug
    assert reply.code.name == "INTERNAL"
    assert json.loads(reply.body)["error"].startswith("AttributeError: ")
    assert "Traceback" in caplog.text
