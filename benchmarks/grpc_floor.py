"""The floor of Python gRPC on this machine: a bare PredictionService that echoes its input.

It decodes the first input tensor into numpy and returns it as the output `y`, with the same
server options tfrec uses (thread pool size, 2^31-1 message limits). Nothing else: no model,
no validation. Whatever a Python gRPC server does, it cannot beat this.

    python -m benchmarks.grpc_floor --port=PORT
"""

from __future__ import annotations

import argparse
import concurrent.futures
import signal
import threading

import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from server.grpc_server import MAX_MESSAGE_BYTES
from tfrec import codecs


class EchoServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request: predict_pb2.PredictRequest, context: object) -> object:
        array = codecs.to_ndarray(next(iter(request.inputs.values())))
        response = predict_pb2.PredictResponse()
        response.outputs["y"].CopyFrom(codecs.from_ndarray(array))
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
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
