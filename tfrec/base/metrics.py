"""Serving metrics: TF-Serving's names and buckets, kept in a prometheus_client registry.

One `Metrics` per server (built in main, handed to whoever records). prometheus_client keeps
the counters and histograms thread-safely; `render()` writes them in TF-Serving's own text
format (util/prometheus_exporter.cc): metric names are TensorFlow's with every character
outside [a-zA-Z0-9_] turned into ':' (`/tensorflow/serving/request_count` ->
`:tensorflow:serving:request_count`), counters without a `_total` suffix, no `_created`
samples, label-less series as `name{} 5`. tfrec's own metrics live under `/tfrec/...`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from tfrec.base.errors import Code

CONTENT_TYPE = "text/plain; charset=utf-8"


def _exponential(scale: float, growth: float, count: int) -> list[float]:
    """TensorFlow's monitoring::Buckets::Exponential limits (the last bucket is +Inf)."""
    return [scale * growth**i for i in range(count - 1)]


# TF-Serving's request/runtime latency buckets: scale 10 us, growth 1.8, 33 buckets.
LATENCY_BUCKETS_US = _exponential(10, 1.8, 33)
EXAMPLE_COUNT_BUCKETS = _exponential(1, 2, 15)
BATCH_SIZE_BUCKETS = _exponential(1, 2, 16)


def prometheus_name(tf_name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", ":", tf_name)
    return "_" + name if name[:1].isdigit() else name


class Metrics:
    """Every metric tfrec exports; methods are thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        n = prometheus_name
        self.request_count = Counter(
            n("/tensorflow/serving/request_count"),
            "The total number of requests.",
            ["model_name", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            n("/tensorflow/serving/request_latency"),
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.runtime_latency = Histogram(
            n("/tensorflow/serving/runtime_latency"),
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ["model_name", "API", "runtime"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.example_counts = Histogram(
            n("/tensorflow/serving/request_example_counts"),
            "The number of tensorflow.Examples per request.",
            ["model"],
            buckets=EXAMPLE_COUNT_BUCKETS,
            registry=r,
        )
        self.example_count_total = Counter(
            n("/tensorflow/serving/request_example_count_total"),
            "The total number of tensorflow.Examples.",
            ["model"],
            registry=r,
        )
        self.load_attempt_count = Counter(
            n("/tensorflow/cc/saved_model/load_attempt_count"),
            "The number of times a SavedModel was successfully loaded.",
            ["model_path", "status"],
            registry=r,
        )
        self.load_latency = Counter(
            n("/tensorflow/cc/saved_model/load_latency"),
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ["model_path"],
            registry=r,
        )
        self.warmup_latency = Histogram(
            n("/tensorflow/serving/model_warmup_latency"),
            "Distribution of wall time (in microseconds) for warming up the model.",
            ["model_path", "status"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.warmup_records_read = Counter(
            n("/tensorflow/serving/model_warmup_records_read"),
            "Number of warmup records read.",
            ["model_path", "status"],
            registry=r,
        )
        self.batching_queuing_latency = Histogram(
            n("/tensorflow/serving/batching_session/queuing_latency"),
            "Distribution of wall time (in microseconds) requests spend queued for a batch.",
            ["thread_pool_name"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.batching_wrapped_run_count = Counter(
            n("/tensorflow/serving/batching_session/wrapped_run_count"),
            "Total count of runs the batching layer wrapped.",
            ["thread_pool_name"],
            registry=r,
        )
        # tfrec's own.
        self.signature_latency = Histogram(
            n("/tfrec/signature_latency"),
            "Distribution of wall time (in microseconds) of a signature run, by signature.",
            ["model_name", "signature"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.batch_size = Histogram(
            n("/tfrec/batch_size"),
            "Rows per batch that server-side batching ran, by model and signature.",
            ["model_name", "signature"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            n("/tfrec/batch_requests"),
            "Requests merged into one batch by server-side batching.",
            ["model_name", "signature"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.structured_dedup = Counter(
            n("/tfrec/structured_dedup"),
            "Flat requests to a signature with a structured twin: run on the twin (hit) or not.",
            ["model_name", "signature", "result"],
            registry=r,
        )
        self.cancelled_work = Counter(
            n("/tfrec/cancelled_work"),
            "Requests whose client deadline passed before or while they ran, by where their "
            "work stopped: waiting (for a worker, in a batch queue, before the session run) "
            "or running (TensorFlow cancelled the run at its timeout).",
            ["model_name", "stage"],
            registry=r,
        )
        self.overload_rejections = Counter(
            n("/tfrec/overload_rejections"),
            "REST calls refused because --max_queued_requests calls already waited for a "
            "worker (gRPC refuses its own inside grpcio, uncounted here).",
            ["transport"],
            registry=r,
        )
        self.model_versions = Gauge(
            n("/tfrec/model_versions_available"),
            "Model versions currently AVAILABLE, by model.",
            ["model_name"],
            registry=r,
        )
        # SessionGroup lanes (--session_num_per_group > 1); lane numbers are per model.
        self.lane_in_flight = Gauge(
            n("/tfrec/lane_in_flight"),
            "Session runs in flight on each lane (running or queued in its pool).",
            ["model_name", "lane"],
            registry=r,
        )
        self.lane_work_in_flight = Gauge(
            n("/tfrec/lane_work_in_flight"),
            "Estimated work (in microseconds) of the session runs in flight on each lane.",
            ["model_name", "lane"],
            registry=r,
        )
        self.lane_requests = Counter(
            n("/tfrec/lane_requests"),
            "Session runs dispatched to each lane, by estimated weight (light or heavy).",
            ["model_name", "lane", "weight"],
            registry=r,
        )
        self.lane_rejections = Counter(
            n("/tfrec/lane_rejections"),
            "Session runs refused with RESOURCE_EXHAUSTED: every lane open to them was full.",
            ["model_name"],
            registry=r,
        )
        self.lane_threads = Gauge(
            n("/tfrec/lane_threads"),
            "Threads of each lane's pools (inter_op, intra_op), by model version and lane.",
            ["model_name", "version", "lane", "pool"],
            registry=r,
        )

        # The operator scheduler (--scheduler auto/on), per signature and bucket of rows.
        self.scheduler_decisions = Counter(
            n("/tfrec/scheduler_decisions"),
            "Signature buckets decided, by the graph their runs take (scheduled or unscheduled).",
            ["model_name", "graph"],
            registry=r,
        )
        self.scheduler_speedup = Gauge(
            n("/tfrec/scheduler_speedup"),
            "Unscheduled over scheduled median run time measured when the bucket was decided.",
            ["model_name", "version", "signature", "bucket"],
            registry=r,
        )

    def observe_request(
        self, model: str, api: str, entrypoint: str, code: Code, latency_s: float
    ) -> None:
        """A finished request: counted by status; its latency kept when it succeeded."""
        self.request_count.labels(model, code.name).inc()
        if code == Code.OK:
            self.request_latency.labels(model, api, entrypoint).observe(latency_s * 1e6)

    def render(self) -> bytes:
        """The Prometheus text page, in TF-Serving's format."""
        # prometheus_client drops a trailing `_total` from counter names; TF's keep theirs.
        renames = {c._name: c._name + "_total" for c in (self.example_count_total,)}
        return ("\n".join(_lines(self.registry.collect(), renames)) + "\n").encode()


def _labels(labels: dict[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"')

    return ",".join(f'{re.sub(r"[^a-zA-Z0-9]", "_", k)}="{escape(v)}"' for k, v in labels.items())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _lines(families: Iterable[Metric], renames: dict[str, str]) -> Iterable[str]:
    for family in families:
        name = renames.get(family.name, family.name)
        if family.type == "histogram":
            yield f"# TYPE {name} histogram"
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = dict(sample.labels)
                if "le" in labels:
                    le = float(labels["le"])
                    labels["le"] = "+Inf" if le == float("inf") else _number(le)
                yield f"{sample.name}{{{_labels(labels)}}} {_number(sample.value)}"
        else:
            kind = family.type if family.type in ("counter", "gauge") else "untyped"
            yield f"# TYPE {name} {kind}"
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                yield f"{name}{{{_labels(sample.labels)}}} {_number(sample.value)}"
