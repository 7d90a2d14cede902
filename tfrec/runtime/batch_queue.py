"""TF's SharedBatchScheduler and its queues: tasks waiting, batches taken, threads serving them.

Threads and locking are described in `tfrec.runtime.batching`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from tfrec.base.errors import Internal, InvalidArgument, ServingError, Unavailable
from tfrec.runtime.batch_options import BatchingOptions

log = logging.getLogger(__name__)


class _Task:
    """One Run() call (or, with splitting, one slice of it) waiting for its batch."""

    __slots__ = (
        "deadline",
        "done",
        "enqueued",
        "error",
        "feeds",
        "fetches",
        "finished",
        "outputs",
        "parent",
        "size",
    )

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        fetches: Sequence[str],
        size: int,
        parent: _Split | None = None,
        deadline: float | None = None,
    ) -> None:
        self.deadline = deadline  # the client's, if any: a merged run takes the latest
        self.feeds = feeds
        self.fetches = fetches
        self.size = size
        self.parent = parent
        self.enqueued = time.monotonic()
        self.done = threading.Lock()  # held until finished: a lighter Event
        self.done.acquire()
        self.outputs: list[np.ndarray] = []
        self.error: ServingError | None = None
        self.finished = False

    def finish(self, outputs: list[np.ndarray], error: ServingError | None) -> None:
        """Hands the result to the caller (or to the split join); only the first call counts."""
        if self.finished:
            return
        self.finished = True
        if self.parent is not None:
            self.parent.part_done(self, outputs, error)
            return
        self.outputs, self.error = outputs, error
        self.done.release()

    def split(self, sizes: list[int]) -> list[_Task]:
        join = _Split(self, len(sizes))
        parts, start = [], 0
        for size in sizes:
            feeds = {name: array[start : start + size] for name, array in self.feeds.items()}
            part = _Task(feeds, self.fetches, size, join, self.deadline)
            part.enqueued = self.enqueued
            parts.append(part)
            start += size
        join.parts = parts
        return parts


class _Split:
    """Joins the slices of a split task: outputs concatenated in order, the first error wins."""

    def __init__(self, task: _Task, count: int) -> None:
        self.task = task
        self.parts: list[_Task] = []
        self.results: dict[int, list[np.ndarray]] = {}
        self.error: ServingError | None = None
        self.left = count
        self.lock = threading.Lock()

    def part_done(self, part: _Task, outputs: list[np.ndarray], error: ServingError | None) -> None:
        with self.lock:
            self.results[id(part)] = outputs
            if error is not None and self.error is None:
                self.error = error
            self.left -= 1
            if self.left:
                return
        if self.error is not None:
            self.task.finish([], self.error)
            return
        pieces = [self.results[id(p)] for p in self.parts]
        try:
            outputs = [np.concatenate([p[i] for p in pieces]) for i in range(len(pieces[0]))]
        except ValueError as err:
            self.task.finish([], Internal(f"Tensor concat operation failed: {err}"))
            return
        self.task.finish(outputs, None)


class _Batch:
    __slots__ = ("size", "started", "tasks")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.size = 0
        self.started = 0.0


class _Queue:
    """TF's internal::Queue: batches of tasks of one TensorSignature; the open batch is last.

    Every attribute is guarded by the scheduler's lock.
    """

    def __init__(self, options: BatchingOptions, process: Callable[[list[_Task]], None]) -> None:
        self.options = options
        self.process = process
        self.batches: collections.deque[_Batch] = collections.deque([_Batch()])
        self.in_flight = 0
        self.closed = False
        self._timeout_s = options.batch_timeout_micros / 1e6

    def admit(self, task: _Task) -> list[_Task]:
        """Checks capacity like TF's ValidateBatchTaskQueueCapacity; returns the pieces to add."""
        o, batches = self.options, self.batches
        if task.size > o.max_batch_size:
            raise InvalidArgument(
                f"Task size {task.size} is larger than maximum input batch size {o.max_batch_size}"
            )
        open_size, limit = batches[-1].size, o.max_execution_batch_size
        if not o.enable_large_batch_splitting:
            if open_size + task.size > o.max_batch_size and len(batches) >= o.max_enqueued_batches:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"currently {len(batches)} batches enqueued and max_enqueued_batches is "
                    f"{o.max_enqueued_batches}"
                )
            return [task]
        capacity = (o.max_enqueued_batches - len(batches)) * limit + (limit - open_size)
        if task.size > capacity:
            raise Unavailable(
                "The batch scheduling queue to which this task was submitted is full; task size "
                f"is {task.size} but scheduling capacity is only {capacity} (num_enqueued_batches="
                f"{len(batches)}, max_enqueued_batches={o.max_enqueued_batches}, open_batch_size="
                f"{open_size}, max_execution_batch_size={limit})"
            )
        free = limit - open_size
        if task.size <= free:
            return [task]
        sizes = [free] if free > 0 else []
        left = task.size - free
        while left > 0:
            sizes.append(min(limit, left))
            left -= sizes[-1]
        return task.split(sizes)

    def add(self, task: _Task, now: float) -> None:
        if self.batches[-1].size + task.size > self.options.max_execution_batch_size:
            self.batches.append(_Batch())
        batch = self.batches[-1]
        if not batch.tasks:
            batch.started = now
        batch.tasks.append(task)
        batch.size += task.size

    def ready(self, now: float) -> bool:
        """Whether a batch can be taken now (TF's IsOpenBatchSchedulable, or a closed batch)."""
        if len(self.batches) > 1:
            return True
        batch = self.batches[0]
        return bool(batch.tasks) and (
            self.closed
            or batch.size >= self.options.max_execution_batch_size
            or now >= batch.started + self._timeout_s
        )

    def take(self, now: float) -> _Batch | None:
        if not self.ready(now):
            return None
        batch = self.batches.popleft()
        if not self.batches:
            self.batches.append(_Batch())
        self.in_flight += 1
        return batch

    def deadline(self) -> float | None:
        batch = self.batches[0]
        return batch.started + self._timeout_s if batch.tasks else None

    def idle(self) -> bool:
        return not self.in_flight and len(self.batches) == 1 and not self.batches[0].tasks


class SharedBatchScheduler:
    """TF's SharedBatchScheduler: at most `num_threads` batches run at once, over every queue.

    A batch runs on one of `num_threads` batch threads or, when a slot is free and the request
    just made its own queue's only batch ready, on the caller's thread (no hand-off: at low load
    batching costs a lock and no context switch). Either way a slot is held while it runs.
    """

    def __init__(self, num_threads: int, thread_pool_name: str) -> None:
        self._num_threads = num_threads
        self._name = thread_pool_name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._queues: list[_Queue] = []
        self._next = 0
        self._running = 0  # batches being processed, by batch threads or callers
        self._threads: list[threading.Thread] = []
        self._started = 0

    def add_queue(self, options: BatchingOptions, process: Callable[[list[_Task]], None]) -> _Queue:
        queue = _Queue(options, process)
        with self._lock:
            self._queues.append(queue)
            while len(self._threads) < self._num_threads:
                self._started += 1
                thread = threading.Thread(
                    target=self._loop, name=f"{self._name}_{self._started}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return queue

    def schedule(self, queue: _Queue, task: _Task) -> None:
        """Enqueues `task` (raising without side effects when it cannot) and returns at once.

        If that made the queue's only batch ready and a slot is free, the caller runs it here.
        """
        with self._lock:
            if queue.closed:
                raise Unavailable("The batch scheduling queue is closed: the model is unloading")
            was_empty = not queue.batches[-1].tasks
            pieces = queue.admit(task)
            now = time.monotonic()
            for piece in pieces:
                queue.add(piece, now)
            batch = None
            if self._running < self._num_threads and len(queue.batches) == 1:
                batch = queue.take(now)
            if batch is not None:
                self._running += 1
            elif len(queue.batches) > 2:
                self._work.notify_all()
            elif was_empty or queue.ready(now):
                # A new deadline, or work now: an idle thread recomputes its wait.
                self._work.notify()
        if batch is not None:
            self._run(queue, batch)

    def close_queue(self, queue: _Queue) -> None:
        """Runs what `queue` holds, removes it; the threads exit with the last queue."""
        with self._lock:
            queue.closed = True
            self._work.notify_all()
            while not queue.idle():
                self._drained.wait()
            index = self._queues.index(queue)
            del self._queues[index]
            if index < self._next:
                self._next -= 1
            threads = [] if self._queues else list(self._threads)
            self._work.notify_all()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)

    def _take(self, now: float) -> tuple[_Queue, _Batch] | None:
        if self._running >= self._num_threads:
            return None
        count = len(self._queues)
        for i in range(count):
            queue = self._queues[(self._next + i) % count]
            batch = queue.take(now)
            if batch is not None:
                self._next = (self._next + i + 1) % count
                self._running += 1
                return queue, batch
        return None

    def _wait_s(self, now: float) -> float | None:
        if self._running >= self._num_threads:
            return None  # woken when a slot frees
        deadlines = [d for q in self._queues if (d := q.deadline()) is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _run(self, queue: _Queue, batch: _Batch) -> None:
        try:
            queue.process(batch.tasks)
        except BaseException:  # never lose a batch thread, never leave a caller waiting
            log.exception("Batch processing failed")
            error = Internal("Batch processing failed")
            for task in batch.tasks:
                task.finish([], error)
        finally:
            with self._lock:
                self._running -= 1
                queue.in_flight -= 1
                if queue.closed:
                    self._drained.notify_all()
                if any(q.batches[0].tasks for q in self._queues):
                    self._work.notify()  # a freed slot: work now, or a deadline to wait for

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    work = self._take(now)
                    if work is not None:
                        break
                    if not self._queues:
                        self._threads.remove(me)
                        return
                    self._work.wait(self._wait_s(now))
            self._run(*work)
