"""The floor of Python gRPC on this machine: a bare PredictionService that echoes its input.

It decodes the input `x` into numpy and returns it as the output `y`, with the same server
options tfrec uses (thread pool size, 2^31-1 message limits). Nothing else: no model, no
validation. Whatever a Python gRPC server does, it cannot beat this.

To stand in for a model, a request may also carry `reply` (returned instead of `x`, so the
response has the model's output size) and `delay_us` (slept before replying, releasing the
GIL as a TensorFlow run does, so the handler takes as long as the model's in-process run).

    python -m benchmarks.grpc_floor --port=PORT
"""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
import threading
import time

import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from server.grpc_server import MAX_MESSAGE_BYTES
from server.main import tune_malloc
from tfrec.base import codecs


class EchoServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request: predict_pb2.PredictRequest, context: object) -> object:
        inputs = request.inputs
        array = codecs.to_ndarray(inputs["x"])
        if "delay_us" in inputs:
            time.sleep(float(codecs.to_ndarray(inputs["delay_us"])) / 1e6)
        if "reply" in inputs:
            array = codecs.to_ndarray(inputs["reply"])
        response = predict_pb2.PredictResponse()
        codecs.from_ndarray(array, proto=response.outputs["y"])
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    tune_malloc()  # the same allocator settings as tfrec: a floor must not be handicapped
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
