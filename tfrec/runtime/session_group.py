"""SessionGroup on stock TensorFlow: one Session per model version, K lanes, one weight copy.

Separate `Session`s cannot share variables in stock TF (each has its own devices and
ResourceMgr: measured, 4 sessions held 4 copies of a 410 MB table). So a group is ONE session
(`../shared/reference/isolation.md` §4):

- K inter-op pools (`session_inter_op_thread_pool`); lane i runs with
  `RunOptions.inter_op_thread_pool = i`. Without `--use_per_session_threads` the pools are
  named (`global_name`), so lane i of every model version shares one pool: a reload or a
  second model adds no threads. With it, every model version owns its K pools.
- intra-op 1 (the default on a few cores): kernels run on the lane's inter-op threads, so the
  lanes need nothing else. intra-op > 1: K+1 logical CPU devices, each with its own Eigen pool
  (`TF_OVERRIDE_GLOBAL_THREADPOOL=1`, set by `server.main` before TF starts). CPU:0 is the
  *state device*: the restored graph, every variable and table. The serving subgraph (every
  signature's outputs and their ancestors) is imported once per lane under
  `/device:CPU:{i+1}` with each variable/table source input-mapped onto the restored node, so
  reads, gathers and lookups colocate with the one copy on CPU:0 and everything else runs on
  the lane's device and pool.
- GPU (`--use_multi_stream`): K virtual GPUs (`num_virtual_devices_per_gpu`), replica i on
  `/device:GPU:i` (its own compute stream and allocator). Variables, tables and the restore
  stay on the host (CPU:0, one copy); variables under `DENSE_COPY_MAX_BYTES` (dense layers) get
  a per-lane copy on the lane's device, assigned once from the restored value, because stock
  TF cannot share one GPU buffer between two devices. With no GPU visible the same code runs
  with logical CPU devices, which is how the tests exercise it.

Thread-safety: `load` may run on several loader threads (session creation is serialised by
`affinity.creating` so each group can tell its threads); a loaded group is read-only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow.python.ops import gen_resource_variable_ops, gen_state_ops
from tensorflow.python.saved_model import loader_impl
from tensorflow.python.util import deprecation

from tfrec.base import affinity, wire
from tfrec.base.errors import ServingError

log = logging.getLogger(__name__)

STATE_DEVICE = "/device:CPU:0"
# Per-lane device copies are made of variables below this size (dense layers); larger ones
# (embedding tables) and every table stay on the host, shared.
DENSE_COPY_MAX_BYTES = 16 << 20
OVERRIDE_ENV = "TF_OVERRIDE_GLOBAL_THREADPOOL"
_INIT_OP_SIGNATURE = "__saved_model_init_op"
_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})
_STATE_OPS = _VARIABLE_OPS | {
    "HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2",
    "MutableHashTableOfTensors", "MutableHashTableOfTensorsV2",
    "MutableDenseHashTable", "MutableDenseHashTableV2",
}  # fmt: skip
# Named inter-op pools (lane i of every model version), with the threads that serve them.
_GLOBAL_POOLS: dict[str, list[int]] = {}


@dataclasses.dataclass(frozen=True)
class GroupOptions:
    """What every group of the server is built with (resolved from the flags)."""

    lanes: int
    intra_op: int  # Eigen threads per lane device
    inter_op: int  # threads of each lane's inter-op pool
    per_session_threads: bool = False  # pools owned by each model version, else named/shared
    cpusets: tuple[frozenset[int], ...] = ()  # one per lane, or none
    multi_stream: bool = False
    gpu: bool = False  # a GPU is visible (multi_stream then uses virtual GPUs)

    @property
    def replicas(self) -> bool:
        """Lanes need their own devices (and so graph replicas): intra-op > 1 or multi-stream."""
        return self.intra_op > 1 or self.multi_stream

    @classmethod
    def resolve(
        cls,
        lanes: int,
        intra_op: int,
        inter_op: int,
        *,
        per_session_threads: bool = False,
        cpusets: str = "",
        multi_stream: bool = False,
        gpu: bool = False,
    ) -> GroupOptions:
        """0 threads means an even share of the cores (of the lane's CPU set when pinned)."""
        sets = tuple(affinity.parse_cpusets(cpusets, lanes)) if cpusets else ()
        cores = min(map(len, sets)) if sets else len(affinity.allowed_cpus()) // lanes
        share = max(1, cores)
        return cls(
            lanes,
            intra_op or share,
            inter_op or share,
            per_session_threads,
            sets,
            multi_stream,
            gpu and multi_stream,
        )

    def lane_device(self, lane: int) -> str:
        if not self.replicas:
            return ""
        return f"/device:GPU:{lane}" if self.gpu else f"/device:CPU:{lane + 1}"

    def config(self, base: config_pb2.ConfigProto) -> config_pb2.ConfigProto:
        """The group session's ConfigProto: `base` (flags, config file) plus the lanes."""
        config = config_pb2.ConfigProto()
        config.CopyFrom(base)
        config.intra_op_parallelism_threads = self.intra_op
        config.inter_op_parallelism_threads = self.inter_op
        config.use_per_session_threads = False  # superseded by the lane pools
        config.allow_soft_placement = True
        del config.session_inter_op_thread_pool[:]
        for lane in range(self.lanes):
            pool = config.session_inter_op_thread_pool.add(num_threads=self.inter_op)
            if not self.per_session_threads:
                pool.global_name = self.pool_name(lane)
        config.device_count["CPU"] = self.lanes + 1 if self.replicas and not self.gpu else 1
        if self.gpu:
            config.gpu_options.experimental.num_virtual_devices_per_gpu = self.lanes
            if not config.gpu_options.visible_device_list:
                config.gpu_options.visible_device_list = "0"
        return config

    def pool_name(self, lane: int) -> str:
        return f"tfrec_lane{lane}_x{self.inter_op}"


@dataclasses.dataclass
class Lane:
    index: int
    device: str  # "" when lanes differ only by pool
    cpus: frozenset[int] | None
    inter_tids: list[int] = dataclasses.field(default_factory=list)
    intra_tids: list[int] = dataclasses.field(default_factory=list)


class SessionGroup:
    """A loaded model version: one session, its lanes, the tensor names each lane runs."""

    def __init__(
        self,
        session: tf.compat.v1.Session,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        options: GroupOptions,
        lanes: list[Lane],
        replicated: frozenset[str],
        state_tids: list[int],
        wires: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.wires = wires or {}  # string feed -> its wire tensor (`tfrec.base.wire`)
        self.meta_graph = meta_graph
        self.options = options
        self.lanes = lanes
        self.state_tids = state_tids
        self._replicated = replicated  # op names imported into every lane

    def tensor(self, lane: int, name: str) -> str:
        """The name lane `lane` feeds or fetches for graph tensor `name`."""
        if self.options.replicas and name.partition(":")[0].lstrip("^") in self._replicated:
            return f"tfrec_lane{lane}/{name}"
        return name

    def close(self) -> None:
        self.session.close()

    def describe(self) -> str:
        o = self.options
        pools = "own pools" if o.per_session_threads else "pools shared by every model version"
        intra = (
            f"intra-op {o.intra_op} on the lane device"
            if o.replicas
            else "kernels on the lane's inter-op threads"
        )
        lanes = "; ".join(
            f"lane {lane.index}: inter-op pool {lane.index} threads {lane.inter_tids}, device "
            f"{lane.device or STATE_DEVICE}, intra-op threads {lane.intra_tids}, CPUs "
            f"{affinity.format_cpus(lane.cpus) if lane.cpus else 'any'}"
            for lane in self.lanes
        )
        weights = "one copy on " + STATE_DEVICE
        if o.multi_stream:
            weights += f", dense variables < {DENSE_COPY_MAX_BYTES >> 20} MiB copied per lane"
        state = f"state device {STATE_DEVICE} intra-op threads {self.state_tids}"
        return f"{o.lanes} lanes ({pools}, {intra}; weights: {weights}): {lanes}; {state}"

    @classmethod
    def load(
        cls,
        path: Path,
        tags: Sequence[str],
        base_config: config_pb2.ConfigProto,
        options: GroupOptions,
    ) -> SessionGroup:
        """Creates the session, pins its threads, restores once, builds the replicas.

        Raises ServingError (the session closed) on any failure.
        """
        graph = tf.Graph()
        with affinity.creating() as created:
            session = tf.compat.v1.Session(graph=graph, config=options.config(base_config))
        try:
            lanes, state_tids = _lanes_and_threads(options, created)
            with graph.as_default(), deprecation.silence():
                loader = loader_impl.SavedModelLoader(str(path))
                wires = wire.rewrite_meta_graph(loader.get_meta_graph_def_from_tags(list(tags)))
                saver, _ = loader.load_graph(graph, list(tags))
                if options.replicas:
                    for op in graph.get_operations():
                        if _is_state(op.node_def) and not op.device:
                            op._set_device(STATE_DEVICE)
                loader.restore_variables(session, saver)
                loader.run_init_ops(session, list(tags))
                meta_graph = loader.get_meta_graph_def_from_tags(list(tags))
                replicated: frozenset[str] = frozenset()
                if options.replicas:
                    replicated = _replicate(session, meta_graph, options)
            graph.finalize()
        except ServingError:
            session.close()
            raise
        except Exception as err:
            session.close()
            text = " ".join((getattr(err, "message", None) or str(err)).split())
            raise ServingError(f"Failed to load SavedModel at {path}: {text}") from err
        return cls(session, meta_graph, options, lanes, replicated, state_tids, wires)


def _lanes_and_threads(
    options: GroupOptions, created: dict[int, str]
) -> tuple[list[Lane], list[int]]:
    """Assigns the threads the session created to lanes; pins them when cpusets are given."""
    cpus = options.cpusets or (None,) * options.lanes
    lanes = [Lane(i, options.lane_device(i), cpus[i]) for i in range(options.lanes)]
    for lane in lanes:
        tids = sorted(t for t, n in created.items() if n == f"{affinity.INTER_PREFIX}{lane.index}")
        if not options.per_session_threads:
            tids = _GLOBAL_POOLS.setdefault(options.pool_name(lane.index), tids)
        lane.inter_tids = tids
    unnamed = sorted(t for t, n in created.items() if not n.startswith("tf_"))
    devices = options.lanes + 1 if options.replicas and not options.gpu else 1
    expected = devices * options.intra_op
    own_pools = len(unnamed) == expected and os.environ.get(OVERRIDE_ENV) == "1"
    if not own_pools and not options.gpu and (options.replicas or options.cpusets):
        _shared_intra_pool(options, len(unnamed), expected)
    # Eigen pools start in device order: the state device CPU:0, then lane i's CPU:i+1.
    state_tids = unnamed[: options.intra_op] if own_pools else []
    if own_pools and options.replicas and not options.gpu:
        for lane in lanes:
            start = (lane.index + 1) * options.intra_op
            lane.intra_tids = unnamed[start : start + options.intra_op]
    if options.cpusets:
        _pin(options, lanes, state_tids)
    return lanes, state_tids


def _shared_intra_pool(options: GroupOptions, found: int, expected: int) -> None:
    message = (
        f"lanes need their own intra-op pools, but creating the session started {found} "
        f"intra-op threads where {expected} were expected: set {OVERRIDE_ENV}=1 before "
        "TensorFlow creates its first device (tfrec_model_server does so when "
        "--session_num_per_group > 1)"
    )
    if options.cpusets:
        raise ServingError(f"Cannot pin lanes to --session_group_cpusets: {message}")
    log.warning("Lanes share one intra-op pool: %s", message)


def _pin(options: GroupOptions, lanes: list[Lane], state_tids: list[int]) -> None:
    """Pins each lane's inter-op (and intra-op) threads; the state device's to all lanes' CPUs."""
    for lane in lanes:
        if len(lane.inter_tids) != options.inter_op:
            raise ServingError(
                f"Cannot pin lane {lane.index}: found {len(lane.inter_tids)} threads of its "
                f"inter-op pool, expected {options.inter_op}"
            )
    everything = frozenset().union(*options.cpusets)
    try:
        for lane in lanes:
            assert lane.cpus is not None
            affinity.pin(lane.inter_tids + lane.intra_tids, lane.cpus)
        affinity.pin(state_tids, everything)
    except OSError as err:
        raise ServingError(f"Cannot pin lane threads to their CPU sets: {err}") from err


def _is_state(node: tf.compat.v1.NodeDef) -> bool:
    """A variable or table: the node every replica must share rather than copy."""
    if node.op in _STATE_OPS:
        return True
    op_def = op_def_registry.get(node.op)
    if op_def is None or not op_def.output_arg or any(not i.startswith("^") for i in node.input):
        return False
    return all(a.is_ref or a.type == types_pb2.DT_RESOURCE for a in op_def.output_arg)


def _replicate(
    session: tf.compat.v1.Session,
    meta_graph: meta_graph_pb2.MetaGraphDef,
    options: GroupOptions,
) -> frozenset[str]:
    """Imports the serving subgraph once per lane; returns the replicated op names."""
    graph = session.graph
    outputs = sorted(
        {
            info.name.partition(":")[0]
            for key, signature in meta_graph.signature_def.items()
            if key != _INIT_OP_SIGNATURE  # TF2's init op: run once at load, never served
            for info in signature.outputs.values()
        }
    )
    if not outputs:
        return frozenset()
    full = graph.as_graph_def()
    sub = tf.compat.v1.graph_util.extract_sub_graph(full, outputs)
    shared = [node for node in sub.node if _is_state(node)]
    shared_names = {node.name for node in shared}
    replica = graph_pb2.GraphDef()
    replica.versions.CopyFrom(full.versions)
    replica.library.CopyFrom(full.library)
    for node in sub.node:
        if node.name in shared_names:
            continue
        copy = replica.node.add()
        copy.CopyFrom(node)
        copy.device = ""
        if "_class" in copy.attr:  # colocation with a shared node: the placer decides
            del copy.attr["_class"]
        del copy.input[:]  # a control edge from a variable or table orders nothing: dropped
        copy.input.extend(i for i in node.input if not (i[:1] == "^" and i[1:] in shared_names))
    inits = []
    for lane in range(options.lanes):
        device = options.lane_device(lane)
        mapping: dict[str, tf.Tensor] = {}
        for node in shared:
            op = graph.get_operation_by_name(node.name)
            for k, tensor in enumerate(op.outputs):
                mapping[f"{node.name}:{k}"] = tensor
            if options.multi_stream and _dense(node):
                with tf.device(device):
                    copy, init = _lane_copy(op, lane)
                mapping[f"{node.name}:0"] = copy
                inits.append(init)
        with tf.device(device):
            tf.graph_util.import_graph_def(replica, input_map=mapping, name=f"tfrec_lane{lane}")
    if inits:
        session.run(inits)
    return frozenset(node.name for node in replica.node)


def _dense(node: tf.compat.v1.NodeDef) -> bool:
    """A variable small enough to copy to each lane's device (not an embedding table)."""
    if node.op not in _VARIABLE_OPS:
        return False
    shape = [d.size for d in node.attr["shape"].shape.dim]
    if any(d < 0 for d in shape) or node.attr["shape"].shape.unknown_rank:
        return False
    dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
    return int(np.prod(shape)) * dtype.size <= DENSE_COPY_MAX_BYTES


def _lane_copy(op: tf.Operation, lane: int) -> tuple[tf.Tensor, tf.Operation]:
    """A lane-local variable holding the value of the shared variable `op`, and its init."""
    name = f"tfrec_lane{lane}_copy/{op.name}"
    dtype = tf.dtypes.as_dtype(op.get_attr("dtype"))
    shape = op.get_attr("shape")
    if op.type == "VarHandleOp":
        handle = gen_resource_variable_ops.var_handle_op(
            dtype=dtype, shape=shape, shared_name=name, name=name
        )
        value = gen_resource_variable_ops.read_variable_op(op.outputs[0], dtype)
        return handle, gen_resource_variable_ops.assign_variable_op(handle, value)
    ref = gen_state_ops.variable_v2(shape=shape, dtype=dtype, shared_name=name, name=name)
    return ref, gen_state_ops.assign(ref, tf.identity(op.outputs[0])).op
