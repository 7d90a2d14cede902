"""Issue 16: hostile requests against real servers, over gRPC and REST.

Limits are checked from the TensorProto's header before anything is decoded (tiny requests
that would decode to gigabytes are refused with RESOURCE_EXHAUSTED / 429, naming the input
and the flag); shapes numpy cannot hold and TensorFlow errors quoting a client's binary bytes
are INVALID_ARGUMENT, not INTERNAL; REST refuses trailing content, bodies past
--rest_api_max_body_bytes (413), and logs a client's disconnect without a traceback.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from http.client import HTTPResponse

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2

from server.assemble import validate
from server.flags import StartupError
from tests import structured_model
from tests.conftest import HALF_PLUS_TWO, Running, free_port, start
from tests.test_rest import Http, expect_error
from tfrec.base.settings import Settings
from tfrec.serving.request import Limits

GIB = 1 << 30
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PREDICT = "/v1/models/default:predict"


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    running = start(
        model_name="default", model_base_path=str(HALF_PLUS_TWO), rest_api_port=free_port()
    )
    yield running
    running.close()


@pytest.fixture(scope="module")
def http(server: Running) -> Http:
    assert server.server.rest_port is not None
    return Http(server.server.rest_port)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("ranker")
    structured_model.build(base)
    running = start(model_name="ranker", model_base_path=str(base), structured_dedup="off")
    yield running
    running.close()


def tensor(dtype: int, dims: list[int], **fields: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)  # type: ignore[arg-type]
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def predict(
    running: Running, signature: str = "", model: str = "default", **inputs: object
) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        if isinstance(value, tensor_pb2.TensorProto):
            request.inputs[alias].CopyFrom(value)
        else:
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return running.predict.Predict(request, timeout=60)


def refused(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    start_s = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    # Refused from the header: nothing was allocated or run.
    assert time.monotonic() - start_s < 5, "took too long: the tensor was decoded"
    return info.value


# ----------------------------------------------------------------------------- gRPC limits


def test_padded_string_tensor_is_refused_before_allocating(server: Running) -> None:
    # 30 bytes on the wire; FromProto's padding would make 2**30 objects (8 GiB of pointers).
    big = tensor(types_pb2.DT_STRING, [1, 2**30])
    assert len(big.SerializeToString()) <= 30
    err = refused(predict, server, "classify_x_to_y", inputs=big)
    assert err.code() == EXHAUSTED
    assert err.details() == (
        "Input 'inputs' decodes to 8589934592 bytes, more than --max_request_bytes=1073741824"
    )


def test_padded_float_tensor_is_refused_by_rows_and_by_bytes(server: Running) -> None:
    err = refused(predict, server, x=tensor(types_pb2.DT_FLOAT, [2**28, 1], float_val=[1.0]))
    assert err.code() == EXHAUSTED
    assert err.details() == "Input 'x' has 268435456 rows, more than --max_request_rows=1000000"
    err = refused(predict, server, x=tensor(types_pb2.DT_FLOAT, [1, 2**28 + 1], float_val=[1]))
    assert err.code() == EXHAUSTED
    assert err.details() == (
        "Input 'x' decodes to 1073741828 bytes, more than --max_request_bytes=1073741824"
    )
    # The server keeps serving, and a tensor at the limit's edge is still decoded.
    assert list(predict(server, x=np.array([[2.0]], np.float32)).outputs["y"].float_val) == [3.0]


def test_rows_limit(server: Running) -> None:
    err = refused(predict, server, x=tensor(types_pb2.DT_FLOAT, [1_000_001], float_val=[1.0]))
    assert err.code() == EXHAUSTED
    assert err.details() == "Input 'x' has 1000001 rows, more than --max_request_rows=1000000"


def test_inputs_are_counted_together(ranker: Running) -> None:
    # Each input is under 1 GiB; together they are over it. Neither is decoded.
    hist = tensor(types_pb2.DT_INT64, [1, 2**27 - 2**17], int64_val=[1])  # 1 GiB - 1 MiB
    items = tensor(types_pb2.DT_INT64, [200_000], int64_val=[1])
    user = tensor(types_pb2.DT_INT64, [1], int64_val=[1])
    err = refused(predict, ranker, model="ranker", user_id=user, user_hist=hist, item_id=items)
    assert err.code() == EXHAUSTED
    match = re.fullmatch(
        r"Input '(\w+)' decodes to (\d+) bytes, (\d+) with the inputs before it, more than "
        r"--max_request_bytes=1073741824",
        err.details(),
    )
    assert match is not None, err.details()
    assert int(match[2]) <= GIB < int(match[3])


def test_structured_items_limit(ranker: Running) -> None:
    user = {
        "user_id": np.array([3], np.int64),
        "user_hist": np.zeros((1, structured_model.SEQ), np.int64),
    }
    items = tensor(types_pb2.DT_INT64, [100_001], int64_val=[1])
    err = refused(predict, ranker, "serving_default_structured", "ranker", item_id=items, **user)
    assert err.code() == EXHAUSTED
    assert err.details() == (
        "Input 'item_id' has 100001 items (N of structured signature "
        "serving_default_structured), more than --max_structured_items=100000"
    )
    ok = predict(
        ranker, "serving_default_structured", "ranker", item_id=np.arange(5, dtype=np.int64),
        **user,
    )  # fmt: skip
    assert len(ok.outputs["score"].float_val) == 5


def test_example_count_and_context_copies(server: Running) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(1.0)
    request.input.example_list.examples.extend([example] * 100_000)
    err = refused(server.predict.Classify, request, timeout=60)
    assert err.code() == EXHAUSTED
    assert err.details() == "Input has 100001 examples, more than --max_structured_items=100000"
    # A 1 MiB context prepended to each of 1100 examples: 1.1 GB from a 1 MiB request.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    listed = request.input.example_list_with_context
    listed.context.features.feature["pad"].bytes_list.value.append(bytes(1 << 20))
    listed.examples.extend([example] * 1100)
    err = refused(server.predict.Classify, request, timeout=60)
    assert err.code() == EXHAUSTED
    context = len(listed.context.SerializeToString())
    assert err.details() == (
        f"Input's 1100 serialized examples decode to {1100 * (8 + 33 + context)} bytes, "
        "more than --max_request_bytes=1073741824"
    )


# ----------------------------------------------------------------------------- client faults


def test_shapes_numpy_cannot_hold_are_invalid_argument(server: Running) -> None:
    err = refused(predict, server, x=tensor(types_pb2.DT_FLOAT, [1] * 65, float_val=[1.0]))
    assert err.code() == INVALID
    assert err.details() == "Input 'x' has 65 dimensions; at most 64 are supported"
    err = refused(predict, server, x=tensor(types_pb2.DT_FLOAT, [0, 2**62, 2**62]))
    assert err.code() == INVALID
    assert err.details() == (
        "Input 'x' has shape [0, 4611686018427387904, 4611686018427387904], which numpy cannot hold"
    )


def test_rest_instances_stacked_past_64_dimensions(http: Http) -> None:
    item: object = 1.0
    for _ in range(64):
        item = [item]
    response = http.post(PREDICT, {"instances": [item]})
    assert response.status == 400, response.body
    assert response.error.startswith("Failed to process element: 0 of 'instances' list. Error: ")
    assert response.error.endswith("has 64 dimensions; an item of 'instances' has at most 63")


BINARY = b"\xff\xfe\x80abc"


def test_tensorflow_error_quoting_binary_bytes(server: Running, http: Http) -> None:
    proto = tensor(types_pb2.DT_STRING, [1], string_val=[BINARY])
    err = refused(predict, server, "classify_x_to_y", inputs=proto)
    assert err.code() == INVALID
    assert err.details().startswith("Could not parse example input, value: '\ufffd\ufffd\ufffdabc'")
    b64 = {"b64": "//6AYWJj"}
    response = http.post(PREDICT, {"signature_name": "classify_x_to_y", "inputs": [b64]})
    assert response.status == 400, response.body
    assert response.error.startswith(
        "Could not parse example input, value: '\ufffd\ufffd\ufffdabc'"
    )


# ----------------------------------------------------------------------------- REST


def test_rest_trailing_content_is_a_parse_error(http: Http) -> None:
    expect_error(
        http.post(PREDICT, '{"inputs": [[1.0]]} xyz'),
        400,
        "JSON Parse error: The document root must not be followed by other values. at offset: 20",
    )
    assert http.post(PREDICT, '{"inputs": [[1.0]]} \r\n').json() == {"outputs": [[2.5]]}


def test_rest_rows_limit(http: Http) -> None:
    body = b'{"instances": [' + b",".join([b"1"] * 1_000_001) + b"]}"
    expect_error(
        http.post(PREDICT, body),
        429,
        "Input 'x' has 1000001 rows, more than --max_request_rows=1000000",
    )


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Sends a request by hand (maybe less body than it announces); the status and body of
    the reply, read as a client reads it (by its Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        reply = HTTPResponse(sock)
        reply.begin()
        return reply.status, reply.read()


def test_rest_body_limit_refuses_before_reading(http: Http) -> None:
    head = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n"
    status, body = raw_request(http.port, head + b"\r\n", b'{"inputs": ')
    assert status == 413
    assert json.loads(body)["error"] == (
        "The request body of 200000000 bytes is larger than --rest_api_max_body_bytes=104857600 "
        "bytes"
    )
    status, _ = raw_request(http.port, head + b"Expect: 100-continue\r\n\r\n")
    assert status == 413  # not 100 Continue


@pytest.fixture(scope="module")
def small_body(server: Running) -> Iterator[Http]:
    running = start(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        rest_api_port=free_port(),
        rest_api_max_body_bytes=1000,
    )
    assert running.server.rest_port is not None
    yield Http(running.server.rest_port)
    running.close()


def test_rest_body_limit_flag(small_body: Http) -> None:
    fits = json.dumps({"inputs": [1.0] * 150})  # under 1000 bytes
    assert small_body.post(PREDICT, fits).status == 200
    over = json.dumps({"inputs": [1.0] * 250})
    expect_error(
        small_body.post(PREDICT, over),
        413,
        f"The request body of {len(over)} bytes is larger than --rest_api_max_body_bytes=1000 "
        "bytes",
    )
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b" " * 600, b" " * 600]) + b"0\r\n\r\n"
    )
    head = (
        b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, body = raw_request(small_body.port, head, chunks)
    assert status == 413
    assert (
        json.loads(body)["error"]
        == "The request body is larger than --rest_api_max_body_bytes=1000 bytes"
    )
    bomb = gzip.compress(json.dumps({"inputs": [1.0] * 300}).encode())
    assert len(bomb) < 1000
    expect_error(
        small_body.post(PREDICT, bomb, headers={"Content-Encoding": "gzip"}),
        413,
        "The request body inflated is larger than --rest_api_max_body_bytes=1000 bytes",
    )
    zipped = gzip.compress(fits.encode())
    response = small_body.post(PREDICT, zipped, headers={"Content-Encoding": "gzip"})
    assert response.status == 200


def test_rest_client_disconnects_are_one_info_line(
    http: Http, caplog: pytest.LogCaptureFixture
) -> None:
    head = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    with caplog.at_level(logging.DEBUG):
        sock = socket.create_connection(("127.0.0.1", http.port))
        sock.sendall(head + b'{"inputs"')
        time.sleep(0.2)
        sock.close()  # mid-body
        sock = socket.create_connection(("127.0.0.1", http.port))
        sock.sendall(head + b'{"inputs"')
        sock.shutdown(socket.SHUT_WR)  # the body ends early
        sock.recv(1 << 16)
        sock.close()
        sock = socket.create_connection(("127.0.0.1", http.port))
        sock.sendall(head.replace(b"1000", b"19") + b'{"inputs": [[1.0]]}')
        sock.close()  # before reading the answer
        assert http.post(PREDICT, {"inputs": [[1.0]]}).status == 200
        time.sleep(0.5)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
    lines = [r.getMessage() for r in caplog.records if "client disconnected" in r.getMessage()]
    assert len(lines) == 2, lines
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "server.rest")


# ----------------------------------------------------------------------------- the flags


def test_limits_read_the_flags() -> None:
    assert Limits() == Limits(GIB, 1_000_000, 100_000)
    assert Limits.of(Settings(max_request_bytes=5, max_request_rows=0)) == Limits(5, 0, 100_000)
    validate(Settings(model_base_path="/m"))
    with pytest.raises(StartupError, match="--max_request_rows must be >= 0"):
        validate(Settings(model_base_path="/m", max_request_rows=-1))


def test_limits_follow_the_flags_through_the_server(serve) -> None:  # type: ignore[no-untyped-def]
    running = serve(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        max_request_rows=2,
        max_request_bytes=0,
    )
    err = refused(predict, running, x=np.zeros((3, 1), np.float32))
    assert err.details() == "Input 'x' has 3 rows, more than --max_request_rows=2"
