"""Server-side batching: TF-Serving's BatchingSession over a SharedBatchScheduler.

`--enable_batching` makes every `Servable.run` a *task* in a queue. One queue per model version
and TensorSignature (the set of feed tensor names plus the set of fetch tensor names, as
TF-Serving keys them), created on first use. A batch thread takes a batch of tasks, concatenates
their feeds along dim 0 (padding as configured), runs the session once, and hands each caller
exactly its own rows of every output. Error texts and codes are TF-Serving's and TensorFlow's
(batching_session.cc, batching_util.cc, shared_batch_scheduler.h).

Threads and locking:
- `Scheduler` is TF's SharedBatchScheduler: one pool of `num_batch_threads` threads per server,
  serving every queue of every model version in turn (round robin), and at most that many
  batches running at once. All queue state lives under the scheduler's one lock; batch threads
  wait on `_work`, `close` waits on `_drained`.
- A batch is taken when a slot is free and it is full, its oldest task waited
  `batch_timeout_micros`, or its queue is closing. With a timeout of 0 requests merge only while
  every slot is busy, as in TF-Serving.
- Where a request finds a free slot and makes its queue's only batch ready, its own thread runs
  that batch (TF would hand it to a batch thread: two thread switches, ~40 us in Python).
  Otherwise callers block on their task's lock. Merging, the run and splitting happen outside
  the lock. A failing batch fails only its own callers; nothing raises out of a batch thread.
- The threads start with the first queue and exit once the last queue is closed
  (`Servable.close` -> `Batcher.close` drains its queues first).

Batching off costs the request path one `is None` test in `Servable.run`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import text_format

from tfrec.base import codecs
from tfrec.base.errors import (
    Code,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServingError,
    Unavailable,
)

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from tfrec.base.metrics import Metrics
    from tfrec.serving.servable import Servable

log = logging.getLogger(__name__)

# thread_pool_name when --enable_batching is given without a parameters file (server.cc).
SERVER_THREAD_POOL_NAME = "model_server_batch_threads"
_MAX_PAD_RANK = 6


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """A validated BatchingParameters; unset fields take TF's SharedBatchScheduler defaults."""

    max_batch_size: int = 1000  # rows one request may have (input_batch_size_limit)
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=_cpus)
    thread_pool_name: str = "batch_threads"
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 1000  # rows one run may have
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_proto(cls, params: Any) -> BatchingOptions:
        """From a `tensorflow.serving.BatchingParameters`; InvalidArgument as TF words it."""

        def get(field: str, default: Any) -> Any:
            return getattr(params, field).value if params.HasField(field) else default

        max_batch = get("max_batch_size", 1000)
        split = get("enable_large_batch_splitting", False)
        options = cls(
            max_batch_size=max_batch,
            batch_timeout_micros=get("batch_timeout_micros", 0),
            max_enqueued_batches=get("max_enqueued_batches", 10),
            num_batch_threads=get("num_batch_threads", _cpus()),
            thread_pool_name=get("thread_pool_name", "batch_threads"),
            enable_large_batch_splitting=split,
            max_execution_batch_size=get("max_execution_batch_size", max_batch)
            if split
            else max_batch,
            allowed_batch_sizes=tuple(params.allowed_batch_sizes),
            pad_variable_length_inputs=params.pad_variable_length_inputs,
        )
        options._validate()
        if options.max_enqueued_batches == 0 and not split:
            # SharedBatchScheduler::AddQueue rewrites 0 to 1 for old low-QPS configs.
            options = dataclasses.replace(options, max_enqueued_batches=1)
        return options

    @classmethod
    def read(cls, path: str) -> BatchingOptions:
        """Parses a text BatchingParameters file (`--batching_parameters_file`)."""
        from tfrec.protos.batching_parameters_pb2 import (  # type: ignore[attr-defined]
            BatchingParameters,
        )

        try:
            text = Path(path).read_text()
        except OSError as err:
            code = Code.NOT_FOUND if isinstance(err, FileNotFoundError) else Code.INVALID_ARGUMENT
            raise ServingError(f"{path}; {err.strerror}", code) from err
        try:
            params = text_format.Parse(text, BatchingParameters())
        except text_format.ParseError as err:
            raise InvalidArgument(
                f"Invalid protobuf file: '{path}': Error parsing text-format "
                f"tensorflow.serving.BatchingParameters: {err}"
            ) from err
        return cls.from_proto(params)

    def _validate(self) -> None:
        def invalid(condition: bool, message: str) -> None:
            if condition:
                raise InvalidArgument(message)

        invalid(
            self.num_batch_threads < 1,
            f"num_batch_threads must be positive; was {self.num_batch_threads}",
        )
        last = self.allowed_batch_sizes[-1] if self.allowed_batch_sizes else None
        invalid(
            last is not None and last != self.max_batch_size,
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
            f"{last}; expected {self.max_batch_size}",
        )
        invalid(
            self.max_batch_size < 1,
            f"input_batch_size_limit must be positive; was {self.max_batch_size}",
        )
        invalid(
            self.batch_timeout_micros < 0,
            f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}",
        )
        invalid(
            self.max_enqueued_batches < 0
            or (self.max_enqueued_batches == 0 and self.enable_large_batch_splitting),
            f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}",
        )
        invalid(
            self.max_execution_batch_size < 1,
            f"max_execution_batch_size must be positive; was {self.max_execution_batch_size}",
        )
        invalid(
            self.max_batch_size < self.max_execution_batch_size,
            "When enable_large_batch_splitting is true, input_batch_size_limit must be greater "
            "than or equal to max_execution_batch_size.",
        )


class _Task:
    """One Run() call (or, with splitting, one slice of it) waiting for its batch."""

    __slots__ = (
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
    ) -> None:
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
            part = _Task(feeds, self.fetches, size, join)
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


class Scheduler:
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


class Batching:
    """What `Servable.load` needs to batch: options, the server's scheduler, the metrics."""

    def __init__(self, options: BatchingOptions, metrics: Metrics) -> None:
        self.options = options
        self.metrics = metrics
        self.scheduler = Scheduler(options.num_batch_threads, options.thread_pool_name)

    def attach(self, servable: Servable) -> Batcher:
        return Batcher(servable, self)


@dataclasses.dataclass(frozen=True)
class _Signature:
    """A TensorSignature: what one queue merges (feeds) and runs (fetches), both sorted."""

    feeds: tuple[str, ...]
    fetches: tuple[str, ...]
    rows: Histogram  # batch_size{model_name, signature}
    requests: Histogram  # batch_requests{model_name, signature}


class Batcher:
    """TF-Serving's BatchingSession for one servable. `run` is thread-safe; `close` drains."""

    def __init__(self, servable: Servable, batching: Batching) -> None:
        self._servable = servable
        self._options = batching.options
        self._scheduler = batching.scheduler
        self._metrics = batching.metrics
        pool = self._options.thread_pool_name
        self._queuing = batching.metrics.batching_queuing_latency.labels(pool)
        self._runs = batching.metrics.batching_wrapped_run_count.labels(pool)
        self._queues: dict[tuple[frozenset[str], frozenset[str]], _Queue] = {}
        self._lock = threading.Lock()
        self._closed = False

    def run(
        self, names: Sequence[str], args: Sequence[np.ndarray], fetches: Sequence[str]
    ) -> list[np.ndarray]:
        """Runs one request in a batch; blocks until its own rows of `fetches` are back."""
        size = _batch_size(args)
        key = (frozenset(names), frozenset(fetches))
        queue = self._queues.get(key) or self._add_queue(key)
        task = _Task(dict(zip(names, args, strict=True)), fetches, size)
        self._scheduler.schedule(queue, task)  # may run the batch right here
        task.done.acquire()
        if task.error is not None:
            raise ServingError(task.error.message, task.error.code)
        return task.outputs

    def queued_tasks(self) -> int:
        """Tasks waiting in this servable's queues (for tests and debugging)."""
        with self._scheduler._lock:
            return sum(len(b.tasks) for q in self._queues.values() for b in q.batches)

    def close(self) -> None:
        """Finishes the queued work and closes every queue. Only once no request is in flight."""
        with self._lock:
            self._closed = True
            queues = list(self._queues.values())
        for queue in queues:
            self._scheduler.close_queue(queue)

    def _add_queue(self, key: tuple[frozenset[str], frozenset[str]]) -> _Queue:
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                if self._closed:
                    raise Unavailable(
                        "The batch scheduling queue is closed: the model is unloading"
                    )
                labels = (self._servable.name, _label(self._servable, key[0], key[1]))
                signature = _Signature(
                    tuple(sorted(key[0])),
                    tuple(sorted(key[1])),
                    self._metrics.batch_size.labels(*labels),
                    self._metrics.batch_requests.labels(*labels),
                )
                queue = self._scheduler.add_queue(
                    self._options, lambda tasks: self._process(signature, tasks)
                )
                self._queues[key] = queue
            return queue

    def _process(self, signature: _Signature, tasks: list[_Task]) -> None:
        """Merge, run once, split (on a batch thread or a caller's); every task finishes once."""
        now = time.monotonic()
        for task in tasks:
            self._queuing.observe((now - task.enqueued) * 1e6)
        rows = sum(t.size for t in tasks)
        padded = _round_up(self._options.allowed_batch_sizes, rows) if rows else 0
        try:
            merged = [self._merge(name, tasks, padded - rows) for name in signature.feeds]
            try:
                outputs = self._servable.run_unbatched(signature.feeds, merged, signature.fetches)
            finally:
                self._runs.inc()
                signature.rows.observe(padded)
                signature.requests.observe(len(tasks))
            results = _split(signature.fetches, outputs, tasks, padded)
        except ServingError as err:
            for task in tasks:
                task.finish([], err)
            return
        except Exception as err:  # a bug or an odd input numpy rejects: fail this batch only
            log.exception("Batch of %d tasks failed", len(tasks))
            for task in tasks:
                task.finish([], Internal(f"Batch processing failed: {err}"))
            return
        for task, result in zip(tasks, results, strict=True):
            task.finish([result[name] for name in task.fetches], None)

    def _merge(self, name: str, tasks: list[_Task], padding_rows: int) -> np.ndarray:
        """MergeInputTensors for one tensor: shape checks or padding, then one concatenation."""
        parts = [task.feeds[name] for task in tasks]
        if self._options.pad_variable_length_inputs:
            parts = _pad_to_largest(name, parts)
        else:
            first = parts[0].shape[1:]
            for part in parts[1:]:
                if part.ndim != parts[0].ndim or part.shape[1:] != first:
                    raise FailedPrecondition(
                        f"Tensors with name '{name}' from different tasks have different shapes "
                        "and padding is turned off. Set pad_variable_length_inputs to true, or "
                        "ensure that all tensors with the same name have equal dimensions "
                        "starting with the first dim."
                    )
        if padding_rows:
            # TF-Serving pads with copies of the last task's first row: a valid input row.
            source = next(p for p in reversed(parts) if len(p))
            parts.append(np.repeat(source[:1], padding_rows, axis=0))
        if len(parts) == 1:
            return parts[0]
        dtypes = {p.dtype for p in parts}
        if len(dtypes) > 1 and len({codecs.dtype_of_array(p).name for p in parts}) > 1:
            raise Internal(
                "Tensor concat operation failed: Cannot concatenate tensors that have different "
                f"data types: tensor '{name}'"
            )
        return np.concatenate(parts)


def _batch_size(args: Sequence[np.ndarray]) -> int:
    """ComputeTensorBatchSize: every feed's dim 0, which must agree."""
    if not args:
        raise InvalidArgument("Batching Run() must have at least one input tensor")
    size = -1
    for array in args:
        if array.ndim == 0:
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        if size >= 0 and array.shape[0] != size:
            raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
        size = array.shape[0]
    return size


def _round_up(allowed: Sequence[int], size: int) -> int:
    """RoundToLowestAllowedBatchSize."""
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def _pad_to_largest(name: str, parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pads every non-batch dim to the largest among the tasks, with each tensor's first value."""
    rank = parts[0].ndim
    if any(p.ndim != rank for p in parts):
        raise InvalidArgument(
            f"Tensors with name '{name}' from different tasks have different ranks and cannot "
            "be padded to one shape."
        )
    if rank > _MAX_PAD_RANK:
        raise InvalidArgument("Only tensors with rank from 1 to 6 can be padded.")
    largest = tuple(max(p.shape[d] for p in parts) for d in range(1, rank))
    out = []
    for part in parts:
        if part.shape[1:] == largest:
            out.append(part)
            continue
        if not part.size:
            raise InvalidArgument("Got empty tensor in batch of non-empty tensors.")
        widths = [(0, 0)] + [(0, m - s) for m, s in zip(largest, part.shape[1:], strict=True)]
        out.append(np.pad(part, widths, mode="constant", constant_values=part.flat[0]))
    return out


def _split(
    fetches: Sequence[str], outputs: Sequence[np.ndarray], tasks: list[_Task], padded: int
) -> list[dict[str, np.ndarray]]:
    """SplitOutputTensors: each task's rows of every output (padding rows dropped)."""
    for output in outputs:
        if output.ndim == 0:
            raise FailedPrecondition("Batched output tensor has 0 dimensions")
        if output.shape[0] != padded:
            raise FailedPrecondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                "dimension sizes of the input tensors"
            )
    if len(tasks) == 1 and tasks[0].size == padded:
        return [dict(zip(fetches, outputs, strict=True))]
    results, start = [], 0
    for task in tasks:
        end = start + task.size
        results.append({name: out[start:end] for name, out in zip(fetches, outputs, strict=True)})
        start = end
    return results


def _label(servable: Servable, feeds: frozenset[str], fetches: frozenset[str]) -> str:
    """The `signature` metric label: the SignatureDef these tensors come from, else a short key."""
    for name in sorted(servable.signatures):
        signature = servable.signatures[name]
        if set(signature.inputs.values()) == feeds and fetches <= set(signature.outputs.values()):
            return name
    key = ",".join(sorted(feeds)) + "->" + ",".join(sorted(fetches))
    return key if len(key) <= 64 else f"{key[:55]}~{zlib.crc32(key.encode()):08x}"
