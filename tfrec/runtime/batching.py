"""Server-side batching: TF-Serving's BatchingSession over a SharedBatchScheduler.

`--enable_batching` makes every `Servable.run` a *task* in a queue. One queue per model version
and TensorSignature (the set of feed tensor names plus the set of fetch tensor names, as
TF-Serving keys them), created on first use. A batch thread takes a batch of tasks, concatenates
their feeds along dim 0 (padding as configured), runs the session once, and hands each caller
exactly its own rows of every output. Error texts and codes are TF-Serving's and TensorFlow's
(batching_session.cc, batching_util.cc, shared_batch_scheduler.h).

Threads and locking:
- `SharedBatchScheduler` (TF's): one pool of `num_batch_threads` threads per server,
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
  (`Servable.close` -> `BatchStage.close` drains its queues first).

Batching off is simply not in a version's chain of stages (`tfrec.runtime.stage`).
Runs of a structured twin (user inputs at batch 1, items at N) do not share one dim 0 and
cannot be concatenated: they pass through to the stage below unbatched.

Modules: `batch_options` (BatchingParameters), `batch_queue` (queues, tasks and TF's
SharedBatchScheduler), this one (the stage: merge, run the stage below once, split).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tfrec.base import codecs
from tfrec.base.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServingError,
    Unavailable,
)
from tfrec.runtime.batch_options import SERVER_THREAD_POOL_NAME, BatchingOptions
from tfrec.runtime.batch_queue import SharedBatchScheduler, _Queue, _Task
from tfrec.runtime.stage import WAITING, Dropped, Key, Run, Stage

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from tfrec.base.metrics import Metrics

__all__ = ["SERVER_THREAD_POOL_NAME", "BatchStage", "BatchingOptions", "ServerBatching"]

log = logging.getLogger(__name__)
_MAX_PAD_RANK = 6


class ServerBatching:
    """The server's batching: options, TF's SharedBatchScheduler (one per server), metrics."""

    def __init__(self, options: BatchingOptions, metrics: Metrics) -> None:
        self.options = options
        self.metrics = metrics
        self.scheduler = SharedBatchScheduler(options.num_batch_threads, options.thread_pool_name)


@dataclasses.dataclass(frozen=True)
class _Signature:
    """A TensorSignature: what one queue merges (feeds) and runs (fetches), both sorted."""

    key: Key
    signature: str
    rows: Histogram  # batch_size{model_name, signature}
    requests: Histogram  # batch_requests{model_name, signature}


class BatchStage:
    """TF-Serving's BatchingSession for one model version over the stage below it.

    `run` is thread-safe; `close` drains. `unbatched` names the signatures whose runs pass
    through (structured twins: their feeds have no common dim 0).
    """

    def __init__(
        self, below: Stage, batching: ServerBatching, model: str, unbatched: frozenset[str]
    ) -> None:
        self._below = below
        self._model = model
        self._unbatched = unbatched
        self._options = batching.options
        self._scheduler = batching.scheduler
        self._metrics = batching.metrics
        pool = self._options.thread_pool_name
        self._queuing = batching.metrics.batching_queuing_latency.labels(pool)
        self._runs = batching.metrics.batching_wrapped_run_count.labels(pool)
        self._queues: dict[tuple[frozenset[str], frozenset[str]], _Queue] = {}
        self._lock = threading.Lock()
        self._closed = False

    def run(self, run: Run) -> list[np.ndarray]:
        """Runs one request in a batch; blocks until its own rows of the fetches are back."""
        if run.signature in self._unbatched:
            return self._below.run(run)
        names, fetches = run.key
        size = _batch_size(run.args)
        key = (frozenset(names), frozenset(fetches))
        queue = self._queues.get(key) or self._add_queue(key, run.signature)
        task = _Task(dict(zip(names, run.args, strict=True)), fetches, size, deadline=run.deadline)
        self._scheduler.schedule(queue, task)  # may run the batch right here
        task.done.acquire()
        if isinstance(task.error, Dropped):
            raise Dropped(task.error.message, task.error.stage)
        if task.error is not None:
            raise ServingError(task.error.message, task.error.code)
        return task.outputs

    def queued_tasks(self) -> int:
        """Tasks waiting in this version's queues (for tests and debugging)."""
        with self._scheduler._lock:
            return sum(len(b.tasks) for q in self._queues.values() for b in q.batches)

    def close(self) -> None:
        """Finishes the queued work and closes every queue. Only once no request is in flight."""
        with self._lock:
            self._closed = True
            queues = list(self._queues.values())
        for queue in queues:
            self._scheduler.close_queue(queue)

    def _add_queue(self, key: tuple[frozenset[str], frozenset[str]], signature: str) -> _Queue:
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                if self._closed:
                    raise Unavailable(
                        "The batch scheduling queue is closed: the model is unloading"
                    )
                feeds, fetches = tuple(sorted(key[0])), tuple(sorted(key[1]))
                labels = (self._model, signature or _label(feeds, fetches))
                merged = _Signature(
                    (feeds, fetches),
                    signature,
                    self._metrics.batch_size.labels(*labels),
                    self._metrics.batch_requests.labels(*labels),
                )
                queue = self._scheduler.add_queue(
                    self._options, lambda tasks: self._process(merged, tasks)
                )
                self._queues[key] = queue
            return queue

    def _process(self, signature: _Signature, tasks: list[_Task]) -> None:
        """Merge, run once, split (on a batch thread or a caller's); every task finishes once."""
        now = time.monotonic()
        for task in tasks:
            self._queuing.observe((now - task.enqueued) * 1e6)
        late = [t for t in tasks if t.deadline is not None and t.deadline < now]
        if late:  # their clients have gone: the batch runs without them
            for task in late:
                task.finish([], Dropped("Deadline exceeded while queued for a batch", WAITING))
            tasks = [t for t in tasks if t.deadline is None or t.deadline >= now]
            if not tasks:
                return
        rows = sum(t.size for t in tasks)
        padded = _round_up(self._options.allowed_batch_sizes, rows) if rows else 0
        feeds, fetches = signature.key
        try:
            merged = [self._merge(name, tasks, padded - rows) for name in feeds]
            deadlines = [t.deadline for t in tasks]
            deadline = None if None in deadlines else max(deadlines)  # type: ignore[type-var]
            run = Run(signature.key, merged, signature.signature, deadline=deadline, rows=padded)
            try:
                outputs = self._below.run(run)
            finally:
                self._runs.inc()
                signature.rows.observe(padded)
                signature.requests.observe(len(tasks))
            results = _split(fetches, outputs, tasks, padded)
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


def _label(feeds: Sequence[str], fetches: Sequence[str]) -> str:
    """The `signature` metric label of tensors that come from no one signature: a short key."""
    key = ",".join(feeds) + "->" + ",".join(fetches)
    return key if len(key) <= 64 else f"{key[:55]}~{zlib.crc32(key.encode()):08x}"
