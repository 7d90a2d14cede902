"""REST against gRPC on one server: the same 1000x200 float32 Predict into a ranking MLP.

One `tfrec_model_server` subprocess serves the MLP of `benchmarks/overhead.py` on both ports;
the client (this process) sends the same request, built once, over each, arms alternating in
rounds at concurrency 1:
- `grpc`: the stock PredictionService stub, the request as `tf.make_tensor_proto` builds it;
- `rest_stdlib`: `POST /v1/models/m:predict` with `{"instances": ...}` as `json.dumps(x.tolist())`
  writes it (what `requests.post(json=...)` sends: float32 values printed as doubles);
- `rest_float32`: the same body with the float32 values in their shortest text (`%.9g` at
  most, as TF-Serving itself prints floats): half the bytes.
Both REST bodies go over one keep-alive `http.client` connection; the client decodes each JSON
reply (the gRPC stub decodes its protobuf reply too). Client-side JSON encoding is excluded.

Where the REST time goes is sampled between the rounds, in this process, on the same bodies
with the code the server runs (`server.json_codec`, one session run of the model): the rest of
the REST p50 is HTTP (the body over loopback, aiohttp, the worker hand-off).
Results go to `benchmarks/results/rest-<date>.json` and the `rest` table of the README.

    python benchmarks/rest_vs_grpc.py [--requests 1000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.overhead_arms import Subprocess, build_mlp, measure, request_for  # noqa: E402
from server import json_codec  # noqa: E402
from server.main import tune_malloc  # noqa: E402
from tfrec.serving.servable import Servable, session_config  # noqa: E402

TARGET_RATIO = 3.0
PATH = "/v1/models/m:predict"


class RestClient:
    """One keep-alive HTTP/1.1 connection; `post` returns the decoded JSON reply."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Content-Type": "application/json"}

    def post(self, body: bytes) -> object:
        self.conn.request("POST", PATH, body=body, headers=self.headers)
        reply = self.conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"REST {reply.status}: {data[:300]!r}")
        return orjson.loads(data)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.conn.request("GET", "/v1/models/m")
                reply = self.conn.getresponse()
                reply.read()
                if reply.status == 200:
                    return
            except OSError:
                self.conn.close()
            if time.monotonic() > deadline:
                raise SystemExit("the REST port did not come up")
            time.sleep(0.2)

    def close(self) -> None:
        self.conn.close()


def bodies(x: np.ndarray) -> dict[str, bytes]:
    return {
        "rest_stdlib": json.dumps({"instances": x.tolist()}).encode(),
        "rest_float32": orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY),
    }


class Steps:
    """The server-side steps of one REST predict, run in this process on the same body with
    the code the server runs (json_codec, one session run); sampled between the rounds."""

    def __init__(self, servable: Servable, body: bytes) -> None:
        signature = servable.signatures["serving_default"]
        dtypes = {alias: info.dtype for alias, info in signature.definition.inputs.items()}
        fetches = list(signature.outputs.values())
        doc = json_codec.parse_body(body)
        inputs, _ = json_codec.predict_inputs(doc, dtypes)
        feeds = {signature.inputs[alias]: array for alias, array in inputs.items()}
        outputs = dict(zip(signature.outputs, servable.run(feeds, fetches), strict=True))
        self.calls: dict[str, Callable[[], object]] = {
            "parse_ms": lambda: json_codec.parse_body(body),
            "to_arrays_ms": lambda: json_codec.predict_inputs(doc, dtypes),
            "run_ms": lambda: servable.run(feeds, fetches),
            "encode_ms": lambda: json_codec.predict_response(outputs, True),
        }
        self.samples: dict[str, list[float]] = {step: [] for step in self.calls}

    def sample(self, n: int) -> None:
        for step, call in self.calls.items():
            self.samples[step].extend(measure(call, n))

    def summary_ms(self) -> dict[str, dict[str, float]]:
        return {
            "p50": {step: float(np.median(v)) / 1e3 for step, v in self.samples.items()},
            "min": {step: float(np.min(v)) / 1e3 for step, v in self.samples.items()},
        }


def run(requests: int, rounds: int) -> dict:
    x = np.random.default_rng(0).random((1000, 200), np.float32)
    grpc_port, rest_port = report.free_port(), report.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        base = build_mlp(Path(tmp) / "mlp")
        servable = Servable.load("m", 1, base / "1", ["serve"], session_config(0, 0))
        server = Subprocess(
            [
                sys.executable,
                "-m",
                "server.main",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                "--model_name=m",
                f"--model_base_path={base}",
            ],
            grpc_port,
        )
        rest = RestClient(rest_port)
        try:
            rest.wait_ready()
            request = request_for("m", x)
            rest_bodies = bodies(x)
            expected = tf.make_ndarray(server.stub.Predict(request).outputs["y"])
            for body in rest_bodies.values():
                got = np.asarray(rest.post(body)["predictions"], np.float32)  # type: ignore[index]
                np.testing.assert_array_equal(got, expected)
            arms: dict[str, Callable[[], object]] = {"grpc": lambda: server.stub.Predict(request)}
            for arm, body in rest_bodies.items():
                arms[arm] = lambda body=body: rest.post(body)
            steps = {arm: Steps(servable, body) for arm, body in rest_bodies.items()}
            for call in arms.values():  # warm up every path
                measure(call, 30)
            samples: dict[str, list[float]] = {arm: [] for arm in arms}
            per_round = max(1, requests // rounds)
            for i in range(rounds):
                print(f"[rest] round {i + 1}/{rounds}", file=sys.stderr)
                for arm, call in arms.items():
                    samples[arm].extend(measure(call, per_round))
                for arm_steps in steps.values():
                    arm_steps.sample(max(3, per_round // 10))
        finally:
            rest.close()
            server.close()
            servable.close()
    stats = {arm: {**report.summarize(v), "min_us": float(np.min(v))} for arm, v in samples.items()}
    sizes = {"grpc": request.ByteSize(), **{a: len(b) for a, b in rest_bodies.items()}}
    return {
        "case": "mlp_1000x200",
        "input_shape": list(x.shape),
        "request_bytes": sizes,
        "arms": stats,
        "ratios": {arm: stats[arm]["p50_us"] / stats["grpc"]["p50_us"] for arm in rest_bodies},
        "server_steps_ms": {arm: s.summary_ms() for arm, s in steps.items()},
    }


def table(result: dict) -> str:
    case = result["cases"][0]
    lines = [
        f"Run {result['date']} on {result['machine']}, Python {result['python']}, "
        f"TensorFlow {result['tensorflow']}. Command: `{result['command']}`.",
        "",
        "| arm | request | p50 ms | p90 ms | p99 ms | n | p50 / gRPC p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, stats in case["arms"].items():
        ratio = case["ratios"].get(arm, 1.0)
        lines.append(
            f"| {arm} | {case['request_bytes'][arm]:,} B | {stats['p50_us'] / 1e3:.3f} | "
            f"{stats['p90_us'] / 1e3:.3f} | {stats['p99_us'] / 1e3:.3f} | {stats['n']} | "
            f"{ratio:.2f}x |"
        )
    lines += [
        "",
        "Where REST time goes: the server's steps, run in the client process on the same body "
        "between the rounds; `HTTP and the rest` is the REST figure minus their sum (the body "
        "over loopback, aiohttp, the worker hand-off, the client's reply decode). Medians "
        "drift with the load of a shared machine; minimums show the uncontended split.",
        "",
        "| arm | stat | JSON parse | JSON -> arrays | model run | JSON encode | REST total "
        "| HTTP and the rest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, by_stat in case["server_steps_ms"].items():
        for stat, steps in by_stat.items():
            total = case["arms"][arm][f"{stat}_us"] / 1e3
            lines.append(
                f"| {arm} | {stat} | {steps['parse_ms']:.2f} | {steps['to_arrays_ms']:.2f} | "
                f"{steps['run_ms']:.2f} | {steps['encode_ms']:.2f} | {total:.2f} | "
                f"{total - sum(steps.values()):.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per arm")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    tune_malloc()
    case = run(args.requests, args.rounds)
    output = {
        "benchmark": "rest",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/rest_vs_grpc.py " + " ".join(sys.argv[1:]),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "target": f"REST p50 at most {TARGET_RATIO:g}x the gRPC p50",
        "cases": [case],
    }
    report.publish("rest", output, table(output))


if __name__ == "__main__":
    main()
