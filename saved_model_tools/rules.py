"""Per-op rules: given the annotations of an op's inputs, the annotations of its outputs.

A rule may only answer USER for an op it knows works row by row along the batch axis: run on
the one user's row it must give exactly one row-block of what it gives on N copies of that
row. Every op without a rule, and every rule that is not sure (unknown rank, an axis that is
not a constant, a reduction or sort over the batch axis, a batch statistic), answers FULL: the
op then runs at N rows in the item world on exactly the inputs it had in the original graph.
Correctness never depends on a rule being present, only on present rules being right.
"""

from __future__ import annotations

from saved_model_tools import layoutrules as lay
from saved_model_tools import oprules as ops
from saved_model_tools import symbolic
from saved_model_tools.ann import BOTTOM, FULL, SAME, Ann, Kind, Sym, join, row, same, shape
from saved_model_tools.graphs import Graph, op_names
from saved_model_tools.oprules import Ctx, Rule

SHAPE_OPS = op_names("Shape Size ShapeN")
# Stateful in TensorFlow's op registry, but reading them twice gives the same value.
PURE_STATEFUL = op_names(
    """VarHandleOp ReadVariableOp VariableV2 Variable HashTableV2 HashTable MutableHashTableV2
    MutableHashTable MutableHashTableOfTensorsV2 MutableDenseHashTableV2 LookupTableFindV2
    LookupTableFind LookupTableSizeV2 ResourceGather ResourceGatherNd VarIsInitializedOp
    IsVariableInitialized"""
)

RULES: dict[str, Rule] = {
    **{op: ops.unary for op in ops.UNARY},
    **{op: ops.broadcasting for op in ops.BROADCASTING},
    **{op: ops.reduction for op in ops.REDUCTIONS},
    "ArgMax": ops.reduction,
    "ArgMin": ops.reduction,
    "AddN": ops.add_n,
    "Select": ops.select_v1,
    "BiasAdd": ops.bias_add,
    "Softmax": ops.last_axis_op,
    "LogSoftmax": ops.last_axis_op,
    "TopKV2": ops.last_axis_op,
    "Cumsum": ops.along_axis,
    "Cumprod": ops.along_axis,
    "CumulativeLogsumexp": ops.along_axis,
    "MatMul": ops.matmul,
    "BatchMatMul": ops.batch_matmul,
    "BatchMatMulV2": ops.batch_matmul,
    "BatchMatMulV3": ops.batch_matmul,
    "Einsum": ops.einsum,
    "ConcatV2": lay.concat,
    "Concat": lay.concat,
    "Pack": lay.pack,
    "Unpack": lay.unpack,
    "Split": lay.split,
    "SplitV": lay.split,
    "Reshape": lay.reshape,
    "ExpandDims": lay.expand_dims,
    "Squeeze": lay.squeeze,
    "Transpose": lay.transpose,
    "Tile": lay.tile,
    "BroadcastTo": lay.broadcast_to,
    "Slice": lay.slice_,
    "StridedSlice": lay.strided_slice,
    "Pad": lay.pad,
    "PadV2": lay.pad,
    "MirrorPad": lay.pad,
    "OneHot": lay.one_hot,
    "GatherV2": ops.gather,
    "Gather": ops.gather,
    "ResourceGather": ops.gather,
    "GatherNd": ops.gather_nd,
    "LookupTableFindV2": ops.lookup,
    "LookupTableFind": ops.lookup,
    "Conv2D": ops.batch_first,
    "Conv3D": ops.batch_first,
    "DepthwiseConv2dNative": ops.batch_first,
    "MaxPool": ops.batch_first,
    "AvgPool": ops.batch_first,
    "FusedBatchNorm": ops.fused_batch_norm,
    "FusedBatchNormV2": ops.fused_batch_norm,
    "FusedBatchNormV3": ops.fused_batch_norm,
    "IdentityN": ops.identity_n,
}
# Rules that make rows out of SAME data and a SHAPE that holds N.
FROM_SHAPE: dict[str, Rule] = {"Fill": lay.fill, "Tile": lay.tile, "BroadcastTo": lay.broadcast_to}
PASS_THROUGH = op_names(
    """Enter RefEnter Exit RefExit NextIteration RefNextIteration Identity Snapshot
    StopGradient PreventGradient"""
)


def shape_of(ctx: Ctx) -> list[Ann]:
    """Shape/Size/ShapeN: of a row tensor, a SHAPE that holds N on the batch axis."""
    outs = []
    for i, a in enumerate(ctx.ins):
        dims = ctx.in_dims(i)
        if a.kind == Kind.SAME:
            known = dims is not None and None not in dims
            sym = symbolic.from_dims(dims) if dims is not None else None
            if ctx.op == "Size":
                sym = Sym((("c", _prod(dims)),), True) if known else None
            outs.append(same(sym))
        elif a.is_row and dims is not None:
            sym = symbolic.from_dims(dims, a.axis, a.size)
            if ctx.op == "Size":
                block = [d for j, d in enumerate(dims) if j != a.axis] + [a.size]
                sym = Sym((("n", _prod(block) if None not in block else None),), True)
            outs.append(shape(sym, a.in_item_world))
        elif a.kind == Kind.SHAPE:
            outs.append(shape(None, a.item))
        else:
            return [FULL] * ctx.num_outputs
    return outs


def _prod(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def list_op(ctx: Ctx) -> list[Ann] | None:
    """TensorList ops, as Keras' recurrent layers use them inside while loops."""
    op, ins = ctx.op, ctx.ins
    if op in ("TensorListReserve", "EmptyTensorList"):
        if ins[1].kind != Kind.SAME or ins[0].kind not in (Kind.SAME, Kind.SHAPE) or ins[0].item:
            return None
        return [Ann(Kind.LIST, elem=BOTTOM)]
    if op == "TensorListFromTensor":
        a = ins[0]
        if a.kind == Kind.SAME:
            return [Ann(Kind.LIST, elem=SAME)]
        if not a.is_row or a.axis == 0:  # the batch axis would become the list index
            return None
        return [Ann(Kind.LIST, elem=row(a.in_item_world, a.axis - 1, a.size))]
    lst = ins[0]
    if lst.kind != Kind.LIST:
        return None
    elem = lst.elem or BOTTOM
    if op == "TensorListGetItem":
        return [elem] if ins[1].kind == Kind.SAME else None
    if op in ("TensorListSetItem", "TensorListPushBack"):
        if op == "TensorListSetItem" and ins[1].kind != Kind.SAME:
            return None
        merged = join(elem, ins[-1])
        return None if merged.kind == Kind.FULL else [Ann(Kind.LIST, elem=merged)]
    if op == "TensorListStack":
        if elem.is_row:
            return [row(elem.in_item_world, elem.axis + 1, elem.size)]
        return [elem] if elem.kind in (Kind.SAME, Kind.BOTTOM) else None
    if op == "TensorListLength":
        return [SAME]
    return None


def evaluate(graph: Graph, name: str, ins: list[Ann]) -> list[Ann]:
    """The output annotations of node `name` given its data input annotations."""
    node = graph.nodes[name]
    ctx = Ctx(graph, node, ins)
    count = ctx.num_outputs
    if node.op in PASS_THROUGH:
        return [ins[0]]
    if node.op in ("Merge", "RefMerge"):
        merged = BOTTOM
        for a in ins:
            merged = join(merged, a)
        return [merged, SAME if merged.kind != Kind.FULL else FULL]
    if any(a.kind == Kind.BOTTOM for a in ins):
        return [BOTTOM] * count
    if node.op in ("Placeholder", "_Arg") or any(a.kind == Kind.FULL for a in ins):
        return [FULL] * count
    outs = _settle(_evaluate(ctx), count)
    if any(a.is_row and graph.rank(name, j) is None for j, a in enumerate(outs)):
        return [FULL] * count  # broadcasts and axis rules need the rank
    return outs


def _evaluate(ctx: Ctx) -> list[Ann] | None:
    op, ins = ctx.op, ctx.ins
    if op in ("Switch", "RefSwitch"):
        return [ins[0]] * 2 if ins[1].kind == Kind.SAME else None
    if op == "LoopCond":
        return [SAME] if ins[0].kind == Kind.SAME else None
    if op.startswith("TensorList") or op == "EmptyTensorList":
        return list_op(ctx)
    if any(a.kind == Kind.LIST for a in ins):
        return None
    if op in SHAPE_OPS:
        return shape_of(ctx)
    if op == "Rank":
        rank = ctx.in_rank(0)
        return [same(None if rank is None else Sym((("c", rank),), True))]
    if any(a.is_row for a in ins):
        rule = RULES.get(op)
        return rule(ctx) if rule is not None else None
    pure = not ctx.graph.is_stateful(ctx.node.name) or op in PURE_STATEFUL
    if not pure:
        return None
    if op == "Const":
        return [same(symbolic.from_const(ctx.node))]
    shapes = [a for a in ins if a.kind == Kind.SHAPE]
    if shapes and op in FROM_SHAPE:
        made = FROM_SHAPE[op](ctx)
        if made is not None:
            return made
    sym = symbolic.evaluate(ctx.node, [a.sym for a in ins]) if ctx.num_outputs == 1 else None
    if not shapes:
        return [same(sym)] * ctx.num_outputs
    if sym is not None and not sym.n_dependent:  # e.g. the non-batch dims of a shape
        return [same(sym)]
    return [shape(sym, any(a.item for a in shapes))] * ctx.num_outputs


def _settle(outs: list[Ann] | None, count: int) -> list[Ann]:
    """FULL for ops without an answer; FULL too for an op whose outputs would be split
    between the worlds (a node lives in one world)."""
    if outs is None or len(outs) != count:
        return [FULL] * count
    worlds = {a.in_item_world for a in outs if a.kind != Kind.BOTTOM}
    if len(worlds) > 1:
        return [FULL] * count
    return outs
