"""Rules for ops that compute: elementwise, reductions, products, gathers and lookups.

Each rule takes a `Ctx` (the op, its input annotations and static shapes) and answers the
annotations of the op's outputs, or None when it cannot show that the op works row by row:
the caller then runs the op at N rows (FULL). See `rules` for the contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tensorflow.core.framework import node_def_pb2

from saved_model_tools.ann import SAME, Ann, Kind, row
from saved_model_tools.graphs import Graph, attr, op_names

UNARY = op_names(
    """Identity Snapshot StopGradient PreventGradient CheckNumerics EnsureShape ZerosLike
    OnesLike Cast Neg Abs Sign Floor Ceil Round Rint Exp Expm1 Log Log1p Sqrt Rsqrt Square
    Reciprocal Inv Relu Relu6 Elu Selu LeakyRelu Gelu Sigmoid Tanh Softplus Softsign Erf
    Erfc Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh IsFinite IsNan IsInf
    LogicalNot Invert Bucketize StringToHashBucketFast StringToHashBucketStrong
    StringToHashBucket AsString StringToNumber StringLower StringUpper StaticRegexReplace
    StaticRegexFullMatch StringStrip Real Imag Conj PlaceholderWithDefault"""
)
BROADCASTING = op_names(
    """AddV2 Add Sub Mul RealDiv Div DivNoNan MulNoNan Maximum Minimum Pow SquaredDifference
    Less LessEqual Greater GreaterEqual Equal NotEqual LogicalAnd LogicalOr FloorDiv
    FloorMod TruncateDiv TruncateMod Mod Atan2 Xdivy Xlogy Xlog1py BitwiseAnd BitwiseOr
    BitwiseXor LeftShift RightShift SelectV2 ClipByValue"""
)
REDUCTIONS = op_names("Sum Mean Max Min Prod All Any EuclideanNorm")


@dataclasses.dataclass
class Ctx:
    """One op being classified: its node, input annotations and static shapes."""

    graph: Graph
    node: node_def_pb2.NodeDef
    ins: list[Ann]

    @property
    def op(self) -> str:
        return self.node.op

    def in_rank(self, i: int) -> int | None:
        return self.graph.rank(*self.graph.data_inputs(self.node.name)[i])

    def in_dims(self, i: int) -> list[int | None] | None:
        return self.graph.dims(*self.graph.data_inputs(self.node.name)[i])

    def out_rank(self, j: int = 0) -> int | None:
        return self.graph.rank(self.node.name, j)

    def values(self, i: int) -> list[int] | None:
        a = self.ins[i]
        if a.kind != Kind.SAME or a.sym is None:
            return None
        return a.sym.values()

    def value(self, i: int) -> int | None:
        values = self.values(i)
        return values[0] if values is not None and len(values) == 1 else None

    def attr_i(self, name: str) -> int:
        return attr(self.node, name).i

    def attr_b(self, name: str) -> bool:
        return attr(self.node, name).b

    @property
    def item(self) -> bool:
        """The op's row output lives in the item world if any input does."""
        return any(a.in_item_world for a in self.ins)

    def out(self, axis: int, size: int | None) -> Ann:
        return row(self.item, axis, size)

    @property
    def num_outputs(self) -> int:
        return self.graph.num_outputs(self.node.name)


Rule = Callable[[Ctx], list[Ann] | None]


def norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def only_row(ctx: Ctx, i: int = 0) -> Ann | None:
    """Input i if it is the op's only row input and the others are SAME, else None."""
    a = ctx.ins[i]
    if not a.is_row:
        return None
    if any(b.kind != Kind.SAME for j, b in enumerate(ctx.ins) if j != i):
        return None
    return a


def unary(ctx: Ctx) -> list[Ann] | None:
    a = only_row(ctx)
    return None if a is None else [ctx.out(a.axis, a.size)] * ctx.num_outputs


def broadcasting(ctx: Ctx) -> list[Ann] | None:
    """Elementwise with numpy broadcasting: row inputs must align on one output axis, and
    SAME inputs must not have a dimension other than 1 there."""
    rank = ctx.out_rank()
    if rank is None:
        return None
    axis, size = None, None
    for i, a in enumerate(ctx.ins):
        r = ctx.in_rank(i)
        if r is None or a.kind == Kind.SHAPE:
            return None
        if a.is_row:
            p = a.axis + rank - r
            if axis not in (None, p):
                return None
            axis, size = p, a.size if a.size is not None else size
    for i, a in enumerate(ctx.ins):
        if a.kind == Kind.SAME:
            dims = ctx.in_dims(i)
            pos = axis - (rank - len(dims))
            if 0 <= pos < len(dims) and dims[pos] not in (1, None):
                return None
    return [ctx.out(axis, size)]


def add_n(ctx: Ctx) -> list[Ann] | None:
    axes = {(a.axis, a.kind) for a in ctx.ins if a.is_row}
    if any(not a.is_row for a in ctx.ins) or len({x for x, _ in axes}) != 1:
        return None
    a = ctx.ins[0]
    return [ctx.out(a.axis, a.size)]


def select_v1(ctx: Ctx) -> list[Ann] | None:
    if any(not a.is_row for a in ctx.ins) or len({a.axis for a in ctx.ins}) != 1:
        return None
    if ctx.in_rank(0) != ctx.in_rank(1) and ctx.ins[0].axis != 0:
        return None
    return [ctx.out(ctx.ins[1].axis, ctx.ins[1].size)]


def bias_add(ctx: Ctx) -> list[Ann] | None:
    a = only_row(ctx)
    rank = ctx.in_rank(0)
    if a is None or rank is None:
        return None
    channel = 1 if attr(ctx.node, "data_format").s == b"NCHW" else rank - 1
    return None if a.axis == channel else [ctx.out(a.axis, a.size)]


def reduction(ctx: Ctx) -> list[Ann] | None:
    a = only_row(ctx)
    axes, rank = ctx.values(1), ctx.in_rank(0)
    if a is None or axes is None or rank is None:
        return None
    axes = [norm(x, rank) for x in axes]
    if a.axis in axes:
        return None
    keep = ctx.op not in ("ArgMax", "ArgMin") and ctx.attr_b("keep_dims")
    axis = a.axis if keep else a.axis - sum(x < a.axis for x in axes)
    return [ctx.out(axis, a.size)]


def last_axis_op(ctx: Ctx) -> list[Ann] | None:
    """Softmax, TopK: work along the last axis only."""
    a = only_row(ctx)
    rank = ctx.in_rank(0)
    if a is None or rank is None or a.axis == rank - 1:
        return None
    return [ctx.out(a.axis, a.size)] * ctx.num_outputs


def along_axis(ctx: Ctx) -> list[Ann] | None:
    """Cumsum and friends: (x, axis)."""
    a = only_row(ctx)
    axis, rank = ctx.value(1), ctx.in_rank(0)
    if a is None or axis is None or rank is None or norm(axis, rank) == a.axis:
        return None
    return [ctx.out(a.axis, a.size)]


def matmul(ctx: Ctx) -> list[Ann] | None:
    a, b = ctx.ins
    if a.is_row and b.kind == Kind.SAME:
        return [ctx.out(0, a.size)] if a.axis == int(ctx.attr_b("transpose_a")) else None
    if b.is_row and a.kind == Kind.SAME:
        return [ctx.out(1, b.size)] if b.axis == 1 - int(ctx.attr_b("transpose_b")) else None
    return None


def batch_matmul(ctx: Ctx) -> list[Ann] | None:
    rank = ctx.out_rank()
    ranks = [ctx.in_rank(0), ctx.in_rank(1)]
    if rank is None or None in ranks:
        return None
    adj = [ctx.attr_b("adj_x"), ctx.attr_b("adj_y")]
    matrix_axes = [
        ranks[0] - 1 if adj[0] else ranks[0] - 2,
        ranks[1] - 2 if adj[1] else ranks[1] - 1,
    ]
    axis, size = None, None
    for i, a in enumerate(ctx.ins):
        if a.kind == Kind.SHAPE:
            return None
        if not a.is_row:
            continue
        if a.axis < ranks[i] - 2:
            p = a.axis + rank - ranks[i]
        elif a.axis == matrix_axes[i]:
            p = rank - 2 + i
        else:
            return None
        if axis not in (None, p):
            return None
        axis, size = p, a.size
    if axis < rank - 2:  # a batch axis: SAME operands must broadcast there (V2) or not exist
        for i, a in enumerate(ctx.ins):
            if a.kind == Kind.SAME:
                dims = ctx.in_dims(i)
                pos = axis - (rank - ranks[i])
                if ctx.op == "BatchMatMul" or (0 <= pos < ranks[i] - 2 and dims[pos] != 1):
                    return None
    elif sum(a.is_row for a in ctx.ins) > 1:
        return None
    return [ctx.out(axis, size)]


def einsum_subscripts(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks) or not _ or "." in rhs.replace("...", ""):
        return None
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True)), default=0)
    letters = "".join(spare[:ell])
    out_terms = []
    for term, r in zip(terms, ranks, strict=True):
        n = r - len(term.replace("...", ""))
        out_terms.append(term.replace("...", letters[ell - n :] if n else ""))
    return out_terms, rhs.replace("...", letters)


def einsum(ctx: Ctx) -> list[Ann] | None:
    ranks = [ctx.in_rank(i) for i in range(len(ctx.ins))]
    if None in ranks:
        return None
    parsed = einsum_subscripts(attr(ctx.node, "equation").s.decode(), ranks)
    if parsed is None:
        return None
    terms, out = parsed
    letter, size = None, None
    for a, term in zip(ctx.ins, terms, strict=True):
        if a.kind == Kind.SHAPE:
            return None
        if a.is_row:
            if letter not in (None, term[a.axis]):
                return None
            letter, size = term[a.axis], a.size
    if letter not in out:
        return None
    for i, (a, term) in enumerate(zip(ctx.ins, terms, strict=True)):
        # a weight with the batch letter: only an ellipsis dim of 1 broadcasts
        if (
            a.kind == Kind.SAME
            and letter in term
            and (letter.islower() or ctx.in_dims(i)[term.index(letter)] != 1)
        ):
            return None
    return [ctx.out(out.index(letter), size)]


def gather(ctx: Ctx) -> list[Ann] | None:
    params, indices = ctx.ins[0], ctx.ins[1]
    axis = 0 if ctx.op != "GatherV2" else ctx.value(2)
    batch_dims = ctx.attr_i("batch_dims") if "batch_dims" in ctx.node.attr else 0
    p_rank, i_rank = ctx.in_rank(0), ctx.in_rank(1)
    if axis is None or p_rank is None or i_rank is None or (ctx.op == "ResourceGather" and axis):
        return None
    axis = norm(axis, p_rank)
    if params.kind == Kind.SAME and indices.is_row and batch_dims == 0:
        return [ctx.out(axis + indices.axis, indices.size)]
    if params.is_row and indices.kind == Kind.SAME and batch_dims == 0 and axis != params.axis:
        k = params.axis
        return [ctx.out(k if k < axis else k + i_rank - 1, params.size)]
    if params.is_row and indices.is_row and params.axis == indices.axis == 0 < batch_dims:
        return [ctx.out(0, params.size)]
    return None


def gather_nd(ctx: Ctx) -> list[Ann] | None:
    params, indices = ctx.ins
    rank = ctx.in_rank(1)
    if params.kind != Kind.SAME or not indices.is_row or rank is None or indices.axis >= rank - 1:
        return None
    return [ctx.out(indices.axis, indices.size)]


def lookup(ctx: Ctx) -> list[Ann] | None:
    a = only_row(ctx, 1)
    return None if a is None else [ctx.out(a.axis, a.size)]


def batch_first(ctx: Ctx) -> list[Ann] | None:
    """Convolutions and pooling: the batch axis is axis 0 in every data format."""
    a = only_row(ctx)
    return None if a is None or a.axis != 0 else [ctx.out(0, a.size)]


def fused_batch_norm(ctx: Ctx) -> list[Ann] | None:
    a, rank = only_row(ctx), ctx.in_rank(0)
    if a is None or rank is None or ctx.attr_b("is_training"):  # batch statistics
        return None
    channel = 1 if attr(ctx.node, "data_format").s.startswith(b"NC") else rank - 1
    if a.axis == channel:
        return None
    return [ctx.out(a.axis, a.size)] + [SAME] * (ctx.num_outputs - 1)


def identity_n(ctx: Ctx) -> list[Ann] | None:
    return list(ctx.ins)
