"""The arms of benchmarks/overhead.py: servers in subprocesses, the in-process session callable,
the floors' requests, and the timing loop. Plain TensorFlow and grpcio only (no tfrec imports).
`Subprocess`, `measure`, `request_for` and `build_mlp` also serve benchmarks/rest_vs_grpc.py.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks.cxx_floor import build as cxx_build
from benchmarks.models.session import ServingSession
from benchmarks.report import free_port
from benchmarks.servers import Process

ROOT = Path(__file__).resolve().parents[1]
Arrays = dict[str, np.ndarray]
MODES = ("pooled", "inline")  # TF's inter-op pool, or the calling thread (inter_op_thread_pool -1)


def measure(call: Callable[[], object], n: int) -> list[float]:
    """Latencies of n calls, in microseconds."""
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


class Subprocess(Process):
    """A gRPC PredictionService in a subprocess (`servers.Process`: ready once its port opens,
    its output in a log file), with a stub over one channel."""

    def __init__(self, args: list[str], port: int, timeout_s: float = 300.0) -> None:
        try:
            super().__init__(args, [port], timeout_s)
        except RuntimeError as err:
            raise SystemExit(str(err)) from None
        self.channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 2**31 - 1)]
        )
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def close(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
        super().close()


def tfrec_server(base: Path, model: str = "m") -> Subprocess:
    """tfrec's model server with its default flags, as a TF-Serving user starts it."""
    port = free_port()
    args = [sys.executable, "-m", "server.main", f"--port={port}", f"--model_name={model}",
            f"--model_base_path={base}"]  # fmt: skip
    return Subprocess(args, port)


def python_floor() -> Subprocess:
    port = free_port()
    return Subprocess([sys.executable, "-m", "benchmarks.grpc_floor", f"--port={port}"], port)


def cxx_floor(notes: list[str]) -> Subprocess | None:
    """The C++ floor (built and cached on first use); None, with a note, without a toolchain."""
    try:
        binary = cxx_build.build()
    except cxx_build.Unavailable as err:
        notes.append(f"cxx_floor skipped: {err}")
        print(f"[overhead] {notes[-1]}", file=sys.stderr)
        return None
    port = free_port()
    return Subprocess([str(binary), f"--port={port}"], port)


def request_for(model: str, x: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request


def response_arrays(response: predict_pb2.PredictResponse) -> Arrays:
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def floor_request(
    request: predict_pb2.PredictRequest, outputs: Arrays
) -> predict_pb2.PredictRequest:
    """`request` plus the model's outputs as `reply:<name>` inputs (delay set by set_delay)."""
    out = predict_pb2.PredictRequest()
    out.CopyFrom(request)
    for name, array in outputs.items():
        out.inputs[f"reply:{name}"].CopyFrom(tf.make_tensor_proto(array))
    return out


def set_delay(request: predict_pb2.PredictRequest, delay_us: float) -> None:
    request.inputs["delay_us"].CopyFrom(tf.make_tensor_proto(np.float32(delay_us)))


class InProcess:
    """A version loaded as TF-Serving loads it (TF1 loader, default session config), its
    `serving_default` run through a session callable in the faster of TensorFlow's two modes
    for this request (both timed alternately, as tfrec's Runner chooses)."""

    def __init__(self, version_dir: Path, signature: str = "serving_default") -> None:
        self.session = ServingSession(version_dir)
        self.signature = self.session.signatures[signature]
        self.mode = ""
        self.call: Callable[[], list[np.ndarray]] = list
        self.outputs: list[str] = []

    def prepare(self, inputs: Arrays, trial_s: float = 5.0, trials: int = 16) -> Arrays:
        """Chooses the mode for `inputs` and binds the call to them; returns the outputs."""
        self.outputs = list(self.signature.outputs)
        calls = {}
        for mode in MODES:
            options = config_pb2.CallableOptions(
                feed=[self.signature.inputs[k].name for k in inputs],
                fetch=[self.signature.outputs[k].name for k in self.outputs],
            )
            if mode == "inline":
                options.run_options.inter_op_thread_pool = -1
            fn = self.session.session._make_callable_from_options(options)
            arrays = list(inputs.values())
            calls[mode] = lambda fn=fn, arrays=arrays: fn(*arrays)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        deadline = time.monotonic() + trial_s
        for i in range(2 * trials):
            mode = MODES[i % 2]
            times[mode].extend(measure(calls[mode], 1))
            if i >= 5 and time.monotonic() > deadline:
                break
        self.mode = min(MODES, key=lambda m: statistics.median(times[m]))
        self.call = calls[self.mode]
        return dict(zip(self.outputs, self.call(), strict=True))

    def close(self) -> None:
        self.session.close()


def build_mlp(base: Path) -> Path:
    """A ranking-style MLP over a [N, 200] float32 input `x` (output `y`), exported as base/1."""

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
