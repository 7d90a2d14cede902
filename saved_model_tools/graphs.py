"""A SavedModel's serving MetaGraph, and one signature of it flattened into plain ops.

`inline` runs Grappler's `function` optimizer alone (nothing else rewrites the graph): every
`PartitionedCall`/`StatefulPartitionedCall` on the path to the signature's outputs becomes the
ops of its function body, `VarHandleOp`/`ReadVariableOp` and lookup tables stay what they are,
and functional `While`/`If` come out as v1 control flow (Enter/Merge/Switch/NextIteration/Exit).
`Graph` indexes a flat GraphDef for the classifier and the rewriter: data inputs, consumers,
static shapes (from TensorFlow's shape inference on import) and loop frames.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow.python.framework import op_def_registry
from tensorflow.python.grappler import tf_optimizer

from saved_model_tools.errors import ConversionError

SERVE_TAGS = frozenset({"serve"})
INIT_OP_SIGNATURE = "__saved_model_init_op"
LOOP_OPS = frozenset({"Enter", "RefEnter", "Exit", "RefExit"})


_NO_ATTR = attr_value_pb2.AttrValue()


def attr(node: node_def_pb2.NodeDef, name: str) -> attr_value_pb2.AttrValue:
    """A node's attr, or an empty AttrValue; never inserts (indexing a proto map does)."""
    return node.attr.get(name, _NO_ATTR)


def op_names(text: str) -> frozenset[str]:
    """A set of op type names from a whitespace-separated list."""
    return frozenset(text.split())


def tensor_ref(name: str) -> tuple[str, int]:
    """'node:1' -> ('node', 1); 'node' -> ('node', 0)."""
    node, _, index = name.partition(":")
    return node, int(index) if index else 0


def tensor_name(node: str, index: int) -> str:
    return f"{node}:{index}"


def read_saved_model(src: Path) -> saved_model_pb2.SavedModel:
    path = Path(src) / "saved_model.pb"
    if not path.is_file():
        raise ConversionError(f"{src} cannot be loaded: it holds no saved_model.pb")
    try:
        return saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except DecodeError as err:
        raise ConversionError(
            f"{src} cannot be loaded: saved_model.pb does not parse ({err})"
        ) from err


def serve_meta_graph(model: saved_model_pb2.SavedModel, src: Path) -> int:
    """The index of the MetaGraph the TF1 loader picks for tags ['serve']."""
    for i, meta in enumerate(model.meta_graphs):
        if frozenset(meta.meta_info_def.tags) == SERVE_TAGS:
            return i
    raise ConversionError(f"{src} cannot be loaded: it has no MetaGraph tagged exactly 'serve'")


def ancestors(
    nodes: dict[str, node_def_pb2.NodeDef], roots: Iterable[str], stop: frozenset[str] = frozenset()
) -> set[str]:
    """Every node the roots depend on through data or control edges, the roots included; the
    inputs of `stop` nodes are not followed."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in stop:
            continue
        for ref in nodes[name].input:
            stack.append(tensor_ref(ref.lstrip("^"))[0])
    return seen


def inline(
    meta: meta_graph_pb2.MetaGraphDef,
    fetches: list[str],
    feeds: dict[str, node_def_pb2.NodeDef] | None = None,
) -> graph_pb2.GraphDef:
    """The ops that compute `fetches` (tensor names) from `feeds` (node name -> the Placeholder
    that stands for it), with every function call inlined."""
    feeds = feeds or {}
    nodes = {n.name: n for n in meta.graph_def.node}
    keep = ancestors(nodes, [tensor_ref(f)[0] for f in fetches])
    item = meta_graph_pb2.MetaGraphDef()
    item.meta_info_def.CopyFrom(meta.meta_info_def)
    item.graph_def.versions.CopyFrom(meta.graph_def.versions)
    item.graph_def.library.CopyFrom(meta.graph_def.library)
    item.graph_def.node.extend(n for n in meta.graph_def.node if n.name in keep)
    item.collection_def["train_op"].node_list.value.extend(fetches)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.append("function")
    rewrite.min_graph_nodes = -1
    rewrite.meta_optimizer_iterations = rewrite.ONE
    try:
        flat = tf_optimizer.OptimizeGraph(config, item)
    except Exception as err:  # Grappler reports any graph problem as a generic error
        raise ConversionError(f"inlining the functions of the graph failed: {err}") from err
    out_nodes = {n.name: n for n in flat.node}
    keep = ancestors(out_nodes, [tensor_ref(f)[0] for f in fetches], frozenset(feeds))
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(flat.versions)
    out.library.CopyFrom(flat.library)
    for node in flat.node:
        if node.name in keep:
            out.node.add().CopyFrom(feeds.get(node.name, node))
    return out


class Graph:
    """A flat GraphDef with lookups. Tensors are (node name, output index) pairs."""

    def __init__(self, graph_def: graph_pb2.GraphDef) -> None:
        """Takes ownership of `graph_def`: attrs left at their defaults are filled in."""
        for node in graph_def.node:
            op_def = op_def_registry.get(node.op)
            for spec in op_def.attr if op_def is not None else ():
                if spec.name not in node.attr and spec.HasField("default_value"):
                    node.attr[spec.name].CopyFrom(spec.default_value)
        self.graph_def = graph_def
        self.nodes: dict[str, node_def_pb2.NodeDef] = {n.name: n for n in graph_def.node}
        self._ops = {op.name: op for op in _import(graph_def).get_operations()}
        self._shapes = static_shapes(graph_def)
        self.consumers: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in graph_def.node:
            for src, _ in self.data_inputs(node.name):
                self.consumers[src].append(node.name)

    def op(self, name: str) -> str:
        return self.nodes[name].op

    @functools.cache  # noqa: B019 - one Graph per conversion, its nodes never change
    def data_inputs(self, name: str) -> list[tuple[str, int]]:
        return [tensor_ref(ref) for ref in self.nodes[name].input if not ref.startswith("^")]

    def control_inputs(self, name: str) -> list[str]:
        return [ref[1:] for ref in self.nodes[name].input if ref.startswith("^")]

    def num_outputs(self, name: str) -> int:
        return len(self._ops[name].outputs)

    def shape(self, node: str, index: int = 0) -> tf.TensorShape:
        return self._shapes[node][index]

    def dtype(self, node: str, index: int = 0) -> tf.DType:
        return self._ops[node].outputs[index].dtype

    def is_stateful(self, name: str) -> bool:
        return bool(self._ops[name].op_def.is_stateful)

    def rank(self, node: str, index: int = 0) -> int | None:
        return self.shape(node, index).rank

    def dims(self, node: str, index: int = 0) -> list[int | None] | None:
        shape = self.shape(node, index)
        return None if shape.rank is None else shape.as_list()


def _import(graph_def: graph_pb2.GraphDef) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


MERGE_OPS = ("Merge", "RefMerge")
ENTER_OPS = ("Enter", "RefEnter")
NEXT_OPS = ("NextIteration", "RefNextIteration")
UNPINNED = (tf.resource.as_datatype_enum, tf.variant.as_datatype_enum)
Shapes = dict[str, list[tf.TensorShape]]


def static_shapes(graph_def: graph_pb2.GraphDef) -> Shapes:
    """TensorFlow's static shapes, completed where import-time inference gives up:
    - a lookup in a table of scalars has the keys' shape (inference needs the table's handle
      data, which a TF1 graph does not carry);
    - loops: on import, an Enter's shape is unknown and a Merge's shape is inferred before its
      loop body is, so everything inside a loop comes out unknown. Here the loop values are
      pinned (as placeholders) to shapes that start at the value entering the loop (loop back
      edges cut) and widen to take in the next iteration until nothing changes, as a shape
      inference over loops would."""
    kinds = {n.name: n for n in graph_def.node}
    shapes = _shapes(_import(graph_def))
    fixed = _lookup_shapes(graph_def, kinds, shapes)
    enters = [n.name for n in graph_def.node if n.op in ENTER_OPS]
    merges = [n.name for n in graph_def.node if n.op in MERGE_OPS]
    if not merges and not enters:
        return _shapes(_import(_pin(graph_def, fixed))) if fixed else shapes
    entering = graph_pb2.GraphDef()
    entering.CopyFrom(graph_def)
    for node in entering.node:
        if node.op in MERGE_OPS:
            kept = [r for r in node.input if kinds[tensor_ref(r.lstrip("^"))[0]].op not in NEXT_OPS]
            del node.input[:]
            node.input.extend(kept)
            node.attr["N"].i = sum(not r.startswith("^") for r in kept)
    pins = {e: tf.TensorShape(None) for e in enters}
    for _ in range(MAX_ROUNDS):  # the values entering each loop, nested loops included
        shapes = _shapes(_import(_pin(entering, {**fixed, **pins})))
        entered = {e: _input_shape(shapes, kinds[e], 0) for e in enters}
        if _same(entered, pins):
            break
        pins = entered
    pins.update({m: shapes[m][0] for m in merges})
    for _ in range(MAX_ROUNDS):  # widen to the next iterations
        shapes = _shapes(_import(_pin(graph_def, {**fixed, **pins})))
        wider = {e: _input_shape(shapes, kinds[e], 0) for e in enters}
        for m in merges:
            shape = pins[m]
            for i, ref in enumerate(kinds[m].input):
                if not ref.startswith("^"):
                    shape = shape.most_specific_compatible_shape(_input_shape(shapes, kinds[m], i))
            wider[m] = shape
        if _same(wider, pins):
            break
        pins = wider
    else:  # not converged: claim nothing about loops
        pins = {name: tf.TensorShape(None) for name in pins}
        shapes = _shapes(_import(_pin(graph_def, {**fixed, **pins})))
    for name, shape in {**fixed, **pins}.items():
        shapes[name] = [shape, *shapes[name][1:]]
    return shapes


SCALAR_TABLES = frozenset({"HashTableV2", "HashTable", "MutableHashTableV2", "MutableHashTable"})
LOOKUPS = frozenset({"LookupTableFindV2", "LookupTableFind"})


def _lookup_shapes(
    graph_def: graph_pb2.GraphDef, kinds: dict[str, node_def_pb2.NodeDef], shapes: Shapes
) -> dict[str, tf.TensorShape]:
    out = {}
    for node in graph_def.node:
        if node.op not in LOOKUPS or shapes[node.name][0].rank is not None:
            continue
        table = tensor_ref(node.input[0])[0]
        while kinds[table].op in ("Identity", "Enter", "RefEnter"):
            table = tensor_ref(kinds[table].input[0])[0]
        if kinds[table].op in SCALAR_TABLES:
            out[node.name] = _input_shape(shapes, node, 1)
    return out


MAX_ROUNDS = 12


def _shapes(graph: tf.Graph) -> Shapes:
    return {op.name: [t.shape for t in op.outputs] for op in graph.get_operations()}


def _input_shape(shapes: Shapes, node: node_def_pb2.NodeDef, i: int) -> tf.TensorShape:
    src, index = tensor_ref(node.input[i])
    return shapes[src][index] if src in shapes else tf.TensorShape(None)


def _same(a: dict[str, tf.TensorShape], b: dict[str, tf.TensorShape]) -> bool:
    return all(a[k].as_proto() == b[k].as_proto() for k in a)


def _pin(graph_def: graph_pb2.GraphDef, pins: dict[str, tf.TensorShape]) -> graph_pb2.GraphDef:
    """The graph with each pinned Enter/Merge output replaced by a placeholder of that shape
    (resource and variant values keep their op: their shapes travel as handle data)."""
    pinned = graph_pb2.GraphDef()
    pinned.versions.CopyFrom(graph_def.versions)
    replaced = set()
    for node in graph_def.node:
        dtype = attr(node, "Tout" if node.op in LOOKUPS else "T").type
        if node.name in pins and dtype not in UNPINNED:
            replaced.add(node.name)
            holder = pinned.node.add(name=node.name, op="Placeholder")
            holder.attr["dtype"].type = dtype
            holder.attr["shape"].shape.CopyFrom(pins[node.name].as_proto())
            if node.op in MERGE_OPS:
                index = pinned.node.add(name=node.name + "__value_index", op="Placeholder")
                index.attr["dtype"].type = tf.int32.as_datatype_enum
        else:
            pinned.node.add().CopyFrom(node)
    for node in pinned.node:
        for i, ref in enumerate(node.input):
            src, index = tensor_ref(ref.lstrip("^"))
            if src in replaced and ref.startswith("^"):
                node.input[i] = ref
            elif src in replaced and index == 1:
                node.input[i] = src + "__value_index"
    return pinned


def loop_frames(graph: Graph) -> list[set[str]]:
    """Top-level while-loop frames, each the set of its nodes (Enter through Exit, nested
    frames included). A frame is classified and moved as one unit."""
    consumers: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for node in graph.graph_def.node:
        for ref in node.input:
            consumers[tensor_ref(ref.lstrip("^"))[0]].append(node.name)
    frames: list[set[str]] = []
    for enter in (n.name for n in graph.graph_def.node if n.op in ("Enter", "RefEnter")):
        seen = {enter}
        stack = [(enter, 1)]
        while stack:
            name, depth = stack.pop()
            for nxt in consumers[name]:
                if nxt in seen:
                    continue
                op = graph.op(nxt)
                level = depth + (op in ("Enter", "RefEnter")) - (op in ("Exit", "RefExit"))
                seen.add(nxt)
                if level > 0:
                    stack.append((nxt, level))
        frames.append(seen)
    merged: list[set[str]] = []
    for frame in frames:  # loops nested in others, and a loop's many Enters, become one unit
        overlapping = [m for m in merged if m & frame]
        for m in overlapping:
            merged.remove(m)
            frame = frame | m
        merged.append(frame)
    return merged
