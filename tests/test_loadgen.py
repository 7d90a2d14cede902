"""tfrec_tools.loadgen: encodings, results, closed and open loops over gRPC and REST, error codes,
and the blocking Endpoint against a real in-process tfrec server.

gRPC load runs against the bare echo servicer of benchmarks/grpc_floor.py in-process; REST
against a small stand-in for TF-Serving's REST API (aiohttp, in a thread), and against
tfrec's own REST API once `server.rest` exists.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from aiohttp import web
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks.grpc_floor import EchoServicer
from tests.conftest import HALF_PLUS_TWO, Running, free_port
from tfrec.base import codecs
from tfrec_tools import loadgen


def request(x: np.ndarray, model: str = "m", signature: str = "") -> predict_pb2.PredictRequest:
    out = predict_pb2.PredictRequest()
    out.model_spec.name = model
    out.model_spec.signature_name = signature
    codecs.from_ndarray(x, tensor_content=x.dtype != object, proto=out.inputs["x"])
    return out


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    """A bare PredictionService echoing input x as output y (grpc_floor's servicer)."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


class FakeRest:
    """TF-Serving's REST API in miniature: model `m` echoes its `x` input as the only output."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict] = []
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    def _serve(self, started: threading.Event) -> None:
        app = web.Application()
        app.router.add_get("/v1/models/{name}", self._status)
        app.router.add_get("/v1/models/{name}/metadata", self._metadata)
        app.router.add_post("/v1/models/{name}", self._predict)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    @staticmethod
    def _known(request: web.Request) -> bool:
        return request.match_info["name"].split(":")[0] == "m"

    async def _status(self, request: web.Request) -> web.Response:
        if not self._known(request):
            return web.json_response(
                {"error": "Servable not found for request: Latest(x)"}, status=404
            )
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    async def _metadata(self, request: web.Request) -> web.Response:
        sig = {"inputs": {"x": {"dtype": "DT_FLOAT", "name": "x:0"}}, "method_name": "p"}
        defs = {"signature_def": {"serving_default": sig}}
        return web.json_response({"metadata": {"signature_def": defs}})

    async def _predict(self, request: web.Request) -> web.Response:
        if not self._known(request):
            return web.json_response({"error": "Servable not found"}, status=404)
        doc = json.loads(await request.read())
        self.bodies.append(doc)
        return web.json_response({"outputs": doc["inputs"]["x"]})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def fake_rest() -> Iterator[FakeRest]:
    server = FakeRest()
    yield server
    server.close()


def test_rest_body_is_tf_serving_columnar_json() -> None:
    strings = np.array([[b"US"], [b"\xff\x00"]], dtype=object)
    body = json.loads(loadgen.rest_body(request(strings, signature="s")))
    assert body == {"signature_name": "s", "inputs": {"x": [["US"], [{"b64": "/wA="}]]}}
    floats = np.array([[0.5, 1.0]], np.float32)
    assert json.loads(loadgen.rest_body(request(floats))) == {"inputs": {"x": [[0.5, 1.0]]}}
    target = loadgen.Target("h:1", "other")
    parsed = predict_pb2.PredictRequest.FromString(loadgen.encode(target, request(floats)))
    assert parsed.model_spec.name == "other"
    with pytest.raises(ValueError, match="protocol"):
        loadgen.Target("h:1", "m", "http")


def test_results_merge_and_summarize() -> None:
    def result(latencies: list[float], errors: dict[str, int]) -> loadgen.LoadResult:
        n = len(latencies) + sum(errors.values())
        return loadgen.LoadResult(
            "grpc", "closed", 2, 0.0, 1.0, np.array(latencies), np.array([]), errors, n, n * 10, 0.1
        )

    merged = loadgen.LoadResult.merge([result([1, 2, 3], {"UNAVAILABLE": 1}), result([4], {})])
    summary = merged.summary()
    assert (merged.ok, merged.sent, merged.duration_s) == (4, 5, 2.0)
    assert summary["errors"] == {"UNAVAILABLE": 1} and summary["throughput_rps"] == 2.0
    assert summary["p50_us"] == 2.5 and summary["bytes_per_request"] == 10
    assert summary["client_cpu_us_per_request"] == pytest.approx(0.2 / 5 * 1e6)
    empty = result([], {"INTERNAL": 2}).summary()
    assert empty["ok"] == 0 and np.isnan(empty["p50_us"])


def test_closed_loop_over_grpc_counts_every_request(echo: str) -> None:
    target = loadgen.Target(echo, "m")
    bodies = [loadgen.encode(target, request(np.full((2, 3), i, np.float32))) for i in range(3)]
    seen: list[float] = []
    result = loadgen.run_closed(
        target, bodies, 4, 30.0, max_requests=60, warmup=3, progress=seen.append
    )
    assert (result.ok, result.sent, result.errors) == (60, 60, {})
    assert result.bytes_sent == sum(len(bodies[i % 3]) for i in range(60))
    assert result.concurrency == 4 and result.mode == "closed"
    assert np.all(result.latencies_us > 0) and result.throughput > 0
    assert result.client_cpu_s > 0 and seen and seen[-1] <= 1.0


def test_open_loop_keeps_its_rate_and_records_send_lag(echo: str) -> None:
    target = loadgen.Target(echo, "m")
    body = loadgen.encode(target, request(np.ones((1, 1), np.float32)))
    result = loadgen.run_open(target, [body], rate=200, duration_s=0.5)
    assert result.sent == 100 and result.ok == 100 and result.rate == 200
    assert result.send_lag_us.size == 100 and 0.3 < result.duration_s < 5
    assert result.summary()["send_lag_p99_us"] >= 0


def test_errors_are_counted_by_code(echo: str) -> None:
    down = loadgen.Target(f"127.0.0.1:{free_port()}", "m")
    result = loadgen.run_closed(down, [b""], 1, 10.0, max_requests=3, timeout_s=5)
    assert result.ok == 0 and result.errors == {"UNAVAILABLE": 3}
    no_input = loadgen.Target(echo, "m")  # the echo servicer fails without input x
    result = loadgen.run_closed(no_input, [request_without_x()], 2, 10.0, max_requests=4)
    assert result.errors == {"UNKNOWN": 4}


def request_without_x() -> bytes:
    out = predict_pb2.PredictRequest()
    out.model_spec.name = "m"
    return out.SerializeToString()


def test_rest_closed_and_open_loops_and_endpoint(fake_rest: FakeRest) -> None:
    target = loadgen.Target(fake_rest.address, "m", "rest")
    x = np.array([[1.5, 2.5]], np.float32)
    bodies = [loadgen.encode(target, request(x))]
    result = loadgen.run_closed(target, bodies, 2, 30.0, max_requests=20)
    assert (result.ok, result.errors) == (20, {})
    assert result.bytes_sent == 20 * len(bodies[0])
    assert loadgen.run_open(target, bodies, 100, 0.2).ok == 20
    with loadgen.Endpoint(target) as endpoint:
        endpoint.check_model()
        assert list(endpoint.signatures()) == ["serving_default"]
        np.testing.assert_array_equal(endpoint.predict(request(x))["outputs"], x)
    unknown = loadgen.Target(fake_rest.address, "nope", "rest")
    with pytest.raises(loadgen.LoadError, match="HTTP 404: Servable not found"):
        loadgen.Endpoint(unknown).check_model()
    result = loadgen.run_closed(unknown, bodies, 1, 30.0, max_requests=2)
    assert result.errors == {"HTTP_404": 2}
    down = loadgen.Target(f"127.0.0.1:{free_port()}", "m", "rest")
    with pytest.raises(loadgen.LoadError, match="cannot reach"):
        loadgen.Endpoint(down).check_model()
    assert loadgen.run_closed(down, bodies, 1, 30.0, max_requests=2).errors == {"UNAVAILABLE": 2}


def test_endpoint_against_tfrec(serve: Callable[..., Running]) -> None:
    running = serve(model_name="half", model_base_path=str(HALF_PLUS_TWO))
    target = loadgen.Target(f"127.0.0.1:{running.port}", "half")
    with loadgen.Endpoint(target) as endpoint:
        endpoint.check_model()
        assert "serving_default" in endpoint.signatures()
        y = endpoint.predict(request(np.array([[2.0]], np.float32)))["y"]
        np.testing.assert_allclose(y, [[3.0]])
    with pytest.raises(loadgen.LoadError, match="NOT_FOUND"):
        loadgen.Endpoint(loadgen.Target(target.address, "nope")).check_model()


@pytest.mark.skipif(
    importlib.util.find_spec("server.rest") is None, reason="tfrec's REST API has not landed"
)
def test_rest_load_against_tfrec(serve: Callable[..., Running]) -> None:
    rest_port = free_port()
    serve(model_name="half", model_base_path=str(HALF_PLUS_TWO), rest_api_port=rest_port)
    target = loadgen.Target(f"127.0.0.1:{rest_port}", "half", "rest")
    x = np.array([[2.0], [4.0]], np.float32)
    with loadgen.Endpoint(target) as endpoint:
        endpoint.check_model()
        np.testing.assert_allclose(endpoint.predict(request(x, "half"))["outputs"], [[3.0], [4.0]])
    result = loadgen.run_closed(
        target, [loadgen.encode(target, request(x))], 2, 30.0, max_requests=20
    )
    assert (result.ok, result.errors) == (20, {})
