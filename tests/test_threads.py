"""The gRPC worker pool: the last idle worker takes the next call; overlapping calls get their
own workers up to the limit, then wait in order; shutdown ends every worker."""

from __future__ import annotations

import threading

import pytest

from server.threads import LifoThreadPool


def test_sequential_calls_run_on_one_thread() -> None:
    pool = LifoThreadPool(8, thread_name_prefix="t")
    names = {pool.submit(lambda: threading.current_thread().name).result() for _ in range(50)}
    assert names == {"t_0"}
    pool.shutdown()


def test_overlapping_calls_get_workers_up_to_the_limit_then_queue() -> None:
    pool = LifoThreadPool(2, thread_name_prefix="t")
    release = threading.Event()
    started: list[str] = []

    def blocked() -> str:
        started.append(threading.current_thread().name)
        release.wait(10)
        return threading.current_thread().name

    futures = [pool.submit(blocked) for _ in range(5)]
    while len(started) < 2:
        threading.Event().wait(0.01)
    assert len(started) == 2 and not any(f.done() for f in futures)  # 3 wait for a worker
    release.set()
    assert {f.result(10) for f in futures} == {"t_0", "t_1"}
    pool.shutdown()


def test_errors_reach_the_caller_and_shutdown_refuses_new_calls() -> None:
    pool = LifoThreadPool(2)
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(10)
    assert pool.submit(lambda: 7).result(10) == 7
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: 1)
    assert not any(t.is_alive() for t in pool._threads)
