"""BatchingParameters (`--batching_parameters_file`), validated as TF-Serving validates them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tfrec.base.errors import Code, InvalidArgument, ServingError

# thread_pool_name when --enable_batching is given without a parameters file (server.cc).
SERVER_THREAD_POOL_NAME = "model_server_batch_threads"


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
