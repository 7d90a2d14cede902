"""The gRPC server's worker pool: each call runs on the worker that went idle last.

`concurrent.futures.ThreadPoolExecutor` wakes its idle workers in turn, so at low concurrency
consecutive requests run on different threads. A TensorFlow run on the calling thread (tfrec's
inline mode, the lanes' light runs) then starts with cold per-thread state every time: measured
on the zoo's WDL at N=1000, its run took 0.3 ms longer in the server than with one gRPC thread.
Here idle workers wait on a stack: at concurrency 1 one thread serves every request, and more
threads join only as calls overlap. Workers start on demand, up to `max_workers`; calls beyond
that wait in order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple[concurrent.futures.Future, Callable[..., Any], tuple, dict]

# Calls submitted to every pool of the process: a number that changes while calls arrive (the
# idle heap trim in `server.memory` watches it).
_submitted = itertools.count()
_last = [0]


def calls_submitted() -> int:
    """The number of calls submitted to any LifoThreadPool so far (approximately)."""
    return _last[0]


class LifoThreadPool(concurrent.futures.Executor):
    def __init__(
        self,
        max_workers: int,
        thread_name_prefix: str = "worker",
        initializer: Callable[[], None] | None = None,
    ) -> None:
        self._max = max(1, max_workers)
        self._prefix = thread_name_prefix
        self._initializer = initializer
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # a stack: the last to go idle is the next to work
        self._backlog: collections.deque[_Item] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future = concurrent.futures.Future()
        item = (future, fn, args, kwargs)
        _last[0] = next(_submitted)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            if self._idle:
                self._idle.pop().give(item)
            elif len(self._threads) < self._max:
                worker = _Worker(self, item)
                thread = threading.Thread(
                    target=worker.loop,
                    name=f"{self._prefix}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog.append(item)
        return future

    def backlog(self) -> int:
        """Calls waiting for a worker."""
        return len(self._backlog)

    def _next(self, worker: _Worker) -> tuple[_Item | None, bool]:
        """After a call: the backlog's oldest call, else the worker goes idle (None, True), or
        it stops (None, False) once the pool is shut down."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft(), True
            if self._shutdown:
                return None, False
            self._idle.append(worker)
            return None, True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for future, *_ in self._backlog:
                    future.cancel()
                self._backlog.clear()
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for worker in idle:
            worker.give(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class _Worker:
    def __init__(self, pool: LifoThreadPool, first: _Item) -> None:
        self._pool = pool
        self._item: _Item | None = first
        self._ready = threading.Semaphore(0)

    def give(self, item: _Item | None) -> None:
        self._item = item
        self._ready.release()

    def loop(self) -> None:
        if self._pool._initializer is not None:
            self._pool._initializer()
        item, self._item = self._item, None
        while item is not None:
            future, done = _run(item)
            # Idle (or on the next call) before the caller hears back: its next call, sent as
            # soon as this one answers, finds this worker, not a new one.
            item, alive = self._pool._next(self)
            done(future)
            # An idle worker holds nothing of its last call (a 128 MiB request and its answer
            # stayed resident until the thread's next call, for every thread).
            del future, done
            if item is None and alive:
                self._ready.acquire()
                item, self._item = self._item, None


def _run(item: _Item) -> tuple[concurrent.futures.Future, Callable[[Any], None]]:
    """Runs the call; returns its future and how to hand it the outcome."""
    future, fn, args, kwargs = item
    if not future.set_running_or_notify_cancel():
        return future, lambda f: None
    try:
        result = fn(*args, **kwargs)
    except BaseException as err:
        return future, lambda f, error=err: f.set_exception(error)
    return future, lambda f: f.set_result(result)
