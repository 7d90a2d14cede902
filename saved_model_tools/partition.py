"""One signature, end to end in memory: flatten, classify, decompose, and build its twin."""

from __future__ import annotations

import dataclasses

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from saved_model_tools import decompose as decomposition
from saved_model_tools import nodes
from saved_model_tools.classify import Classification, classify
from saved_model_tools.errors import ConversionError
from saved_model_tools.graphs import Graph, inline, op_names
from saved_model_tools.rewrite import Builder, Placeholders, Twin
from saved_model_tools.signatures import Target, check_graph

# Ops that hold state: the twin must use the original node, never a copy.
RESOURCES = op_names(
    """VarHandleOp VariableV2 Variable HashTableV2 HashTable MutableHashTableV2
    MutableHashTable MutableHashTableOfTensorsV2 MutableHashTableOfTensors
    MutableDenseHashTableV2 MutableDenseHashTable"""
)


@dataclasses.dataclass
class Partition:
    target: Target
    graph: Graph  # the flat graph the twin was built from (after decompositions)
    classification: Classification
    twin: Twin
    decompositions: list[decomposition.Decomposition]
    original_ops: int  # ops of the flat original signature


def flatten(meta: meta_graph_pb2.MetaGraphDef, target: Target) -> Graph:
    feeds = {}
    for key, info in target.signature.inputs.items():
        name = target.placeholders[key]
        feeds[name] = nodes.placeholder(
            name, tf.as_dtype(info.dtype), tf.TensorShape(info.tensor_shape)
        )
    return Graph(inline(meta, [f"{n}:{i}" for n, i in target.outputs.values()], feeds))


def partition(
    meta: meta_graph_pb2.MetaGraphDef,
    target: Target,
    prefix: str,
    decompose: bool,
) -> Partition:
    graph = flatten(meta, target)
    check_graph(target, graph)
    original_ops = len(graph.nodes)
    user = [target.placeholders[k] for k in target.user]
    item = [target.placeholders[k] for k in target.item]
    c = classify(graph, user, item)
    applied: list[decomposition.Decomposition] = []
    if decompose:
        roots = [name for name, _ in target.outputs.values()]
        stop = frozenset(target.placeholders.values())
        rewritten, applied = decomposition.decompose(graph, c, roots, stop)
        if applied:
            graph = Graph(rewritten)
            c = classify(graph, user, item)
    shared = shareable(graph, meta.graph_def, c)
    placeholders = Placeholders(target.placeholders, target.user, target.shapes(), target.dtypes())
    twin = Builder(graph, c, placeholders, prefix, shared).build(target.outputs)
    free = _input_free(graph)
    for name, world in twin.worlds.items():
        if world == "user" and free[name]:
            twin.worlds[name] = "const"
    return Partition(target, graph, c, twin, applied, original_ops)


def flat_copy(meta: meta_graph_pb2.MetaGraphDef, target: Target, prefix: str) -> Twin:
    """A plain-op copy of the signature, every input per-item: the original computation as
    the twin's ops see it (for counting FLOPs)."""
    graph = flatten(meta, target)
    c = classify(graph, [], list(target.placeholders.values()))
    shared = shareable(graph, meta.graph_def, c)
    placeholders = Placeholders(target.placeholders, [], target.shapes(), target.dtypes())
    return Builder(graph, c, placeholders, prefix, shared).build(target.outputs)


def shareable(graph: Graph, original: graph_pb2.GraphDef, c: Classification) -> set[str]:
    """Nodes the twin uses from the original graph instead of copying: input-free, outside
    loops, and identical in the original graph. Variables and tables must be among them."""
    before = {n.name: n for n in original.node}
    free = _input_free(graph)
    shared = set()
    for name, node in graph.nodes.items():
        same = name in before and _same_def(before[name], node)
        if same and free[name] and c.frame_of(name) is None and not c.in_item_world(name):
            shared.add(name)
        elif node.op in RESOURCES:
            raise ConversionError(
                f"internal: {node.op} {name} of the flat graph is not the original graph's"
            )
    return shared


IGNORED_ATTRS = {"_output_shapes", "_class"}  # Grappler adds colocation hints


def _same_def(a: node_def_pb2.NodeDef, b: node_def_pb2.NodeDef) -> bool:
    """Equal up to attrs left at their defaults and colocation hints."""
    if a.op != b.op or list(a.input) != list(b.input) or a.device != b.device:
        return False
    a, b = _with_defaults(a), _with_defaults(b)
    keys = (set(a.attr) | set(b.attr)) - IGNORED_ATTRS
    return all(a.attr[k] == b.attr[k] for k in keys)


def _with_defaults(node: node_def_pb2.NodeDef) -> node_def_pb2.NodeDef:
    copy = node_def_pb2.NodeDef()
    copy.CopyFrom(node)
    nodes.fill_defaults(copy)
    return copy


def _input_free(graph: Graph) -> dict[str, bool]:
    """Whether a node depends (data or control) on no placeholder at all."""
    free: dict[str, bool] = {}
    visiting: set[str] = set()
    for root in graph.nodes:
        stack = [(root, False)]
        while stack:
            name, expanded = stack.pop()
            if name in free:
                continue
            node = graph.nodes[name]
            parents = [_node(r) for r in node.input]
            if node.op in ("Placeholder", "PlaceholderV2"):
                free[name] = False
            elif expanded:  # a parent still being visited is a loop: count it as dependent
                free[name] = all(free.get(p, False) for p in parents)
            elif name not in visiting:
                visiting.add(name)
                stack.append((name, True))
                stack.extend((p, False) for p in parents if p not in free and p not in visiting)
    return free


def _node(ref: str) -> str:
    return ref.lstrip("^").partition(":")[0]
