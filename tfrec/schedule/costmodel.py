"""Per-op costs of one signature, measured from TensorFlow's step stats; plain JSON on disk.

A session run traced (`RunOptions.trace_level`, see `TRACE_LEVEL`) with
`output_partition_graphs` returns two things (`Trace`): the graph TensorFlow actually
executed (after Grappler, function inlining and the oneDNN rewrites: a Keras Dense layer is
one `_MklNativeFusedMatMul` node named after its activation) and, for every node execution,
when it started and how long its kernel ran. The node names of both agree, so the costs
attach to the graph the scheduler rewrites.

Costs are kept per *bucket* of rows (the largest dim 0 of the feeds, rounded up to a power of
two: the cost of a ranking request grows with its candidates N) as the median over the traced
runs of each node's kernel microseconds per run (a node in a while loop runs once per
iteration: its executions are summed). Tracing inflates short kernels by a microsecond or two
and serialises some dispatching, so the costs rank ops; they do not predict wall time exactly.

The JSON (format 1) is meant to be read by people as much as by tfrec:

    {"format": 1, "signature": "serving_default", "feeds": [...], "fetches": [...],
     "graph": "<fingerprint of the executed graph>",
     "buckets": {"128": {"rows": [100, 100], "wall_us": 2210.0, "overhead_us": 1.0,
                         "nodes": {"<node>": {"op": "_MklNativeFusedMatMul", "us": 212.0}}}}}

`tfrec-schedule profile` writes it to `<version>/assets.extra/tfrec_cost_model.json`; the
server builds it in memory at load (it never needs write access to a model directory) and,
with `--scheduler_cache_dir`, also writes it there.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import config_pb2

from tfrec.runtime.stage import bucket_of, rows_of

FORMAT = 1
# The step stats of every node: FULL_TRACE adds only device (GPU) tracing, which a CPU run
# lacks, and logs a warning per run saying so.
TRACE_LEVEL = config_pb2.RunOptions.SOFTWARE_TRACE
COST_FILE = Path("assets.extra") / "tfrec_cost_model.json"


def fingerprint(graph: graph_pb2.GraphDef) -> str:
    """Names and ops of an executed graph, hashed: whether stored costs still apply."""
    text = "\n".join(sorted(f"{n.name} {n.op}" for n in graph.node))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Bucket:
    """Costs of one bucket of rows: medians over `len(rows)` traced runs."""

    rows: list[int]
    wall_us: float  # first node start to last node end, traced
    overhead_us: float  # executor time per node execution outside its kernel
    nodes: dict[str, tuple[str, float]]  # node -> (op, kernel us per run)

    def us(self, node: str) -> float:
        entry = self.nodes.get(node)
        return entry[1] if entry is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "wall_us": round(self.wall_us, 1),
            "overhead_us": round(self.overhead_us, 2),
            "nodes": {k: {"op": op, "us": round(us, 1)} for k, (op, us) in self.nodes.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Bucket:
        nodes = {k: (v["op"], float(v["us"])) for k, v in doc["nodes"].items()}
        return cls([int(r) for r in doc["rows"]], float(doc["wall_us"]),
                   float(doc["overhead_us"]), nodes)  # fmt: skip


@dataclasses.dataclass
class CostModel:
    """Costs of one signature's (feeds, fetches) per bucket, for one executed graph."""

    signature: str
    feeds: list[str]
    fetches: list[str]
    graph: str  # fingerprint of the executed graph the node names belong to
    buckets: dict[int, Bucket] = dataclasses.field(default_factory=dict)

    def nearest(self, rows: int) -> Bucket | None:
        """The bucket measured for `rows`, else the nearest one (by log of rows)."""
        if not self.buckets:
            return None
        want = bucket_of(rows).bit_length()
        return self.buckets[min(self.buckets, key=lambda b: (abs(b.bit_length() - want), b))]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "signature": self.signature,
            "feeds": self.feeds,
            "fetches": self.fetches,
            "graph": self.graph,
            "buckets": {str(b): self.buckets[b].to_json() for b in sorted(self.buckets)},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CostModel:
        if doc.get("format") != FORMAT:
            raise ValueError(f"cost model format {doc.get('format')!r}, expected {FORMAT}")
        buckets = {int(b): Bucket.from_json(v) for b, v in doc["buckets"].items()}
        return cls(doc["signature"], list(doc["feeds"]), list(doc["fetches"]), doc["graph"],
                   buckets)  # fmt: skip


def dumps(models: Sequence[CostModel]) -> str:
    """The cost file: every signature's model of one version."""
    doc = {"format": FORMAT, "signatures": [m.to_json() for m in models]}
    return json.dumps(doc, indent=1) + "\n"


def loads(text: str) -> list[CostModel]:
    doc = json.loads(text)
    if doc.get("format") != FORMAT:
        raise ValueError(f"cost file format {doc.get('format')!r}, expected {FORMAT}")
    return [CostModel.from_json(m) for m in doc["signatures"]]


def read(path: Path) -> list[CostModel]:
    """The models stored at `path`; [] when absent or unreadable (a stale file is no error)."""
    try:
        return loads(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write(path: Path, models: Sequence[CostModel]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(models))
    tmp.replace(path)


class Trace:
    """Traced runs of one (feeds, fetches) of a session; collects node times per bucket.

    Not thread-safe: one caller at a time (the scheduler's build lock).
    """

    def __init__(
        self,
        session: tf.compat.v1.Session,
        feeds: Sequence[str],
        fetches: Sequence[str],
        pool: int | None = None,
    ) -> None:
        options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
        options.run_options.trace_level = TRACE_LEVEL
        options.run_options.output_partition_graphs = True
        if pool is not None:
            options.run_options.inter_op_thread_pool = pool
        self._fn = session._make_callable_from_options(options)
        self.feeds, self.fetches = list(feeds), list(fetches)
        self.graphs: list[graph_pb2.GraphDef] = []  # executed partitions, from the first run
        self._runs: dict[int, list[tuple[int, dict[str, float], float, float]]] = (
            collections.defaultdict(list)
        )

    def __call__(self, *args: np.ndarray) -> list[Any]:
        metadata = config_pb2.RunMetadata()
        results = self._fn(*args, run_metadata=metadata)
        if not self.graphs:
            self.graphs = list(metadata.partition_graphs)
        rows = rows_of(args)
        self._runs[bucket_of(rows)].append((rows, *_node_times(metadata)))
        return results

    def runs(self, rows: int) -> int:
        return len(self._runs.get(bucket_of(rows), ()))

    def model(self, signature: str) -> CostModel:
        """The costs seen so far (the first run of each bucket left out when there are more:
        it may include one-off allocations)."""
        if len(self.graphs) != 1:
            raise ValueError(f"the signature ran as {len(self.graphs)} partitions, not one")
        graph = self.graphs[0]
        ops = {node.name: node.op for node in graph.node}
        model = CostModel(signature, self.feeds, self.fetches, fingerprint(graph))
        for bucket, runs in self._runs.items():
            runs = runs[1:] if len(runs) > 1 else runs
            names = sorted({name for _, times, _, _ in runs for name in times} & set(ops))
            nodes = {
                name: (
                    ops[name],
                    statistics.median(times.get(name, 0.0) for _, times, _, _ in runs),
                )
                for name in names
            }
            model.buckets[bucket] = Bucket(
                [rows for rows, _, _, _ in runs],
                statistics.median(wall for _, _, wall, _ in runs),
                statistics.median(overhead for _, _, _, overhead in runs),
                nodes,
            )
        return model


def _node_times(metadata: config_pb2.RunMetadata) -> tuple[dict[str, float], float, float]:
    """Node -> kernel us summed over its executions, the run's span, and the median executor
    time per execution outside its kernel."""
    times: dict[str, float] = collections.defaultdict(float)
    overheads: list[float] = []
    start, end = float("inf"), 0.0
    for device in metadata.step_stats.dev_stats:
        for stats in device.node_stats:
            if stats.node_name in ("_SOURCE", "_SINK"):
                continue
            kernel = max(0, stats.op_end_rel_micros - stats.op_start_rel_micros)
            overheads.append(max(0, stats.all_end_rel_micros - kernel))
            times[stats.node_name] += kernel
            start = min(start, stats.all_start_micros)
            end = max(end, stats.all_start_micros + stats.all_end_rel_micros)
    wall = end - start if times else 0.0
    return dict(times), wall, statistics.median(overheads) if overheads else 0.0
