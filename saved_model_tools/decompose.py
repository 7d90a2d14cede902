"""Split linear maps over a concatenation of user and item parts (beyond the reference design).

`concat([u1, .., i1, ..], -1) @ W` equals the sum over contiguous runs r of parts of
`concat(run_r) @ W[rows of r]`: the user runs then depend on user inputs only, so the
classifier moves them to the user world, computed once per request instead of N times, and
the sum broadcasts their batch-1 result. Exact up to float rounding (the sum over the feature
axis is split into partial sums). Recognised forms of the linear map, W a weight (SAME):
- MatMul(concat, W), rank 2 (Keras Dense, tf.matmul);
- the Tensordot chain Keras uses for Dense on rank > 2 inputs:
  MatMul(Reshape([Transpose(] concat [, identity)]), W) -> [rows, units];
- BatchMatMulV2(concat, W) with a rank-2 W;
- Einsum(concat, W) contracting the concatenated axis (EinsumDense, attention projections).
Each split replaces the linear op by a node of the same name computing the same value, so its
consumers are untouched; the graph is then classified again from scratch.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from saved_model_tools import nodes
from saved_model_tools.ann import Kind
from saved_model_tools.classify import Classification
from saved_model_tools.graphs import Graph, ancestors, attr, tensor_name
from saved_model_tools.oprules import einsum_subscripts


@dataclasses.dataclass(frozen=True)
class Decomposition:
    node: str  # the linear op that was split
    form: str  # "MatMul", "Tensordot", "BatchMatMulV2", "Einsum"
    user_width: int  # input features whose product runs once per request
    width: int  # all input features

    def describe(self) -> str:
        return (
            f"{self.form} {self.node}: {self.user_width} of {self.width} input features "
            "computed once per user"
        )


@dataclasses.dataclass
class _Match:
    node: node_def_pb2.NodeDef
    form: str
    concat: str
    weight: str  # tensor name
    axis: int  # the weight's axis that the concatenated features contract with
    units: int | None  # Tensordot: the output width


def decompose(
    graph: Graph, c: Classification, roots: list[str], stop: frozenset[str]
) -> tuple[graph_pb2.GraphDef, list[Decomposition]]:
    """The graph with every recognised split applied (and dead ops removed), and the splits."""
    added: dict[str, node_def_pb2.NodeDef] = {}
    done: list[Decomposition] = []
    for node in graph.graph_def.node:
        if not c.in_item_world(node.name) or c.frame_of(node.name) is not None:
            continue
        match = _match(graph, c, node)
        if match is None:
            continue
        runs = _runs(graph, c, match.concat)
        if runs is None:
            continue
        for new in _split(graph, match, runs):
            added[new.name] = new
        for new in _shapes_of_concat(graph, match.concat, runs):
            added[new.name] = new
        width = sum(w for _, _, w in runs)
        user = sum(w for side, _, w in runs if side == "user")
        done.append(Decomposition(node.name, match.form, user, width))
    if not done:
        return graph.graph_def, []
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph.graph_def.versions)
    out.library.CopyFrom(graph.graph_def.library)
    merged = {n.name: n for n in graph.graph_def.node}
    merged.update(added)
    live = ancestors(merged, roots, stop)
    out.node.extend(node for name, node in merged.items() if name in live)
    return out, done


def _through_identity(graph: Graph, src: str, index: int) -> tuple[str, int]:
    while graph.op(src) in ("Identity", "Snapshot") and index == 0:
        src, index = graph.data_inputs(src)[0]
    return src, index


def _values(c: Classification, src: str, index: int) -> list[int] | None:
    a = c.anns[src][index]
    return a.sym.values() if a.kind == Kind.SAME and a.sym is not None else None


def _concat_last(graph: Graph, c: Classification, src: str, index: int) -> str | None:
    src, index = _through_identity(graph, src, index)
    if graph.op(src) != "ConcatV2" or index != 0:
        return None
    rank = graph.rank(src)
    axis = _values(c, *graph.data_inputs(src)[-1])
    if rank is None or axis is None:
        return None
    return src if axis[0] in (-1, rank - 1) else None


def _match(graph: Graph, c: Classification, node: node_def_pb2.NodeDef) -> _Match | None:
    ins = graph.data_inputs(node.name)
    if len(ins) != 2 or c.anns[ins[1][0]][ins[1][1]].kind != Kind.SAME:
        return None
    weight_dims = graph.dims(*ins[1])
    if weight_dims is None or None in weight_dims:
        return None
    weight = tensor_name(*ins[1])
    if node.op == "MatMul" and not attr(node, "transpose_a").b:
        axis = 1 if attr(node, "transpose_b").b else 0
        concat = _concat_last(graph, c, *ins[0])
        if concat is not None and graph.rank(concat) == 2:
            return _Match(node, "MatMul", concat, weight, axis, None)
        src, index = _through_identity(graph, *ins[0])
        if graph.op(src) != "Reshape" or index != 0:
            return None
        inner = graph.data_inputs(src)[0]
        if graph.op(inner[0]) == "Transpose" and _identity_perm(graph, c, inner[0]):
            inner = graph.data_inputs(inner[0])[0]
        concat = _concat_last(graph, c, *inner)
        if concat is None or _last_dim(graph, c, src) != weight_dims[axis]:
            return None
        return _Match(node, "Tensordot", concat, weight, axis, weight_dims[1 - axis])
    if node.op in ("BatchMatMulV2", "BatchMatMulV3") and len(weight_dims) == 2:
        if attr(node, "adj_x").b:
            return None
        concat = _concat_last(graph, c, *ins[0])
        axis = 1 if attr(node, "adj_y").b else 0
        return None if concat is None else _Match(node, node.op, concat, weight, axis, None)
    if node.op == "Einsum":
        return _match_einsum(graph, c, node, ins, weight)
    return None


def _match_einsum(graph: Graph, c: Classification, node, ins, weight: str) -> _Match | None:
    equation = attr(node, "equation").s.decode()
    concat = _concat_last(graph, c, *ins[0])
    ranks = [graph.rank(*ins[0]), graph.rank(*ins[1])]
    if concat is None or None in ranks or "..." in equation:
        return None
    parsed = einsum_subscripts(equation, ranks)
    if parsed is None:
        return None
    (lhs, rhs), out = parsed
    letter = lhs[-1]
    if letter in out or rhs.count(letter) != 1 or lhs.count(letter) != 1:
        return None
    return _Match(node, "Einsum", concat, weight, rhs.index(letter), None)


def _last_dim(graph: Graph, c: Classification, reshape: str) -> int | None:
    """The static width of a Reshape's result, from shape inference or from its target."""
    dims = graph.dims(reshape)
    if dims is not None and dims[-1] is not None:
        return dims[-1]
    target = c.anns[graph.data_inputs(reshape)[1][0]][graph.data_inputs(reshape)[1][1]].sym
    if target is None or target.scalar or not target.elems or target.elems[-1][0] != "c":
        return None
    return target.elems[-1][1]


def _identity_perm(graph: Graph, c: Classification, name: str) -> bool:
    values = _values(c, *graph.data_inputs(name)[1])
    return values is not None and values == list(range(len(values)))


def _runs(graph: Graph, c: Classification, concat: str) -> list[tuple[str, list[str], int]] | None:
    """Contiguous runs of user / item parts of the concat: (side, tensors, width)."""
    runs: list[tuple[str, list[str], int]] = []
    for src, index in graph.data_inputs(concat)[:-1]:
        a = c.anns[src][index]
        dims = graph.dims(src, index)
        if dims is None or dims[-1] is None:
            return None
        side = "user" if a.kind == Kind.USER and a.axis == 0 else "item"
        if a.kind == Kind.USER and a.axis != 0:
            return None
        if runs and runs[-1][0] == side:
            runs[-1][1].append(tensor_name(src, index))
            runs[-1] = (side, runs[-1][1], runs[-1][2] + dims[-1])
        else:
            runs.append((side, [tensor_name(src, index)], dims[-1]))
    sides = {side for side, _, _ in runs}
    return runs if sides == {"user", "item"} else None


def _split(graph: Graph, m: _Match, runs) -> list[node_def_pb2.NodeDef]:
    name, dtype = m.node.name, tf.as_dtype(attr(m.node, "T").type)
    base = f"{name}/tfrec_split"
    rank = len(graph.dims(*_weight_ref(m)))
    out: list[node_def_pb2.NodeDef] = []
    sums: dict[str, str] = {}
    offset = 0
    for r, (side, parts, width) in enumerate(runs):
        x = parts[0]
        if len(parts) > 1:
            axis = nodes.const(f"{base}/{r}/axis", -1)
            x = f"{base}/{r}/concat"
            out += [
                axis,
                nodes.make(
                    x, "ConcatV2", [*parts, axis.name], T=dtype, N=len(parts), Tidx=tf.int32
                ),
            ]
        begin = [offset if i == m.axis else 0 for i in range(rank)]
        size = [width if i == m.axis else -1 for i in range(rank)]
        out += [nodes.const(f"{base}/{r}/begin", begin), nodes.const(f"{base}/{r}/size", size)]
        w = f"{base}/{r}/weight"
        out.append(
            nodes.make(
                w,
                "Slice",
                [m.weight, f"{base}/{r}/begin", f"{base}/{r}/size"],
                T=dtype,
                Index=tf.int32,
            )
        )
        y = f"{base}/{r}/product"
        out += _product(m, f"{base}/{r}", x, w, y, width, dtype)
        offset += width
        if side in sums:
            total = f"{base}/{side}_sum_{r}"
            out.append(nodes.make(total, "AddV2", [sums[side], y], T=dtype))
            y = total
        sums[side] = y
    final = name if m.form != "Tensordot" else f"{base}/sum"
    out.append(nodes.make(final, "AddV2", [sums["item"], sums["user"]], T=dtype))
    if m.form == "Tensordot":
        out.append(nodes.const(f"{base}/rows", [-1, m.units]))
        out.append(nodes.make(name, "Reshape", [final, f"{base}/rows"], T=dtype, Tshape=tf.int32))
    return out


def _shapes_of_concat(graph: Graph, concat: str, runs) -> list[node_def_pb2.NodeDef]:
    """`Shape(concat)` read from an item part instead (same leading dims, known width), so the
    concat itself, with its user parts broadcast to N rows, is no longer needed for its shape
    (the Tensordot chain reads it to reshape its result)."""
    width = sum(w for _, _, w in runs)
    piece = next(parts[0] for side, parts, _ in runs if side == "item")
    out = []
    for consumer in graph.consumers[concat]:
        node = graph.nodes[consumer]
        if node.op != "Shape":
            continue
        dtype = tf.as_dtype(attr(node, "out_type").type)
        base = f"{consumer}/tfrec_split"
        shape = nodes.make(
            f"{base}/item_shape",
            "Shape",
            [piece],
            T=tf.as_dtype(attr(node, "T").type),
            out_type=dtype,
        )
        zero, last, one = (
            nodes.const(f"{base}/{n}", [v]) for n, v in (("z", 0), ("l", -1), ("o", 1))
        )
        lead = nodes.make(
            f"{base}/lead",
            "StridedSlice",
            [shape.name, zero.name, last.name, one.name],
            T=dtype,
            Index=tf.int32,
            begin_mask=1,
        )
        width_node = nodes.const(f"{base}/width", [width], dtype)
        axis = nodes.const(f"{base}/axis", 0)
        same = nodes.make(
            consumer,
            "ConcatV2",
            [lead.name, width_node.name, axis.name],
            T=dtype,
            N=2,
            Tidx=tf.int32,
        )
        out += [shape, zero, last, one, lead, width_node, axis, same]
    return out


def _weight_ref(m: _Match) -> tuple[str, int]:
    node, _, index = m.weight.partition(":")
    return node, int(index or 0)


def _product(m: _Match, base: str, x: str, w: str, y: str, width: int, dtype: tf.DType):
    attrs = {k: v for k, v in m.node.attr.items() if k not in ("_class",)}
    if m.form != "Tensordot":
        node = nodes.make(y, m.node.op, [x, w])
        for key, value in attrs.items():
            node.attr[key].CopyFrom(value)
        return [node]
    flat_shape = nodes.const(f"{base}/flat_shape", [-1, width])
    flat = nodes.make(f"{base}/flat", "Reshape", [x, flat_shape.name], T=dtype, Tshape=tf.int32)
    product = nodes.make(f"{base}/matmul", "MatMul", [flat.name, w])
    for key, value in attrs.items():
        product.attr[key].CopyFrom(value)
    shape = nodes.make(f"{base}/shape", "Shape", [x], T=dtype, out_type=tf.int32)
    zero, last, one = (nodes.const(f"{base}/{n}", [v]) for n, v in (("z", 0), ("l", -1), ("o", 1)))
    lead = nodes.make(
        f"{base}/lead",
        "StridedSlice",
        [shape.name, zero.name, last.name, one.name],
        T=tf.int32,
        Index=tf.int32,
        begin_mask=1,
    )
    units = nodes.const(f"{base}/units", [m.units])
    axis = nodes.const(f"{base}/shape_axis", 0)
    out_shape = nodes.make(
        f"{base}/out_shape",
        "ConcatV2",
        [lead.name, units.name, axis.name],
        T=tf.int32,
        N=2,
        Tidx=tf.int32,
    )
    back = nodes.make(y, "Reshape", [product.name, out_shape.name], T=dtype, Tshape=tf.int32)
    return [flat_shape, flat, product, shape, zero, last, one, lead, units, axis, out_shape, back]
