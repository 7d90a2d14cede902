"""Server-side batching (`--enable_batching`) through a real server and the stock gRPC stubs.

Most tests make merging deterministic the way TF-Serving's batching_session_test.cc does: a
long `batch_timeout_micros` and a `max_batch_size` the concurrent requests fill exactly, so the
batch runs the moment the last request arrives. What merged is read back from `Server.metrics`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, regression_pb2

from server.flags import StartupError
from server.main import main
from tests.conftest import (
    COUNTER,
    EXPECTED,
    HALF_PLUS_TWO,
    TESTDATA,
    Running,
    model_config_text,
    start,
    wait_for,
)
from tfrec.runtime.batching import BatchingOptions

MATRIX = TESTDATA / "matrix_half_plus_two"
LONG_WAIT_US = 10_000_000  # a batch timeout the tests never reach: only a full batch runs
POOL = "test_batch_threads"


def params_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "batching_parameters.txt"
    path.write_text(text)
    return str(path)


def batching_params(**fields: Any) -> str:
    """Text BatchingParameters: ints and bools become wrapper messages, lists repeated fields."""
    lines = [f'thread_pool_name {{ value: "{POOL}" }}']
    for name, value in fields.items():
        if isinstance(value, list):
            lines += [f"{name}: {v}" for v in value]
        elif name == "pad_variable_length_inputs":
            lines.append(f"{name}: {str(value).lower()}")
        else:
            lines.append(f"{name} {{ value: {str(value).lower()} }}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def batching_server(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Factory: a server over `model` with --enable_batching and the given parameters.

    The servers still running at the end are stopped.
    """
    started: list[Running] = []

    def factory(model: Path = HALF_PLUS_TWO, name: str = "default", **fields: Any) -> Running:
        running = start(
            model_name=name,
            model_base_path=str(model),
            enable_batching=True,
            batching_parameters_file=params_file(tmp_path, batching_params(**fields)),
        )
        started.append(running)
        return running

    yield factory
    for running in started:
        if not running.server._stopped.is_set():
            running.close()


def predict(
    running: Running, signature: str = "", name: str = "default", **inputs: np.ndarray
) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    response = running.predict.Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Runs every call in its own thread at once; returns results or the raised exceptions."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def metric(running: Running, name: str, **labels: str) -> float:
    """Sum of the rendered samples `name{...}` whose labels include `labels`."""
    total = 0.0
    for line in running.server.metrics.render().decode().splitlines():
        match = re.fullmatch(r"(\S+)\{(.*)\} (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


RUNS = ":tensorflow:serving:batching_session:wrapped_run_count"
QUEUING = ":tensorflow:serving:batching_session:queuing_latency_count"
BATCH_ROWS = ":tfrec:batch_size"
BATCH_REQUESTS = ":tfrec:batch_requests"


def batch_threads(pool: str = POOL) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(pool + "_")]


def code_of(result: Any) -> grpc.StatusCode | None:
    return result.code() if isinstance(result, grpc.RpcError) else None


# --------------------------------------------------------------------------- merging


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows(
    batching_server: Callable[..., Running],
) -> None:
    sizes = [1, 1, 2, 1, 3]  # 8 rows, the max_batch_size: the batch runs when all are in
    server = batching_server(
        max_batch_size=8, batch_timeout_micros=LONG_WAIT_US, num_batch_threads=1
    )
    inputs = [np.arange(n, dtype=np.float32).reshape(n, 1) + 10 * i for i, n in enumerate(sizes)]
    results = concurrently([lambda x=x: predict(server, x=x) for x in inputs])
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], 0.5 * x + 2)
    labels = {"model_name": "default", "signature": "serving_default"}
    assert metric(server, RUNS, thread_pool_name=POOL) == 1
    assert metric(server, BATCH_REQUESTS + "_count", **labels) == 1
    assert metric(server, BATCH_REQUESTS + "_sum", **labels) == len(sizes)
    assert metric(server, BATCH_ROWS + "_sum", **labels) == 8
    assert metric(server, QUEUING, thread_pool_name=POOL) == len(sizes)
    # Shutdown drains the queues and stops the batch threads with the last queue.
    assert batch_threads()
    server.close()
    assert not batch_threads()


def test_matrix_half_plus_two_batches_rows_of_matrices(
    batching_server: Callable[..., Running],
) -> None:
    server = batching_server(MATRIX, max_batch_size=6, batch_timeout_micros=LONG_WAIT_US)
    inputs = [
        np.full((n, 3, 3), n, np.float32) + np.arange(9, dtype=np.float32).reshape(3, 3)
        for n in (1, 2, 3)
    ]
    results = concurrently([lambda x=x: predict(server, x=x) for x in inputs])
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], 0.5 * x + 2)
    assert metric(server, RUNS) == 1


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tfrec_tools.demo_model import build

    base = tmp_path_factory.mktemp("demo")
    build(base)
    return base


def demo_request(candidates: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": np.full(candidates, seed, np.int64),
        "user_dense": np.repeat(rng.normal(size=(1, 8)).astype(np.float32), candidates, 0),
        "item_id": rng.integers(0, 5000, candidates, dtype=np.int64),
        "item_dense": rng.normal(size=(candidates, 8)).astype(np.float32),
    }


def test_demo_ranking_model_batched_equals_unbatched(
    batching_server: Callable[..., Running], demo_model: Path
) -> None:
    candidates = [5, 40, 1, 17, 100, 37]
    requests = [demo_request(n, seed) for seed, n in enumerate(candidates)]
    plain = start(model_name="demo", model_base_path=str(demo_model))
    try:
        expected = [predict(plain, name="demo", **r)["score"] for r in requests]
        assert not batch_threads("model_server_batch_threads")
        assert metric(plain, RUNS) == 0
    finally:
        plain.close()
    server = batching_server(
        demo_model, "demo", max_batch_size=sum(candidates), batch_timeout_micros=LONG_WAIT_US
    )
    results = concurrently([lambda r=r: predict(server, name="demo", **r) for r in requests])
    for want, got, n in zip(expected, results, candidates, strict=True):
        assert got["score"].shape == (n, 1)
        np.testing.assert_allclose(got["score"], want, rtol=1e-5, atol=1e-7)
    assert metric(server, RUNS) == 1
    assert metric(server, BATCH_REQUESTS + "_sum", model_name="demo") == len(candidates)


def test_many_clients_with_splitting_each_get_their_own_rows(
    batching_server: Callable[..., Running],
) -> None:
    """8 clients, 2 batch threads, a short timeout, requests split across batches."""
    server = batching_server(
        max_batch_size=8,
        batch_timeout_micros=1000,
        num_batch_threads=2,
        max_enqueued_batches=1000,
        enable_large_batch_splitting=True,
        max_execution_batch_size=4,
    )

    def client(seed: int) -> int:
        rng = np.random.default_rng(seed)
        for i in range(25):
            n = int(rng.integers(1, 8))
            x = (np.arange(n) + 1000 * seed + 10 * i).astype(np.float32).reshape(n, 1)
            np.testing.assert_array_equal(predict(server, x=x)["y"], 0.5 * x + 2)
        return 25

    assert concurrently([lambda s=s: client(s) for s in range(8)]) == [25] * 8
    assert metric(server, BATCH_REQUESTS + "_sum") >= 8 * 25


# --------------------------------------------------------------------------- limits


def test_full_queue_fails_only_the_request_that_does_not_fit(
    batching_server: Callable[..., Running],
) -> None:
    server = batching_server(
        max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=LONG_WAIT_US
    )
    first: list[Any] = []
    waiter = threading.Thread(
        target=lambda: first.append(predict(server, x=np.array([[1.0]], np.float32)))
    )
    waiter.start()
    with server.manager.lease(model_pb2.ModelSpec(name="default")) as servable:
        batcher = servable.batcher
    wait_for(lambda: batcher.queued_tasks() == 1, what="the first request to be queued")

    with pytest.raises(grpc.RpcError) as full:
        predict(server, x=np.array([[2.0], [3.0]], np.float32))
    assert full.value.code() == grpc.StatusCode.UNAVAILABLE
    assert full.value.details() == (
        "The batch scheduling queue to which this task was submitted is full; currently 1 "
        "batches enqueued and max_enqueued_batches is 1"
    )
    with pytest.raises(grpc.RpcError) as too_large:
        predict(server, x=np.zeros((3, 1), np.float32))
    assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_large.value.details() == "Task size 3 is larger than maximum input batch size 2"
    # Another signature has its own queue: a full batch there runs at once.
    other = predict(server, "regress_x2_to_y3", inputs=np.array([[4.0], [6.0]], np.float32))
    np.testing.assert_array_equal(other["outputs"], [[5.0], [6.0]])

    last = predict(server, x=np.array([[8.0]], np.float32))  # fills the waiting batch
    waiter.join(30)
    np.testing.assert_array_equal(last["y"], [[6.0]])
    np.testing.assert_array_equal(first[0]["y"], [[2.5]])


def test_allowed_batch_sizes_pad_the_batch_and_drop_the_padding(
    batching_server: Callable[..., Running],
) -> None:
    server = batching_server(max_batch_size=4, allowed_batch_sizes=[2, 4])
    for x in (np.array([[1.0], [2.0], [3.0]]), np.array([[7.0]])):
        result = predict(server, x=x.astype(np.float32))
        np.testing.assert_array_equal(result["y"], 0.5 * x + 2)
    assert metric(server, BATCH_ROWS + "_sum") == 4 + 2  # 3 rows ran as 4, 1 row as 2


def test_large_batch_splitting_runs_a_request_across_batches(
    batching_server: Callable[..., Running],
) -> None:
    server = batching_server(
        max_batch_size=4, enable_large_batch_splitting=True, max_execution_batch_size=2
    )
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    np.testing.assert_array_equal(predict(server, x=x)["y"], 0.5 * x + 2)
    assert metric(server, RUNS) == 2
    with pytest.raises(grpc.RpcError) as too_large:
        predict(server, x=np.zeros((5, 1), np.float32))
    assert too_large.value.details() == "Task size 5 is larger than maximum input batch size 4"


# --------------------------------------------------------------------------- shapes


def test_different_shapes_without_padding_fail_that_batch(
    batching_server: Callable[..., Running],
) -> None:
    server = batching_server(MATRIX, max_batch_size=2, batch_timeout_micros=LONG_WAIT_US)
    small = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2)
    full = np.arange(5, 14, dtype=np.float32).reshape(1, 3, 3)
    results = concurrently([lambda: predict(server, x=small), lambda: predict(server, x=full)])
    for result in results:
        assert code_of(result) == grpc.StatusCode.FAILED_PRECONDITION
        assert result.details() == (
            "Tensors with name 'x:0' from different tasks have different shapes and padding is "
            "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors "
            "with the same name have equal dimensions starting with the first dim."
        )
    # The server goes on: the next full batch of equal shapes runs.
    again = concurrently([lambda: predict(server, x=full), lambda: predict(server, x=full)])
    for result in again:
        np.testing.assert_array_equal(result["y"], 0.5 * full + 2)


def test_pad_variable_length_inputs_pads_with_the_first_value(
    batching_server: Callable[..., Running],
) -> None:
    server = batching_server(
        MATRIX, max_batch_size=2, batch_timeout_micros=LONG_WAIT_US, pad_variable_length_inputs=True
    )
    small = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2)
    full = np.arange(5, 14, dtype=np.float32).reshape(1, 3, 3)
    results = concurrently([lambda: predict(server, x=small), lambda: predict(server, x=full)])
    # batching_session_test.cc BatchingWithPadding: [1,2,2] padded to [1,3,3] with its value 1.
    np.testing.assert_array_equal(
        results[0]["y"].ravel(), [2.5, 3, 2.5, 3.5, 4, 2.5, 2.5, 2.5, 2.5]
    )
    np.testing.assert_array_equal(results[1]["y"], 0.5 * full + 2)


# --------------------------------------------------------------------------- defaults and errors


def test_enable_batching_without_file_uses_server_defaults(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(model_config_text({"default": HALF_PLUS_TWO, "counter": COUNTER}))
    server = start(model_config_file=str(config), enable_batching=True)
    try:
        x = np.array([[1.0], [2.0]], np.float32)
        np.testing.assert_array_equal(predict(server, x=x)["y"], [[2.5], [3.0]])
        # A request the servable rejects fails alone, before it reaches a queue.
        with pytest.raises(grpc.RpcError) as wrong_type:
            predict(server, x=np.array([["a"]]))
        assert wrong_type.value.details() == "Expects arg[0] to be float but string is provided"
        # Regress feeds serialized tf.Examples (a string tensor) through the batcher too.
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "regress_x_to_y"
        for value in (2.0, 4.0):
            example = request.input.example_list.examples.add()
            example.features.feature["x"].float_list.value.append(value)
        regressions = server.predict.Regress(request, timeout=30).result.regressions
        assert [r.value for r in regressions] == [3.0, 4.0]
        assert metric(server, RUNS, thread_pool_name="model_server_batch_threads") == 2
        assert batch_threads("model_server_batch_threads")
        # As in TF-Serving, a signature without inputs cannot be batched.
        with pytest.raises(grpc.RpcError) as no_inputs:
            predict(server, "get_counter", name="counter")
        assert no_inputs.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert no_inputs.value.details() == "Batching Run() must have at least one input tensor"
    finally:
        server.close()
    assert not batch_threads("model_server_batch_threads")


def test_tf_serving_example_parameters_file_parses() -> None:
    options = BatchingOptions.read(str(EXPECTED / "batching_config.txt"))
    assert (options.max_batch_size, options.batch_timeout_micros) == (128, 0)
    assert (options.max_enqueued_batches, options.num_batch_threads) == (1_000_000, 8)
    assert options.max_execution_batch_size == 128
    assert options.thread_pool_name == "batch_threads"  # SharedBatchScheduler's default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\n",
            "INVALID_ARGUMENT: Last entry in allowed_batch_sizes must match max_batch_size; "
            "last entry was 4; expected 8",
        ),
        ("max_batch_size: 8\n", "INVALID_ARGUMENT: Invalid protobuf file: '{path}': Error parsing"),
        ("num_batch_threads { value: 0 }\n", "num_batch_threads must be positive; was 0"),
        ("batch_timeout_micros { value: -1 }\n", "batch_timeout_micros must be non-negative"),
    ],
)
def test_bad_parameter_files_fail_start_up(tmp_path: Path, text: str, message: str) -> None:
    path = params_file(tmp_path, text)
    with pytest.raises(StartupError) as failed:
        start(
            model_base_path=str(HALF_PLUS_TWO), enable_batching=True, batching_parameters_file=path
        )
    assert message.format(path=path) in str(failed.value)
    assert "\n" not in str(failed.value)


def test_bad_parameter_file_prints_one_line_and_exits_255(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = params_file(tmp_path, "max_enqueued_batches { value: oops }\n")
    code = main(
        [
            "--port=0",
            "--grpc_socket_path=" + str(tmp_path / "sock"),
            f"--model_base_path={HALF_PLUS_TWO}",
            "--enable_batching",
            f"--batching_parameters_file={path}",
        ]
    )
    assert code == 255
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(
        f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'"
    )
    missing = main(
        [
            f"--model_base_path={HALF_PLUS_TWO}",
            "--enable_batching",
            f"--batching_parameters_file={tmp_path / 'missing.txt'}",
        ]
    )
    assert missing == 255
    assert "Error: NOT_FOUND: " in capsys.readouterr().err


def test_tasks_whose_deadline_passed_in_the_queue_are_dropped(batching_server) -> None:
    """A task that waited in a batch queue past its client's deadline is not run; the others
    in the batch are."""
    running = batching_server(max_batch_size=64, batch_timeout_micros=300_000)
    metric = running.server.metrics.cancelled_work.labels("default", "waiting")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    late = running.predict.Predict.future(request, timeout=0.05)
    patient = running.predict.Predict.future(request, timeout=30)
    assert late.exception(timeout=30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert list(patient.result(timeout=30).outputs["y"].float_val) == [2.5]
    wait_for(lambda: metric._value.get() == 1, timeout=5, what="the late task to be dropped")
