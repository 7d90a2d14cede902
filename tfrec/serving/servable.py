"""One loaded model version: a TF1 Session over the SavedModel's MetaGraph, as TF-Serving loads it.

`Servable.load` restores the MetaGraph tagged `serve` into a private graph and session (running
its init/main op, so tables are initialised), then serves signatures through cached
`Session` callables: one Runner per (feed tensors, fetch tensors) combination, built on first
use (`tfrec.runtime.runner` picks TF's inter-op pool or the calling thread by measuring both). A
callable run costs 5-20 us of Python, against ~160 us for `Session.run`, and it does no
Python-side shape checks (TF-Serving does none either).

With `--session_num_per_group` > 1 (`lanes`), the session is a SessionGroup's and every run
goes to one of its lanes (`tfrec.runtime.lanes`); without it nothing on the request path changes.

With `--scheduler` auto or on (`scheduling`), each Runner's calls go through a
`tfrec.schedule.scheduled.ScheduledRunner`: per bucket of rows, a critical-path schedule of the
signature's graph is built from traced runs and kept where it measures faster.
`settle` (after warmup) finishes those decisions, and each Runner's choice of execution
mode, before the version serves.

Thread-safety: `run` may be called from any number of threads at once (TensorFlow sessions
are thread-safe, and callables are created under a lock). `close` must only be called once
no request holds the servable any more (the manager's lease guarantees it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef
from tensorflow.python.util import deprecation

from tfrec.base import affinity, codecs
from tfrec.base.errors import InvalidArgument, ServingError, from_tf_error
from tfrec.runtime.batching import Batcher, Batching
from tfrec.runtime.lanes import LaneGroup, Lanes
from tfrec.runtime.runner import Runner
from tfrec.schedule import planner as scheduler
from tfrec.schedule.scheduled import Scheduler, Scheduling
from tfrec.serving import structured

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Signature:
    """A SignatureDef prepared for serving: sorted aliases, tensor names, decoded defaults."""

    name: str
    definition: SignatureDef
    inputs: dict[str, str]  # alias -> feed tensor name, sorted by alias
    outputs: dict[str, str]  # alias -> fetch tensor name, sorted by alias
    defaults: dict[str, np.ndarray]

    @classmethod
    def of(cls, name: str, definition: SignatureDef) -> Signature:
        defaults = {}
        for alias, proto in definition.defaults.items():
            try:
                defaults[alias] = codecs.to_ndarray(proto)
            except codecs.TensorParseError:
                log.warning("Signature %s: default of input %s cannot be decoded", name, alias)
        return cls(
            name,
            definition,
            {a: definition.inputs[a].name for a in sorted(definition.inputs)},
            {a: definition.outputs[a].name for a in sorted(definition.outputs)},
            defaults,
        )

    @property
    def method_name(self) -> str:
        return self.definition.method_name


class Servable:
    """A loaded SavedModel version, ready to run its signatures."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        session: tf.compat.v1.Session,
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
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Runner] = {}
        self._lock = threading.Lock()
        # Server-side batching (--enable_batching): None means `run` goes straight to TF.
        self._batcher: Batcher | None = None
        # SessionGroup lanes (--session_num_per_group > 1): None means one plain session.
        self.lanes: LaneGroup | None = None
        # --session_run_mode: a fixed Runner mode, or None to time both (the default).
        self._run_mode: int | None = None
        # --scheduler auto/on: wraps each Runner; None with --scheduler=off.
        self.scheduler: Scheduler | None = None
        # Which fetches change state (never replayed nor scheduled); the graph is read once.
        self._writers = scheduler.StateWriters(session.graph)
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

    @classmethod
    def load(
        cls,
        name: str,
        version: int,
        path: Path,
        tags: Sequence[str],
        session_config: config_pb2.ConfigProto,
        batching: Batching | None = None,
        lanes: Lanes | None = None,
        run_mode: int | None = None,
        scheduling: Scheduling | None = None,
    ) -> Servable:
        """Loads `path` the way TF-Serving does; raises ServingError on any failure.

        With `batching`, every `run` goes through a batcher on the server's batch threads.
        With `lanes`, the version is a SessionGroup and every run goes to one of its lanes.
        `run_mode` fixes how runs without lanes execute (`tfrec.runtime.runner`); None times both.
        With `scheduling`, signatures get critical-path schedules where they measure faster.
        """
        started = time.monotonic()
        group = None
        if lanes is not None:
            group = lanes.load(name, version, path, tags, session_config)
            session, meta_graph = group.session, group.group.meta_graph
        else:
            graph = tf.Graph()
            session = tf.compat.v1.Session(graph=graph, config=session_config)
            try:
                with graph.as_default(), deprecation.silence():
                    meta_graph = tf.compat.v1.saved_model.loader.load(
                        session, list(tags), str(path)
                    )
            except Exception as err:
                session.close()
                raise ServingError(
                    f"Failed to load SavedModel at {path}: {_one_line(err)}"
                ) from err
            graph.finalize()
        log.info(
            "Loaded servable version {name: %s version: %d} from %s in %.2f s",
            name,
            version,
            path,
            time.monotonic() - started,
        )
        servable = cls(name, version, path, meta_graph, session)
        servable.lanes = group
        servable._run_mode = run_mode
        if scheduling is not None:
            servable._attach_scheduler(scheduling, session_config)
        if batching is not None:
            servable._batcher = batching.attach(servable)
        return servable

    def _attach_scheduler(self, scheduling: Scheduling, config: config_pb2.ConfigProto) -> None:
        """A scheduler over the version's session: slots are the inter-op threads a run gets
        (lane replicas have their own devices: their graphs are not scheduled)."""
        if self.lanes is not None:
            options = self.lanes.group.options
            if options.replicas:
                log.info("%s v%d: lanes with their own devices are not scheduled", self.name,
                         self.version)  # fmt: skip
                return
            slots = options.inter_op
        else:
            slots = config.inter_op_parallelism_threads or len(affinity.allowed_cpus())
        self.scheduler = scheduling.create(self._session, slots, self.name, self.version,
                                           self.path, self._writers)  # fmt: skip
        if self.lanes is not None:
            self.lanes.scheduler = self.scheduler
            self.lanes.signature_of = self.signature_of

    def signature_of(self, key: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
        """The signature whose inputs are `key[0]` and whose outputs include `key[1]`."""
        feeds, fetches = set(key[0]), set(key[1])
        for name, signature in self.signatures.items():
            if set(signature.inputs.values()) == feeds and fetches <= set(
                signature.outputs.values()
            ):
                return name
        return ",".join(sorted(fetches))

    def settle(self) -> None:
        """Finishes the decisions warmup started, before the version serves: each Runner's
        execution mode per bucket of rows (`Runner.settle`), then every schedule decision,
        and writes the scheduler's report to its cache directory, if any."""
        with self._lock:
            runners = list(self._callables.items())
        for key, runner in runners:
            if not runner.undecided():
                continue
            if self._writers(key[1]):
                runner.settle(replay=False)  # a replay would change what requests see
            else:
                runner.settle()
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

    def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        """Runs the graph: `feeds` maps tensor names to arrays, `fetches` are tensor names.

        Feed dtypes are checked first, with the exact message TensorFlow's DirectSession
        gives (`Expects arg[i] to be float but string is provided`).
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
        if self._batcher is not None:
            return self._batcher.run(names, args, fetches)
        return self.run_unbatched(names, args, fetches)

    def run_unbatched(
        self, names: Sequence[str], args: Sequence[np.ndarray], fetches: Sequence[str]
    ) -> list[np.ndarray]:
        """One session run over checked feeds (`names[i]` gets `args[i]`); the batcher's too."""
        key = (tuple(names), tuple(fetches))
        if self.lanes is not None:
            return self.lanes.run(key, args)
        fn = self._callables.get(key) or self._make_callable(key)
        try:
            results = fn(*args)
        except tf.errors.OpError as err:
            raise from_tf_error(err) from None
        return [np.asarray(r) for r in results]

    def _make_callable(self, key: tuple[tuple[str, ...], tuple[str, ...]]) -> Runner:
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                label = f"{self.name} v{self.version} fetching {','.join(key[1])}"
                try:
                    fn = Runner(self._session, key[0], key[1], label=label, mode=self._run_mode)
                except tf.errors.OpError as err:
                    raise from_tf_error(err) from None
                if self.scheduler is not None:
                    self.scheduler.attach(fn, key, self.signature_of(key))
                self._callables[key] = fn
            return fn

    def close(self) -> None:
        """Releases the session and its memory. Only once no request uses the servable.

        A batcher first finishes its queued work and stops its queues (and the batch threads
        with the last queue of the server).
        """
        if self._batcher is not None:
            self._batcher.close()
        if self.scheduler is not None:
            self.scheduler.close()  # waits for a build in progress
        with self._lock:
            self._callables.clear()
        if self.lanes is not None:
            self.lanes.close()  # closes the session
        else:
            self._session.close()


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
