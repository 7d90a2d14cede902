"""SIGTERM/SIGINT: stop accepting, finish every request in flight, unload, exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import free_port
from tests.test_cli import ROOT, Process

pytestmark = pytest.mark.slow


def build_slow_model(base: Path) -> Path:
    """y = x after `iters` rounds of a 256x256 matmul loop: request duration set by the client."""

    class Slow(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.eye(256) * 0.5)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 256], tf.float32, name="x"),
                tf.TensorSpec([], tf.int32, name="iters"),
            ]
        )
        def serve(self, x, iters):  # type: ignore[no-untyped-def]
            def body(i, h):  # type: ignore[no-untyped-def]
                return i + 1, tf.tanh(tf.matmul(h, self.w))

            _, h = tf.while_loop(lambda i, h: i < iters, body, [tf.constant(0), x])
            return {"y": x + 0.0 * h}

    model = Slow()
    tf.saved_model.save(model, str(base / "1"), signatures={"serving_default": model.serve})
    return base


def slow_request(iters: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((64, 256), np.float32)))
    request.inputs["iters"].CopyFrom(tf.make_tensor_proto(iters, dtype=tf.int32))
    return request


def iterations_for(seconds: float, stub: prediction_service_pb2_grpc.PredictionServiceStub) -> int:
    start = time.perf_counter()
    stub.Predict(slow_request(2000), timeout=60)
    per_iteration = (time.perf_counter() - start) / 2000
    return max(1, int(seconds / per_iteration))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_under_load_loses_no_request_in_flight(tmp_path: Path, sig: int) -> None:
    base = build_slow_model(tmp_path / "slow")
    port = free_port()
    server = Process(f"--port={port}", "--model_name=slow", f"--model_base_path={base}")
    server.wait_port(port)
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = slow_request(iterations_for(1.5, stub))
        results: list[object] = []

        def call() -> None:
            try:
                response = stub.Predict(request, timeout=60)
                results.append(tf.make_ndarray(response.outputs["y"]).shape)
            except grpc.RpcError as err:
                results.append(err.code())

        clients = [threading.Thread(target=call) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(0.5)  # all four are in flight, none is done
        assert not results
        server.proc.send_signal(sig)
        for client in clients:
            client.join(60)
    output = server.wait_exit()
    assert results == [(64, 256)] * 4, output
    assert server.proc.returncode == 0, output
    assert "draining requests in flight" in output and "Server stopped" in output


def test_signal_during_start_up_exits_cleanly(tmp_path: Path) -> None:
    base = tmp_path / "empty"
    base.mkdir()  # no version: start-up waits for one
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.main",
            f"--port={free_port()}",
            "--model_name=m",
            f"--model_base_path={base}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait until it is polling for versions
        lines.append(line)
        if "No versions of servable m found" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Received a shutdown signal while starting" in rest
