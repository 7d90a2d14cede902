"""Warmup: replay `assets.extra/tf_serving_warmup_requests` before a version serves.

TF-Serving's saved_model_warmup: a TFRecord of `PredictionLog`, at most 1000 records, each
replayed `num_request_iterations` times against the version being loaded (its model name and
version are ignored, its signature is used). Any failure fails the load. tfrec's Runners also
use these calls to pick each signature's execution mode, so warmed signatures are fast from
the first client request on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfrec.base.errors import Code, InvalidArgument, ServingError, Unimplemented
from tfrec.base.metrics import Metrics
from tfrec.serving.handlers import Handlers
from tfrec.serving.request import Request
from tfrec.serving.servable import Servable

log = logging.getLogger(__name__)

REQUESTS_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000


def _replay(
    handlers: Handlers, servable: Servable, record: prediction_log_pb2.PredictionLog
) -> None:
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request = record.predict_log.request
        handlers.predict_on(
            servable, Request(request.model_spec, request.inputs, request.output_filter)
        )
    elif kind == "classify_log":
        request = record.classify_log.request
        handlers.classify_on(servable, request.model_spec, request.input)
    elif kind == "regress_log":
        request = record.regress_log.request
        handlers.regress_on(servable, request.model_spec, request.input)
    elif kind == "multi_inference_log":
        handlers.multi_inference_on(servable, record.multi_inference_log.request)
    elif kind is not None:
        number = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind].number
        raise Unimplemented(f"Unsupported log_type for warmup: {number}")


def _records(path: Path):  # type: ignore[no-untyped-def]
    """The raw records; a file that is not a TFRecord raises DATA_LOSS as TF-Serving words it."""
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            yield record.numpy()
    except tf.errors.DataLossError as err:
        raise ServingError(
            f"{err.message}. Please verify your warmup data is in TFRecord format.",
            Code.DATA_LOSS,
        ) from None


def warm_up(
    handlers: Handlers,
    servable: Servable,
    iterations: int = 1,
    metrics: Metrics | None = None,
) -> int:
    """Replays the version's warmup file, if any; returns the records read, raises on failure."""
    path = servable.path / REQUESTS_FILE
    if not path.exists():
        log.info("No warmup data file found at %s", path)
        return 0
    start = time.perf_counter()
    count = 0
    status = "OK"
    try:
        for raw in _records(path):
            try:
                record = prediction_log_pb2.PredictionLog.FromString(raw)
            except Exception:  # protobuf's DecodeError
                raise InvalidArgument(
                    f"Failed to parse warmup record: {raw!r} from {path}"
                ) from None
            for _ in range(max(1, iterations)):
                _replay(handlers, servable, record)
            count += 1
            if count > MAX_RECORDS:
                raise InvalidArgument(
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}"
                )
    except ServingError as err:
        status = f"{err.code.name}: {err.message}"
        raise
    finally:
        elapsed_us = (time.perf_counter() - start) * 1e6
        if metrics is not None:
            metrics.warmup_latency.labels(str(servable.path), status).observe(elapsed_us)
            metrics.warmup_records_read.labels(str(servable.path), status).inc(count)
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        count,
        elapsed_us,
    )
    return count
