"""The Runner times both execution modes on live calls, then keeps the faster; outputs match."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import HALF_PLUS_TWO, TF2
from tfrec.base.errors import DeadlineExceeded
from tfrec.runtime.runner import INLINE, POOLED, Runner
from tfrec.runtime.stage import Run
from tfrec.serving.servable import Servable, session_config


def load(base) -> Servable:  # type: ignore[no-untyped-def]
    path = next(p for p in base.iterdir() if p.name.isdigit())
    return Servable.load("m", int(path.name), path, ["serve"], session_config(0, 0))


def test_runner_settles_on_one_mode_per_bucket_after_its_trials() -> None:
    """Each bucket of rows (a power of two) has its own trial: sizes are never timed against
    each other."""
    servable = load(HALF_PLUS_TWO)
    runner = Runner(servable._session, ["x:0"], ["y:0"], trials=4, label="half_plus_two")
    x = np.array([[2.0], [4.0]], np.float32)  # bucket 2
    big = np.full((100, 1), 2.0, np.float32)  # bucket 128
    for _ in range(7):
        assert runner.mode_of(2) is None
        np.testing.assert_array_equal(runner(x)[0], [[3.0], [4.0]])
        np.testing.assert_array_equal(runner(big)[0], np.full((100, 1), 3.0))
    assert runner.mode is None and runner.mode_of(2) is None and runner.mode_of(128) is None
    runner(x)
    assert runner.mode_of(2) in (POOLED, INLINE) and runner.mode_of(128) is None
    runner(big)
    assert runner.mode_of(128) in (POOLED, INLINE)
    assert runner.mode_of(64) is None  # never ran
    np.testing.assert_array_equal(runner(x)[0], [[3.0], [4.0]])
    assert Runner(servable._session, ["x:0"], ["y:0"], mode=INLINE).mode_of(64) == INLINE
    servable.close()


def test_both_modes_give_identical_outputs() -> None:
    servable = load(TF2)
    signature = servable.signatures["serving_default"]
    feeds, fetches = [signature.inputs["x"]], list(signature.outputs.values())
    x = np.arange(6, dtype=np.float32)
    pooled = Runner(servable._session, feeds, fetches, mode=POOLED)(x)
    inline = Runner(servable._session, feeds, fetches, mode=INLINE)(x)
    np.testing.assert_array_equal(pooled[0], inline[0])
    np.testing.assert_array_equal(pooled[0], 0.5 * x + 2)
    servable.close()


def test_errors_surface_in_either_mode() -> None:
    servable = load(HALF_PLUS_TWO)
    for mode in (POOLED, INLINE):
        runner = Runner(servable._session, ["x:0"], ["y:0"], mode=mode)
        with pytest.raises(tf.errors.InvalidArgumentError, match="string"):
            runner(np.array(["a"], dtype=object))
    servable.close()


def test_settle_decides_every_bucket_the_first_calls_touched() -> None:
    """After warmup, `Servable.settle` replays the kept calls one at a time: each bucket that
    ran has its mode before the version serves; outputs stay right."""
    servable = load(HALF_PLUS_TWO)
    x = np.array([[2.0], [4.0]], np.float32)
    big = np.full((100, 1), 2.0, np.float32)
    for rows in (x, big):  # as one warmup request of each size would
        servable.run({"x:0": rows}, ["y:0"])
    (runner,) = [r for _, r in servable.runners.runners()]
    assert runner.mode_of(2) is None and runner.mode_of(128) is None
    servable.settle()
    assert runner.mode_of(2) in (POOLED, INLINE) and runner.mode_of(128) in (POOLED, INLINE)
    assert runner.mode_of(64) is None and not runner._samples  # kept calls are released
    np.testing.assert_array_equal(servable.run({"x:0": big}, ["y:0"])[0], np.full((100, 1), 3.0))
    servable.close()


def test_concurrent_trials_decide_without_losing_a_call() -> None:
    """Threads running trial calls of the same buckets while another decides them: every
    call returns its own rows (a decided bucket's timing list is gone by then)."""
    import threading

    servable = load(HALF_PLUS_TWO)
    runner = Runner(servable._session, ["x:0"], ["y:0"], trials=2)
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        for i in range(60):
            rows = 1 + (seed + i) % 40  # buckets 1 to 64
            x = np.full((rows, 1), float(rows), np.float32)
            try:
                np.testing.assert_array_equal(runner(x)[0], x / 2 + 2)
            except BaseException as err:
                errors.append(err)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert all(runner.mode_of(b) in (POOLED, INLINE) for b in (1, 2, 4, 8, 16, 32, 64))
    servable.close()


def test_a_run_past_its_deadline_is_dropped_before_it_runs() -> None:
    servable = load(HALF_PLUS_TWO)
    x = np.array([[1.0]], np.float32)
    late = Run((("x:0",), ("y:0",)), [x], deadline=time.monotonic() - 1.0)
    with pytest.raises(DeadlineExceeded):
        servable.stages.run(late)
    on_time = Run((("x:0",), ("y:0",)), [x], deadline=time.monotonic() + 60.0)
    np.testing.assert_array_equal(servable.stages.run(on_time)[0], [[2.5]])
    servable.close()


def test_live_requests_are_not_kept_by_trials(serve) -> None:
    """Trials used to keep copies of a new bucket's first calls until it decided: three 1 GiB
    requests left 9 GB resident on an idle server, and rare buckets never let go. Only warmup
    calls (at load, for `settle`) are kept now."""
    from tensorflow_serving.apis import model_pb2

    from tests.test_grpc_api import predict_request

    running = serve(model_name="default", model_base_path=str(HALF_PLUS_TWO),
                    session_run_mode="auto", scheduler="auto")  # fmt: skip
    big = np.ones(1 << 19, np.float32)  # 2 MiB, a bucket no warmup touched
    for _ in range(3):
        request = predict_request("default")
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(big))
        running.predict.Predict(request)
    with running.manager.lease(model_pb2.ModelSpec(name="default")) as servable:
        runners = servable.runners.runners()
        scheduled = servable.scheduler._runners if servable.scheduler is not None else []
    assert runners and not any(runner.undecided() for _, runner in runners)
    assert not any(s.samples for r in scheduled for s in r._buckets.values())
