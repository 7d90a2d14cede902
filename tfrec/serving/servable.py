"""One loaded model version: its signatures, and the chain of stages its runs descend.

`Servable.load` restores the MetaGraph tagged `serve` into a private graph and session (running
its init/main op, so tables are initialised), as TF-Serving loads it, then builds the version's
runtime once, bottom-up, by constructors (`tfrec.runtime.stage`):

    route (structured dedup) -> [batch] -> [lanes] -> runner ([op schedule]) -> TensorFlow

- runner: a `Runners` stage, one `Runner` per (feeds, fetches), TF's inter-op pool or the
  calling thread per bucket of rows (`--session_run_mode`), each wrapped by the operator
  scheduler (`--scheduler`) where it schedules this version;
- lanes (`--session_num_per_group` > 1): a SessionGroup, one Runners stage per lane;
- batch (`--enable_batching`): TF-Serving's BatchingSession;
- route (`--structured_dedup=auto`, a version with structured twins): flat requests whose
  user rows repeat run on the twin.

`settle` (after warmup) finishes the decisions warmup started, before the version serves.

Thread-safety: `run` may be called from any number of threads at once. `close` must only be
called once no request holds the servable any more (the manager's lease guarantees it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.util import deprecation

from tfrec.base import affinity, codecs, wire
from tfrec.base.errors import InvalidArgument, ServingError
from tfrec.runtime.batching import BatchStage
from tfrec.runtime.route import Route
from tfrec.runtime.runner import Runners
from tfrec.runtime.stage import Run, Stage
from tfrec.schedule import planner
from tfrec.serving import structured
from tfrec.serving.signature import Signature

if TYPE_CHECKING:
    from tfrec.base.metrics import Metrics
    from tfrec.runtime.batching import ServerBatching
    from tfrec.runtime.lanes import LaneStage, ServerLanes
    from tfrec.runtime.session_group import SessionGroup
    from tfrec.schedule.scheduled import OpScheduler, ServerScheduling

log = logging.getLogger(__name__)


class Servable:
    """A loaded SavedModel version, ready to run its signatures through its stages."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        session: tf.compat.v1.Session,
        wires: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self.signatures: dict[str, Signature] = {
            key: Signature.of(key, sig) for key, sig in meta_graph.signature_def.items()
        }
        # Structured twins (tfrec-convert), by their own name and by the signature they mirror.
        self.structured = structured.load(path, self.signatures)
        self.twin_of = {twin.original: twin for twin in self.structured.values()}
        self._session = session
        # Actual dtypes of the graph tensors: a SignatureDef may declare a different one.
        self._feed_dtypes: dict[str, codecs.DType | None] = {}
        graph = session.graph
        for signature in meta_graph.signature_def.values():
            for info in signature.inputs.values():
                try:
                    enum = graph.get_tensor_by_name(info.name).dtype.base_dtype.as_datatype_enum
                except (KeyError, ValueError):
                    enum = info.dtype
                self._feed_dtypes[info.name] = codecs.dtype_of_enum(enum)
        # String inputs a request may feed as serialized TensorProtos (`tfrec.base.wire`):
        # signature -> alias -> wire tensor; none where a stage needs the values (`_build`).
        self._wires = dict(wires or {})
        self.wire_inputs: dict[str, dict[str, str]] = {}
        # Which fetches change state (never replayed nor scheduled); the graph is read once.
        self.writers = planner.StateWriters(graph)
        # The stages, set once by `load` (`_build`); each None when off.
        self.runners: Runners | None = Runners(session, label=f"{name} v{version}")
        self.stages: Stage = self.runners
        self.lanes: LaneStage | None = None
        self.batcher: BatchStage | None = None
        self.scheduler: OpScheduler | None = None

    @classmethod
    def load(
        cls,
        name: str,
        version: int,
        path: Path,
        tags: Sequence[str],
        session_config: config_pb2.ConfigProto,
        *,
        batching: ServerBatching | None = None,
        lanes: ServerLanes | None = None,
        run_mode: int | None = None,
        scheduling: ServerScheduling | None = None,
        dedup: bool = False,
        metrics: Metrics | None = None,
    ) -> Servable:
        """Loads `path` the way TF-Serving does and builds its stages; raises ServingError."""
        started = time.monotonic()
        group = None
        if lanes is not None:
            group = lanes.load(name, version, path, tags, session_config)
            session, meta_graph, wires = group.session, group.meta_graph, group.wires
        else:
            session, meta_graph, wires = _load_session(path, tags, session_config)
        log.info(
            "Loaded servable version {name: %s version: %d} from %s in %.2f s",
            name,
            version,
            path,
            time.monotonic() - started,
        )
        servable = cls(name, version, path, meta_graph, session, wires)
        try:
            servable._build(session_config, group, lanes, batching, run_mode, scheduling,
                            dedup, metrics)  # fmt: skip
        except BaseException:
            session.close()
            raise
        return servable

    def _build(
        self,
        config: config_pb2.ConfigProto,
        group: SessionGroup | None,
        lanes: ServerLanes | None,
        batching: ServerBatching | None,
        run_mode: int | None,
        scheduling: ServerScheduling | None,
        dedup: bool,
        metrics: Metrics | None,
    ) -> None:
        """The chain of stages, bottom-up; a stage that is off is not in it."""
        if scheduling is not None:
            if group is not None and group.options.replicas:
                log.info("%s v%d: lanes with their own devices are not scheduled", self.name,
                         self.version)  # fmt: skip
            else:
                threads = config.inter_op_parallelism_threads or len(affinity.allowed_cpus())
                slots = group.options.inter_op if group is not None else threads
                self.scheduler = scheduling.create(
                    self._session, slots, self.name, self.version, self.path, self.writers
                )
        stage: Stage
        if lanes is not None and group is not None:
            stage = self.lanes = lanes.stage(group, self.name, self.version, self.scheduler)
            self.runners = None
        else:
            stage = self.runners = Runners(self._session, label=f"{self.name} v{self.version}",
                                           mode=run_mode, schedules=self.scheduler)  # fmt: skip
        if batching is not None:
            stage = self.batcher = BatchStage(stage, batching, self.name,
                                              frozenset(self.structured))  # fmt: skip
        routes = self._routes() if dedup else {}
        if routes:
            stage = Route(stage, routes, self.name, metrics)
        self.stages = stage
        if batching is None:  # merged batches need arrays to concatenate
            self.wire_inputs = self._wired(exclude=set(routes) | set(self.structured))

    def _wired(self, exclude: set[str]) -> dict[str, dict[str, str]]:
        """Per signature, the string inputs fed on the wire: not those of structured twins
        (their shapes are checked) nor of signatures routed to one (dedup compares rows)."""
        out = {}
        for name, signature in self.signatures.items():
            wired = {a: self._wires[t] for a, t in signature.inputs.items() if t in self._wires}
            if wired and name not in exclude:
                out[name] = wired
        return out

    def _routes(self) -> dict[str, tuple[structured.Twin, Signature]]:
        """Twins a flat run may be routed to: the graph feeds shared inputs the same dtypes."""
        routes = {}
        for original, twin in self.twin_of.items():
            flat, target = self.signatures[original], self.signatures[twin.name]
            if all(
                self.feed_dtype(flat.inputs[a]) == self.feed_dtype(target.inputs[a])
                for a in (*twin.user_inputs, *twin.item_inputs)
                if a in flat.inputs and a in target.inputs
            ):
                routes[original] = (twin, target)
        return routes

    def settle(self) -> None:
        """Finishes the decisions warmup started, before the version serves: each Runner's
        execution mode per bucket of rows (`Runner.settle`), then every schedule decision,
        and writes the scheduler's report to its cache directory, if any."""
        for key, runner in self.runners.runners() if self.runners is not None else []:
            if runner.undecided():
                runner.settle(replay=not self.writers(key[1]))  # replays change state
        if self.runners is not None:
            self.runners.stop_sampling()  # live requests are never kept
        if self.scheduler is None:
            return
        started = time.monotonic()
        self.scheduler.settle()
        self.scheduler.write_cache()
        decisions = self.scheduler.decisions()
        if decisions:
            log.info(
                "Scheduled {name: %s version: %d}: %d of %d signature buckets run scheduled "
                "graphs (%.2f s)",
                self.name,
                self.version,
                sum(d.scheduled for d in decisions),
                len(decisions),
                time.monotonic() - started,
            )

    def feed_dtype(self, tensor_name: str) -> codecs.DType | None:
        """The dtype the graph expects for a feed tensor (None when not representable)."""
        return self._feed_dtypes.get(tensor_name)

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        fetches: Sequence[str],
        signature: str = "",
        aliases: tuple[str, ...] = (),
        outputs: tuple[str, ...] = (),
        deadline: float | None = None,
        rows: int | None = None,
    ) -> list[np.ndarray]:
        """Checks the feed dtypes, then runs down the stages.

        `feeds` maps tensor names to arrays, `fetches` are tensor names; `signature`,
        `aliases` (of the feeds) and `outputs` (of the fetches) say where they come from.
        A wrong dtype gets the exact message TensorFlow's DirectSession gives (`Expects
        arg[i] to be float but string is provided`). `rows` is given where a feed is a wire
        value (whose own shape says nothing of the request's rows).
        """
        names = tuple(feeds)
        args = []
        for i, tensor_name in enumerate(names):
            array = feeds[tensor_name]
            expected = self._feed_dtypes.get(tensor_name)
            if expected is not None and array.dtype != expected.numpy:
                given = codecs.dtype_of_array(array).name
                if given != expected.name:
                    raise InvalidArgument(
                        f"Expects arg[{i}] to be {expected.name} but {given} is provided"
                    )
                array = array.astype(expected.numpy)
            args.append(array)
        key = (names, tuple(fetches))
        run = Run(key, args, signature or self.signature_of(key), aliases, outputs, deadline, rows)
        return self.stages.run(run)

    def signature_of(self, key: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
        """The signature whose inputs are `key[0]` and whose outputs include `key[1]` (for
        runs whose caller did not say: labels, logs), else ""."""
        feeds, fetches = set(key[0]), set(key[1])
        for name in sorted(self.signatures):
            signature = self.signatures[name]
            if set(signature.inputs.values()) == feeds and fetches <= set(
                signature.outputs.values()
            ):
                return name
        return ""

    def close(self) -> None:
        """Releases the session and its memory. Only once no request uses the servable.

        A batcher first finishes its queued work and stops its queues (and the batch threads
        with the last queue of the server).
        """
        if self.batcher is not None:
            self.batcher.close()
        if self.scheduler is not None:
            self.scheduler.close()  # waits for a build in progress
        if self.lanes is not None:
            self.lanes.close()  # closes the session
            return
        if self.runners is not None:
            self.runners.close()
        self._session.close()


def _load_session(
    path: Path, tags: Sequence[str], config: config_pb2.ConfigProto
) -> tuple[tf.compat.v1.Session, meta_graph_pb2.MetaGraphDef, dict[str, str]]:
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default(), deprecation.silence():
            meta_graph, wires = wire.load_with_wire(session, str(path), tags)
    except Exception as err:
        session.close()
        raise ServingError(f"Failed to load SavedModel at {path}: {_one_line(err)}") from err
    graph.finalize()
    return session, meta_graph, wires


def _one_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return " ".join(text.split())


def session_config(intra_op: int, inter_op: int, config_file: str = "") -> config_pb2.ConfigProto:
    """The ConfigProto TF-Serving gives every session: thread counts, soft placement."""
    config = config_pb2.ConfigProto()
    if config_file:
        from google.protobuf import text_format

        text_format.Parse(Path(config_file).read_text(), config)
    if intra_op:
        config.intra_op_parallelism_threads = intra_op
    if inter_op:
        config.inter_op_parallelism_threads = inter_op
    config.allow_soft_placement = True
    return config
