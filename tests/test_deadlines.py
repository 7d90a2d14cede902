"""Deadlines stop work: queued calls whose client has gone are dropped before they run, and
TensorFlow cancels a looping run at the client's deadline (RunOptions.timeout_in_ms)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from tests.conftest import wait_for
from tests.loop_model import export_loop_model
from tests.test_grpc_api import predict_request

HEAVY = 400_000  # loop steps: about 2 s of one core


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return export_loop_model(tmp_path_factory.mktemp("loop"))


def cancelled(running, stage: str) -> float:  # type: ignore[no-untyped-def]
    metric = running.server.metrics.cancelled_work
    return metric.labels("loop", stage)._value.get()


def heavy(steps: int = HEAVY):  # type: ignore[no-untyped-def]
    return predict_request("loop", x=np.ones((4, 64), np.float32), steps=np.int32(steps))


def cpu_idle_after(start: float, limit_s: float) -> float:
    """Seconds from `start` until this process used under 20% of a core over 50 ms."""
    while time.monotonic() - start < limit_s:
        before = time.process_time()
        time.sleep(0.05)
        if time.process_time() - before < 0.01:
            return time.monotonic() - start
    return limit_s


def test_tensorflow_stops_a_looping_run_at_the_deadline(serve, loop_model) -> None:
    running = serve(model_name="loop", model_base_path=str(loop_model))
    running.predict.Predict(heavy(200), timeout=30)  # loaded and warm
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        running.predict.Predict(heavy(), timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: cancelled(running, "running") == 1, timeout=5, what="the run to stop")
    # The 2 s run stopped at its deadline: the server is idle long before it would have ended.
    assert cpu_idle_after(start, 2.0) < 0.5
    result = running.predict.Predict(heavy(200), timeout=30)
    assert result.outputs["y"].tensor_shape.dim[0].size == 4


def test_queued_requests_whose_clients_left_are_dropped(serve, loop_model) -> None:
    """One worker, 20 heavy calls abandoned at 150 ms: the running one is cancelled, the
    others never run; the server is idle at once and answers the next call."""
    running = serve(model_name="loop", model_base_path=str(loop_model), grpc_max_threads=1,
                    max_queued_requests=-1)  # fmt: skip
    running.predict.Predict(heavy(200), timeout=30)
    cpu = time.process_time()
    calls = [running.predict.Predict.future(heavy(), timeout=0.15) for _ in range(20)]
    for call in calls:
        assert call.exception(timeout=30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Calls still queued when their deadline passed are not run (gRPC does not hand them to
    # a worker, or tfrec drops them before decoding); the running ones are cancelled.
    wait_for(lambda: cancelled(running, "running") >= 1, timeout=5, what="a cancelled run")
    assert cpu_idle_after(time.monotonic(), 2.0) < 0.2
    assert time.process_time() - cpu < 3.0  # 20 runs of 2 s would take 40 s of CPU
    started = time.perf_counter()
    running.predict.Predict(heavy(200), timeout=30)
    assert time.perf_counter() - started < 1.0


def test_rest_timeout_cancels_the_run(serve, loop_model) -> None:
    """A REST 504 at --rest_api_timeout_in_ms used to leave both cores busy: the run stops."""
    from tests.conftest import free_port
    from tests.test_rest import Http

    running = serve(model_name="loop", model_base_path=str(loop_model),
                    rest_api_port=free_port(), rest_api_timeout_in_ms=100)  # fmt: skip
    http = Http(running.server.settings.rest_api_port)
    body = {"inputs": {"x": np.ones((4, 64)).tolist(), "steps": HEAVY}}
    start = time.monotonic()
    reply = http.post("/v1/models/loop:predict", body)
    assert reply.status == 504, reply.body
    assert cpu_idle_after(start, 2.0) < 0.5
    wait_for(lambda: cancelled(running, "running") == 1, timeout=5, what="a cancelled run")
    body["inputs"]["steps"] = 200
    assert http.post("/v1/models/loop:predict", body).status == 200


def test_overload_is_shed_beyond_the_queue_bound(serve, loop_model) -> None:
    """Calls beyond --max_queued_requests waiting for a worker get RESOURCE_EXHAUSTED at once
    instead of queueing without bound; the accepted ones are served."""
    running = serve(model_name="loop", model_base_path=str(loop_model), grpc_max_threads=1,
                    max_queued_requests=2)  # fmt: skip
    running.predict.Predict(heavy(200), timeout=30)
    calls = [running.predict.Predict.future(heavy(20_000), timeout=30) for _ in range(10)]
    codes = [call.code() for call in calls]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 5, codes
    assert codes.count(grpc.StatusCode.OK) >= 3, codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_rest_overload_is_shed_with_429(serve, loop_model) -> None:
    import concurrent.futures

    from tests.conftest import free_port
    from tests.test_rest import Http

    running = serve(model_name="loop", model_base_path=str(loop_model), rest_api_port=free_port(),
                    rest_api_num_threads=1, max_queued_requests=2)  # fmt: skip
    http = Http(running.server.settings.rest_api_port)
    body = {"inputs": {"x": np.ones((4, 64)).tolist(), "steps": 20_000}}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: http.post("/v1/models/loop:predict", body), range(10)))
    statuses = [reply.status for reply in replies]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(429) >= 5, statuses
    shed = next(reply for reply in replies if reply.status == 429)
    assert "--max_queued_requests" in shed.error
    assert running.server.metrics.overload_rejections.labels("REST")._value.get() >= 5
