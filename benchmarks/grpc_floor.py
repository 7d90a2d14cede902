"""The floor of Python gRPC on this machine: a bare PredictionService with zero overhead of its own.

It decodes every input of a request into numpy (numbers through `np.frombuffer` on
`tensor_content`, strings into an object array of Python `bytes`: what any Python server has
to do before it can hand a request to TensorFlow), waits, and replies. With the same server
options as tfrec (thread pool size, 2^31-1 message limits, tfrec's malloc settings). Nothing
else: no model, no validation. Whatever a Python gRPC server does, it cannot beat this.

Control inputs, to stand in for a model (decoded like the others):
- `delay_us` (a scalar): the handler waits that long, as long as the model's in-process run
  (sleeping, which releases the GIL as a TensorFlow run does; delays under 100 us are spun,
  as a run inline on the handler's thread would take them). Timer slack is set to 1 ns so
  sleeps end on time.
- `reply:<name>`: returned as output `<name>` (so the response has the model's outputs'
  size); `reply` is returned as `y`. Without any reply input, input `x` is echoed as `y` (the
  request fails without it).

benchmarks/cxx_floor/floor.cc is the same server in C++.

    python -m benchmarks.grpc_floor --port=PORT
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import signal
import threading
import time

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MAX_MESSAGE_BYTES = 2**31 - 1  # tfrec's and TF-Serving's limit
SPIN_BELOW_US = 100.0
PR_SET_TIMERSLACK = 29
# dtype enum -> (numpy dtype, TensorProto field of its typed values)
DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
ENUMS = {np_dtype: enum for enum, (np_dtype, _) in DTYPES.items()}


def tune_malloc() -> None:
    """tfrec's allocator settings, as `server.main.tune_malloc` sets them: large freed buffers
    stay in the heap (a floor must not be handicapped)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def tune_process() -> None:
    """tune_malloc, and a 1 ns timer slack for this thread and the threads it starts later."""
    tune_malloc()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The tensor as numpy, the cheapest way (no validation: requests here are well formed)."""
    dtype, field = DTYPES[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    # Straight from the repeated field: for strings the fastest way measured (52k strings:
    # 1.1 ms, against 1.5 ms through a list)
    return np.array(getattr(proto, field), dtype).reshape(shape)


def from_ndarray(array: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
    proto.dtype = ENUMS[array.dtype if array.dtype.kind != "S" else np.dtype(object)]
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if array.dtype == object or array.dtype.kind == "S":
        proto.string_val.extend(array.ravel().tolist())
    else:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()


def wait(us: float) -> None:
    until = time.perf_counter() + us / 1e6
    if us >= SPIN_BELOW_US:
        time.sleep(us / 1e6)
    while time.perf_counter() < until:
        pass


class EchoServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request: predict_pb2.PredictRequest, context: object) -> object:
        arrays = {name: to_ndarray(proto) for name, proto in request.inputs.items()}
        if "delay_us" in arrays:
            wait(float(arrays["delay_us"]))
        replies = {
            "y" if name == "reply" else name[len("reply:") :]: array
            for name, array in arrays.items()
            if name == "reply" or name.startswith("reply:")
        }
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for name, array in (replies or {"y": arrays["x"]}).items():
            from_ndarray(array, response.outputs[name])
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    tune_process()  # before the server's threads start: they inherit the timer slack
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(args.threads),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(EchoServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(0)


if __name__ == "__main__":
    main()
