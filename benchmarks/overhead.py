"""Serving overhead, side by side in one run: tfrec over gRPC against its floors.

Three arms per case, alternating in rounds so machine drift hits all of them alike:
- `in_process`: the same signature run in this process through a session callable (the
  cheapest way to run it from Python; the network and the server excluded);
- `tfrec_grpc`: a `tfrec_model_server` subprocess, Predict over a real gRPC channel with the
  stock client stubs (request built once, as `tf.make_tensor_proto` builds it);
- `grpc_floor`: a bare grpcio PredictionService subprocess (benchmarks/grpc_floor.py) that
  decodes the same input and returns it; where the model's in-process p50 exceeds 1 ms, it
  also sleeps that long and replies with the model's output size: a server with zero
  overhead of its own.

Cases: `half_plus_two` with x=[[2.0]] (TF-Serving's test model); `mlp_1000x200`: a 1000x200
float32 request into a ranking MLP (200 -> 1024 -> 512 -> 256 -> 1, DLRM-sized); and
`half_plus_two_1000x200`, the same 800 KB request into half_plus_two, which returns 800 KB
(nearly pure transport). Latency is
end-to-end at concurrency 1, client in this process. Results go to
`benchmarks/results/overhead-<date>.json` and to the table in `benchmarks/README.md`.

    python benchmarks/overhead.py [--requests 1000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from benchmarks import report  # noqa: E402
from server.main import tune_malloc  # noqa: E402
from tfrec.serving.servable import Servable, session_config  # noqa: E402

HALF_PLUS_TWO = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu"
free_port = report.free_port
# Below this a model's run is left out of the floor: time.sleep itself costs ~50 us.
MIN_FLOOR_DELAY_US = 1000.0


def build_mlp(base: Path) -> Path:
    """A ranking-style MLP over a [N, 200] float32 input, exported as base/1."""

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            init = tf.random_normal_initializer(stddev=0.05, seed=1)
            self.layers = [
                (tf.Variable(init([a, b])), tf.Variable(tf.zeros([b])))
                for a, b in [(200, 1024), (1024, 512), (512, 256), (256, 1)]
            ]

        @tf.function(input_signature=[tf.TensorSpec([None, 200], tf.float32, name="x")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            for i, (w, b) in enumerate(self.layers):
                x = tf.matmul(x, w) + b
                x = tf.nn.relu(x) if i < 3 else tf.sigmoid(x)
            return {"y": x}

    model = Mlp()
    tf.saved_model.save(model, str(base / "1"), signatures={"serving_default": model.serve})
    return base


class Subprocess:
    def __init__(self, args: list[str], port: int) -> None:
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 2**31 - 1)]
        )
        try:
            grpc.channel_ready_future(self.channel).result(timeout=120)
        except grpc.FutureTimeoutError:
            self.proc.kill()
            raise SystemExit(f"{args} did not start:\n{self.proc.communicate()[1]}") from None
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(60)


def request_for(model: str, x: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request


def measure(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


def run_case(
    name: str, base: Path, x: np.ndarray, floor: Subprocess, requests: int, rounds: int
) -> dict:
    port = free_port()
    tfrec = Subprocess(
        [
            sys.executable,
            "-m",
            "server.main",
            f"--port={port}",
            "--model_name=m",
            f"--model_base_path={base}",
        ],
        port,
    )
    try:
        servable = Servable.load(
            "m",
            1,
            next(p for p in base.iterdir() if p.name.isdigit()),
            ["serve"],
            session_config(0, 0),
        )
        signature = servable.signatures["serving_default"]
        feeds = {signature.inputs["x"]: x}
        fetches = list(signature.outputs.values())
        request = request_for("m", x)
        expected = servable.run(feeds, fetches)[0]
        got = tf.make_ndarray(tfrec.stub.Predict(request).outputs["y"])
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        run_us = float(np.median(measure(lambda: servable.run(feeds, fetches), 50)))
        floor_request = request_for("m", x)
        if expected.shape != x.shape:
            floor_request.inputs["reply"].CopyFrom(tf.make_tensor_proto(expected))
        if run_us > MIN_FLOOR_DELAY_US:
            floor_request.inputs["delay_us"].CopyFrom(tf.make_tensor_proto(run_us))
        arms: dict[str, Callable[[], object]] = {
            "in_process": lambda: servable.run(feeds, fetches),
            "tfrec_grpc": lambda: tfrec.stub.Predict(request),
            "grpc_floor": lambda: floor.stub.Predict(floor_request),
        }
        samples: dict[str, list[float]] = {arm: [] for arm in arms}
        for call in arms.values():  # warm up every path
            measure(call, 50)
        per_round = max(1, requests // rounds)
        for _ in range(rounds):
            for arm, call in arms.items():
                samples[arm].extend(measure(call, per_round))
        servable.close()
    finally:
        tfrec.close()
    return {
        "case": name,
        "input_shape": list(x.shape),
        "floor_delay_us": run_us,
        "request_bytes": request.ByteSize(),
        "arms": {arm: report.summarize(values) for arm, values in samples.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per arm and case")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    tune_malloc()  # the in-process arm gets tfrec's allocator settings too
    floor_port = free_port()
    floor = Subprocess(
        [sys.executable, "-m", "benchmarks.grpc_floor", f"--port={floor_port}"], floor_port
    )
    rng = np.random.default_rng(0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlp = build_mlp(Path(tmp) / "mlp")
            cases = [
                ("half_plus_two", HALF_PLUS_TWO, np.array([[2.0]], np.float32)),
                ("mlp_1000x200", mlp, rng.random((1000, 200), np.float32)),
                ("half_plus_two_1000x200", HALF_PLUS_TWO, rng.random((1000, 200), np.float32)),
            ]
            results = []
            for name, base, x in cases:
                print(f"[overhead] {name}: {args.requests} requests per arm", file=sys.stderr)
                results.append(run_case(name, base, x, floor, args.requests, args.rounds))
    finally:
        floor.close()
    for case in results:
        arms = case["arms"]
        case["ratios"] = {
            "tfrec_over_floor_p50": arms["tfrec_grpc"]["p50_us"] / arms["grpc_floor"]["p50_us"],
            "tfrec_over_in_process_p50": arms["tfrec_grpc"]["p50_us"]
            / arms["in_process"]["p50_us"],
        }
    output = {
        "benchmark": "overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/overhead.py " + " ".join(sys.argv[1:]),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "cases": results,
    }
    report.publish("overhead", output, report.overhead_table(output))


if __name__ == "__main__":
    main()
