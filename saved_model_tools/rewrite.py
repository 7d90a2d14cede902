"""Build the structured twin of a signature from its classified flat graph.

Every op gets a copy in one world: the user world (`<prefix>/user/...`, fed by user inputs of
batch 1) or the item world (`<prefix>/item/...`, N rows). Ops independent of the inputs that
exist unchanged in the original graph (variables, tables, their reads) are shared, not copied,
so the twin reads the same weights. Where an item-world op consumes a user-world tensor:
- a USER tensor is broadcast to N rows (Tile along its batch axis), once per tensor, at the
  edge where it meets item data: as late as the classification allows. Elementwise ops and
  BatchMatMulV2 broadcast a batch-1 operand by themselves; there the Tile is left out.
- a SHAPE tensor (a shape or batch size seen at N = 1) is recomputed in the item world, from
  N: `Shape(x)` of a user tensor becomes `Shape(x_user) * [1, .., N, .., 1]`.
- a SAME tensor is used as is.
Loop frames are copied whole into one world, their frame names made unique. Control edges are
kept inside loop frames and dropped elsewhere (outside loops, the inlined graph only has
ordering edges between reads of variables).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from saved_model_tools import nodes
from saved_model_tools.ann import Kind
from saved_model_tools.classify import Classification
from saved_model_tools.graphs import Graph, attr, op_names, tensor_name
from saved_model_tools.oprules import BROADCASTING

IMPLICIT_BATCH_MATMUL = frozenset({"BatchMatMulV2", "BatchMatMulV3"})
SHAPE_OPS = op_names("Shape Size ShapeN")


@dataclasses.dataclass
class Placeholders:
    """The signature's inputs: key -> (placeholder node in the flat graph, per-user?)."""

    nodes: dict[str, str]
    user: list[str]
    shapes: dict[str, tf.TensorShape]  # original signature shapes
    dtypes: dict[str, tf.DType]

    def key_of(self, node: str) -> str | None:
        for key, name in self.nodes.items():
            if name == node:
                return key
        return None


@dataclasses.dataclass
class Twin:
    """The rewritten subgraph: new nodes, and the signature's inputs/outputs among them."""

    nodes: list[node_def_pb2.NodeDef]
    inputs: dict[str, str]  # key -> tensor name
    outputs: dict[str, str]  # key -> tensor name
    worlds: dict[str, str]  # original op -> "user" | "item" | "shared"
    broadcasts: list[str]  # user-world tensors broadcast with a Tile
    implicit: list[str]  # user-world tensors the consuming op broadcasts itself
    recomputed: list[str]  # shape ops recomputed in the item world


class Builder:
    def __init__(
        self,
        graph: Graph,
        c: Classification,
        inputs: Placeholders,
        prefix: str,
        shared: set[str],
    ) -> None:
        self.g, self.c, self.inputs, self.prefix, self.shared = graph, c, inputs, prefix, shared
        self.out: dict[str, node_def_pb2.NodeDef] = {}
        self.override: dict[tuple[str, int], str] = {}
        self.broadcasts: list[str] = []
        self.implicit: list[str] = []
        self.recomputed: list[str] = []
        self.item_frames = {i for i, f in enumerate(c.frames) if any(c.in_item_world(n) for n in f)}
        self.placeholder_names = {key: f"{prefix}/input/{_safe(key)}" for key in inputs.nodes}

    # Names of copies.

    def in_item(self, name: str) -> bool:
        frame = self.c.frame_of(name)
        return self.c.in_item_world(name) if frame is None else frame in self.item_frames

    def user_name(self, name: str) -> str:
        key = self.inputs.key_of(name)
        if key is not None:
            return self.placeholder_names[key]
        return name if name in self.shared else f"{self.prefix}/user/{name}"

    def item_name(self, name: str) -> str:
        key = self.inputs.key_of(name)
        if key is not None:
            return self.placeholder_names[key]
        return f"{self.prefix}/item/{name}"

    # Tensors as seen by a consumer in each world.

    def user_ref(self, src: str, index: int) -> str:
        name = self.item_name(src) if self.in_item(src) else self.user_name(src)
        return tensor_name(name, index)

    def item_ref(self, src: str, index: int, consumer: str | None = None) -> str:
        if (src, index) in self.override:
            return self.override[(src, index)]
        if self.in_item(src):
            return tensor_name(self.item_name(src), index)
        a = self.c.anns[src][index]
        if a.kind == Kind.SAME:
            return self.user_ref(src, index)
        if a.kind == Kind.USER:
            if consumer is not None and self._implicit(src, index, consumer):
                self.implicit.append(tensor_name(src, index))
                return self.user_ref(src, index)
            return self._broadcast(src, index)
        if a.kind == Kind.SHAPE:
            self._recompute(src)
            return self.override.get((src, index), tensor_name(self.item_name(src), index))
        raise AssertionError(f"{src}:{index} ({a}) cannot reach the item world")

    def _implicit(self, src: str, index: int, consumer: str) -> bool:
        """Whether `consumer` broadcasts the batch-1 user tensor by itself, exactly as the
        Tile would: same rank, and an item operand with N rows on the same axis."""
        a, out = self.c.anns[src][index], self.c.anns[consumer]
        op = self.g.op(consumer)
        rank = self.g.rank(consumer, 0)
        if op not in BROADCASTING and op not in IMPLICIT_BATCH_MATMUL:
            return False
        if not out or out[0].kind != Kind.ITEM or a.size != 1 or self.g.rank(src, index) != rank:
            return False
        if op in IMPLICIT_BATCH_MATMUL and a.axis >= rank - 2:
            return False
        for other, i in self.g.data_inputs(consumer):
            b = self.c.anns[other][i]
            if b.kind == Kind.ITEM and b.axis == a.axis and self.g.rank(other, i) == rank:
                return True
        return False

    # Nodes added by the rewrite.

    def _add(self, node: node_def_pb2.NodeDef) -> str:
        self.out.setdefault(node.name, node)
        return node.name

    def batch_size(self, dtype: tf.DType = tf.int32) -> str:
        """N: the rows of the first item input, as a scalar of `dtype`."""
        items = [k for k in self.inputs.nodes if k not in self.inputs.user]
        read = [k for k in items if self.g.consumers.get(self.inputs.nodes[k])]
        first = (read or items)[0]  # an input the graph reads is surely fed with N rows
        base = f"{self.prefix}/broadcast"
        shape = self._add(
            nodes.make(
                f"{base}/items_shape",
                "Shape",
                [self.placeholder_names[first]],
                T=self._dtype_of(first),
                out_type=tf.int32,
            )
        )
        zero = self._add(nodes.const(f"{base}/zero", [0]))
        one = self._add(nodes.const(f"{base}/one", [1]))
        n = self._add(
            nodes.make(
                f"{base}/N",
                "StridedSlice",
                [shape, zero, one, one],
                T=tf.int32,
                Index=tf.int32,
                shrink_axis_mask=1,
            )
        )
        if dtype == tf.int32:
            return n
        return self._add(
            nodes.make(f"{base}/N_{dtype.name}", "Cast", [n], SrcT=tf.int32, DstT=dtype)
        )

    def multiples(self, rank: int, axis: int, dtype: tf.DType = tf.int32) -> str:
        """[1, .., N (at axis), .., 1]."""
        base = f"{self.prefix}/broadcast"
        one = self._add(nodes.const(f"{base}/one_{dtype.name}", 1, dtype))
        parts = [self.batch_size(dtype) if i == axis else one for i in range(rank)]
        return self._add(
            nodes.make(
                f"{base}/multiples_{rank}_{axis}_{dtype.name}",
                "Pack",
                parts,
                T=dtype,
                N=rank,
                axis=0,
            )
        )

    def _broadcast(self, src: str, index: int) -> str:
        name = f"{self.prefix}/broadcast/{src}_{index}"
        if name not in self.out:
            a = self.c.anns[src][index]
            rank = self.g.rank(src, index)
            self._add(
                nodes.make(
                    name,
                    "Tile",
                    [self.user_ref(src, index), self.multiples(rank, a.axis)],
                    T=self.g.dtype(src, index),
                    Tmultiples=tf.int32,
                )
            )
            self.broadcasts.append(tensor_name(src, index))
        return tensor_name(name, 0)

    def _recompute(self, name: str) -> None:
        """The item-world copy of a SHAPE op: its value at N rows."""
        if self.item_name(name) in self.out or any(k[0] == name for k in self.override):
            return
        self.recomputed.append(name)
        op = self.g.op(name)
        rows = [self.c.anns[s][i] for s, i in self.g.data_inputs(name)]
        if op in SHAPE_OPS and any(a.kind == Kind.USER for a in rows):
            node = self.g.nodes[name]
            dtype = tf.as_dtype(attr(node, "out_type").type)
            for j, ((src, i), a) in enumerate(zip(self.g.data_inputs(name), rows, strict=True)):
                if a.kind != Kind.USER:
                    raise AssertionError(f"{name}: mixed ShapeN inputs")
                scale = (
                    self.batch_size(dtype)
                    if op == "Size"
                    else self.multiples(self.g.rank(src, i), a.axis, dtype)
                )
                mul = f"{self.item_name(name)}_{j}"
                self._add(nodes.make(mul, "Mul", [self.user_ref(name, j), scale], T=dtype))
                self.override[(name, j)] = tensor_name(mul, 0)
            return
        self._copy(name, item=True)

    # Copies of original ops.

    def _copy(self, name: str, item: bool) -> None:
        node = self.g.nodes[name]
        frame = self.c.frame_of(name)
        new_name = self.item_name(name) if item else self.user_name(name)
        refs = []
        for ref in node.input:
            if ref.startswith("^"):
                src = ref[1:]
                if frame is not None and self.c.frame_of(src) == frame:
                    refs.append("^" + (self.item_name(src) if item else self.user_name(src)))
                continue
            src, index = _split(ref)
            refs.append(self.item_ref(src, index, name) if item else self.user_ref(src, index))
        copy = nodes.copy_node(node, new_name, refs)
        if node.op in ("Enter", "RefEnter"):
            world = "item" if item else "user"
            frame_name = attr(node, "frame_name").s.decode()
            copy.attr["frame_name"].s = f"{self.prefix}/{world}/{frame_name}".encode()
        self._add(copy)

    def _dtype_of(self, key: str) -> tf.DType:
        return self.inputs.dtypes[key]

    def build(self, outputs: dict[str, tuple[str, int]]) -> Twin:
        for key in self.inputs.nodes:
            shape = self.inputs.shapes[key]
            if key in self.inputs.user:
                shape = tf.TensorShape([1]).concatenate(shape[1:])
            self._add(nodes.placeholder(self.placeholder_names[key], self._dtype_of(key), shape))
        worlds = {}
        for name in self.g.nodes:
            if self.inputs.key_of(name) is not None:
                continue
            if self.g.num_outputs(name) == 0 and self.c.frame_of(name) is None:
                continue  # ordering-only NoOps outside loops
            item = self.in_item(name)
            worlds[name] = "item" if item else ("shared" if name in self.shared else "user")
            if name not in self.shared:
                self._copy(name, item)
        result = {}
        for key, (src, index) in outputs.items():
            out = f"{self.prefix}/output/{_safe(key)}"
            self._add(nodes.identity(out, self.item_ref(src, index), self.g.dtype(src, index)))
            result[key] = tensor_name(out, 0)
        inputs = {k: tensor_name(n, 0) for k, n in self.placeholder_names.items()}
        return Twin(
            list(self.out.values()),
            inputs,
            result,
            worlds,
            sorted(set(self.broadcasts)),
            sorted(set(self.implicit)),
            self.recomputed,
        )


def _split(ref: str) -> tuple[str, int]:
    node, _, index = ref.partition(":")
    return node, int(index) if index else 0


def node_prefix(name: str) -> str:
    """A name scope for the twin's nodes made from a signature name."""
    parts = [_safe(p) for p in name.split("/") if p]
    scope = "/".join(parts) or "structured"
    return scope if scope[0].isalnum() else "x" + scope


def _safe(key: str) -> str:
    """A signature key as a node name part."""
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in key) or "_"
