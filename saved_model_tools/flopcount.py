"""FLOPs of one request at N rows, counted exactly on an execution trace.

`tf.compat.v1.profiler` counts each op of a GraphDef once from static shapes: ops inside a
while loop (a GRU runs its cell 100 times per request) would count once, and shapes that
shape inference leaves open would fail the count. So the signature is run once, on a
flat graph (function calls inlined) in a session with graph optimizations off, with
`RunOptions.FULL_TRACE`; every executed op contributes by its real shapes, once per execution.
Per-op conventions are those of TensorFlow's flops registry (tensorflow/python/profiler/
internal/flops_registry.py): 2*K per output element for MatMul/BatchMatMul, one per output
element for elementwise arithmetic and comparisons, Rsqrt and SquaredDifference two, Softmax
five per element, reductions one per input element (Mean one more per output). Additions:
Einsum counts 2 per multiply-add like MatMul; activations and transcendental functions
(Sigmoid, Tanh, Relu, Exp, ...) count one per element (the registry counts none); memory ops
(Gather, Concat, Tile, Reshape, Select, Cast, ...) count zero.

An original signature is counted on its inlined copy (`tfrec_flops/<sig>`), added to a
temporary SavedModel next to the real one; a structured twin is flat already.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2, saved_model_pb2

from saved_model_tools import graphs, requests, signatures
from saved_model_tools.errors import ConversionError
from saved_model_tools.graphs import attr, op_names
from saved_model_tools.partition import flat_copy
from saved_model_tools.rewrite import node_prefix
from saved_model_tools.savedmodel import Loaded, read_structured_sidecar, write

PREFIX = "tfrec_flops"
Shapes = list[tuple[int, ...]]

ELEMENTWISE = op_names(
    """Add AddV2 Sub Mul RealDiv Div DivNoNan MulNoNan Maximum Minimum Pow FloorDiv FloorMod
    Less LessEqual Greater GreaterEqual Equal NotEqual BiasAdd Atan2 Xdivy Xlogy"""
)
UNARY = op_names(
    """Neg Reciprocal Square Log Log1p Exp Expm1 Sqrt Sigmoid Tanh Relu Relu6 Elu Selu
    LeakyRelu Gelu Softplus Softsign Erf Erfc Sin Cos Abs Sign Floor Ceil Round"""
)
REDUCTIONS = op_names("Sum Max Min Prod ArgMax ArgMin All Any EuclideanNorm")


def _elements(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _matmul(node: node_def_pb2.NodeDef, ins: Shapes, outs: Shapes) -> int:
    a = ins[0]
    transposed = attr(node, "transpose_a").b or attr(node, "adj_x").b
    k = a[-2] if transposed else a[-1]
    return 2 * k * _elements(outs[0])


def _einsum(node: node_def_pb2.NodeDef, ins: Shapes, outs: Shapes) -> int:
    lhs = attr(node, "equation").s.decode().replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs, ins, strict=False):
        if "..." in term:
            return 2 * _elements(outs[0]) * max(shape[-1], 1)  # rare: approximate
        sizes.update(zip(term, shape, strict=False))
    return 2 * int(np.prod(list(sizes.values()), dtype=np.int64))


FORMULAS: dict[str, Callable[[node_def_pb2.NodeDef, Shapes, Shapes], int]] = {
    **{op: (lambda node, ins, outs: _elements(outs[0])) for op in ELEMENTWISE | UNARY},
    **{op: (lambda node, ins, outs: _elements(ins[0])) for op in REDUCTIONS},
    "Rsqrt": lambda node, ins, outs: 2 * _elements(outs[0]),
    "SquaredDifference": lambda node, ins, outs: 2 * _elements(outs[0]),
    "Softmax": lambda node, ins, outs: 5 * _elements(outs[0]),
    "LogSoftmax": lambda node, ins, outs: 5 * _elements(outs[0]),
    "Mean": lambda node, ins, outs: _elements(ins[0]) + _elements(outs[0]),
    "AddN": lambda node, ins, outs: _elements(outs[0]) * max(len(ins) - 1, 0),
    "MatMul": _matmul,
    "BatchMatMul": _matmul,
    "BatchMatMulV2": _matmul,
    "BatchMatMulV3": _matmul,
    "Einsum": _einsum,
}


def trace_config() -> config_pb2.ConfigProto:
    """A session that runs the graph as written: no Grappler, no constant folding."""
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.rewrite_options.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
    config.graph_options.optimizer_options.opt_level = config_pb2.OptimizerOptions.L0
    config.graph_options.optimizer_options.do_constant_folding = False
    return config


def count_trace(
    graph_nodes: dict[str, node_def_pb2.NodeDef],
    metadata: config_pb2.RunMetadata,
    fed: dict[str, tuple[int, ...]],
) -> int:
    """FLOPs of every op execution in a FULL_TRACE run's step stats; `fed`: the shapes of
    the fed tensors (by node name: feeds replace their ops, which never run)."""
    shapes: dict[str, dict[int, tuple[int, ...]]] = {k: {0: v} for k, v in fed.items()}
    runs: list[tuple[str, dict[int, tuple[int, ...]]]] = []
    for device in metadata.step_stats.dev_stats:
        for stats in device.node_stats:
            if stats.node_name not in graph_nodes:
                continue
            outs = {
                o.slot: tuple(d.size for d in o.tensor_description.shape.dim) for o in stats.output
            }
            shapes.setdefault(stats.node_name, outs)
            runs.append((stats.node_name, outs))
    total = 0
    for name, outs in runs:
        node = graph_nodes[name]
        formula = FORMULAS.get(node.op)
        if formula is None:
            continue
        ins = []
        for ref in node.input:
            if ref.startswith("^"):
                continue
            src, index = graphs.tensor_ref(ref)
            ins.append(shapes.get(src, {}).get(index, ()))
        out_shapes = [outs.get(i, ()) for i in range(max(outs, default=-1) + 1)] or [()]
        try:
            total += formula(node, ins, out_shapes)
        except IndexError:  # an input whose shape the trace does not show: count nothing
            continue
    return total


class FlopCounter:
    """Counts FLOPs of a version directory's signatures; loads the model once."""

    def __init__(self, version_dir: Path | str, originals: list[str] | None = None) -> None:
        self.version_dir = Path(version_dir)
        model = graphs.read_saved_model(self.version_dir)
        index = graphs.serve_meta_graph(model, self.version_dir)
        meta = model.meta_graphs[index]
        self.originals = (
            originals
            if originals is not None
            else [n for n in signatures.candidates(meta) if not n.endswith(signatures.SUFFIX)]
        )
        self._tmp = Path(tempfile.mkdtemp(prefix="tfrec-flops-"))
        try:
            counted = saved_model_pb2.SavedModel()
            counted.CopyFrom(model)
            _add_flat_copies(counted.meta_graphs[index], meta, self.originals)
            write(self.version_dir, self._tmp, counted, {})
            self.loaded = Loaded(self._tmp, trace_config())
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.nodes = {n.name: n for n in self.loaded.meta.graph_def.node}

    def count(self, signature: str, n: int, structured: bool, seed: int = 0) -> int:
        """FLOPs of one request with N candidates on `signature` (flat form) or on its
        structured twin."""
        if signature not in self.originals:
            raise ConversionError(f"signature {signature!r} is not one of {self.originals}")
        original = self.loaded.signatures[signature]
        run = signature + signatures.SUFFIX if structured else f"{PREFIX}/{signature}"
        if run not in self.loaded.signatures:
            raise ConversionError(f"{self.version_dir} has no signature {run}")
        user = list(_user_inputs(self.version_dir, run) if structured else [])
        domains = requests.Domains(
            requests.inputs_of(original),
            self.version_dir,
            requests.read_samples(self.version_dir / requests.WARMUP, signature, 20)
            if (self.version_dir / requests.WARMUP).is_file()
            else [],
            requests.graph_strings(self.loaded.meta.graph_def),
        )
        request = domains.request(user, n, seed)
        options = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE)
        metadata = config_pb2.RunMetadata()
        inputs = request.structured if structured else request.flat
        try:
            self.loaded.run(run, inputs, options, metadata)
        except tf.errors.OpError:
            domains.safe = True
            request = domains.request(user, n, seed)
            inputs = request.structured if structured else request.flat
            metadata = config_pb2.RunMetadata()
            self.loaded.run(run, inputs, options, metadata)
        sig = self.loaded.signatures[run]
        fed = {graphs.tensor_ref(sig.inputs[k].name)[0]: v.shape for k, v in inputs.items()}
        return count_trace(self.nodes, metadata, fed)

    def close(self) -> None:
        self.loaded.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FlopCounter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _add_flat_copies(meta, source, names: list[str]) -> None:
    """Adds `tfrec_flops/<sig>`: each signature inlined into plain ops, all in one world."""
    for name in names:
        target = signatures.Target(
            name, source.signature_def[name], [], sorted(source.signature_def[name].inputs)
        )
        copy = flat_copy(source, target, node_prefix(f"{PREFIX}/{name}"))
        meta.graph_def.node.extend(copy.nodes)
        sig = meta.signature_def[f"{PREFIX}/{name}"]
        sig.CopyFrom(source.signature_def[name])
        for key, tensor in copy.inputs.items():
            sig.inputs[key].name = tensor
        for key, tensor in copy.outputs.items():
            sig.outputs[key].name = tensor


def _user_inputs(version_dir: Path, twin: str) -> list[str]:
    entry = read_structured_sidecar(version_dir).get(twin)
    if entry is None:
        raise ConversionError(f"{version_dir} does not describe {twin} in its sidecar")
    return list(entry["user_inputs"])


def flops(version_dir: Path | str, signature: str, n: int, structured: bool) -> int:
    """FLOPs of one request at N rows on `signature` (flat) or its structured twin."""
    with FlopCounter(version_dir, [signature]) as counter:
        return counter.count(signature, n, structured)
